"""Encoder fine-tuning (finetune jobs with method classification / token_classification on the packaged MiniLM)
through a real worker, the new models answering classify and ner jobs and batches; datasets checked line by line;
checkpoints resumed exactly. Sizes are small for CI; the full-size figures come from bench/encoders.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from examples.encoders.make_data import make
from tests.conftest import auth, wait_status
from tests.test_finetune import events, jsonl, upload

BASE = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return make(tmp_path_factory.mktemp("encoders"), n_train=320, n_valid=120, seed=1)


def finetune(client, key, method: str, train: str, valid: str, **params) -> dict:
    r = client.post("/jobs", headers=auth(key), json={
        "kind": "finetune", "model": BASE, "input": {"training_file": train, "validation_file": valid},
        "params": {"method": method, "n_epochs": 2, "learning_rate": 3e-4, "batch_size": 16, "max_seq_len": 64,
                   "log_every_steps": 10, **params}})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def wait_batch(client, key, batch_id: str, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while (b := client.get(f"/batches/{batch_id}", headers=auth(key)).get_json())["status"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, b
        time.sleep(0.2)
    assert b["status"] == "succeeded", b
    lines = client.get(f"/files/{b['output_file_id']}/content", headers=auth(key)).get_data().decode().splitlines()
    return [json.loads(x) for x in lines]


# ---- datasets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, lines, line, reason", [
    ("classification", [{"text": "a", "label": "x"}, {"text": "b"}], 2, "missing field 'label'"),
    ("classification", [{"text": "", "label": "x"}], 1, "'text' must be a non-empty string"),
    ("classification", [{"prompt": "a", "completion": "b"}], 1, "missing field 'text'"),
    ("token_classification", [{"tokens": ["a", "b"], "tags": ["O"]}], 1, "2 tokens but 1 tags"),
    ("token_classification", [{"tokens": ["a"], "tags": ["PER"]}], 1, "tags[0] must be 'O' or a BIO tag"),
    ("token_classification", [{"tokens": [], "tags": []}], 1, "'tokens' must be a non-empty list"),
    ("token_classification", [{"text": "a b"}], 1, "missing field 'tokens'"),
])
def test_encoder_dataset_errors_name_the_line(tmp_path: Path, method, lines, line, reason):
    from app.services import datasets

    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(lines))
    with pytest.raises(datasets.DatasetError) as err:
        datasets.check_file(path, method)
    assert err.value.line == line and reason in err.value.reason, str(err.value)


def test_labels_come_from_the_file(tmp_path: Path):
    from app.services import datasets

    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl([{"tokens": ["ada", "in", "rome"], "tags": ["B-PER", "O", "B-LOC"]}]))
    assert datasets.check_file(path, "token_classification").labels == ("LOC", "PER")
    path.write_bytes(jsonl([{"text": "a", "label": "y"}, {"text": "b", "label": "x"}]))
    assert datasets.check_file(path, "classification").labels == ("x", "y")


def test_words_and_bio_spans():
    from workers.engines.encoder import bio_spans, words

    assert words("Ada met J. Smith in São Paulo.") == [
        ("Ada", 0, 3), ("met", 4, 7), ("J", 8, 9), (".", 9, 10), ("Smith", 11, 16), ("in", 17, 19),
        ("São", 20, 23), ("Paulo", 24, 29), (".", 29, 30)]
    tags = ["B-PER", "O", "B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    assert bio_spans(tags) == [("PER", 0, 1), ("PER", 2, 5), ("LOC", 6, 8)]
    assert bio_spans(["I-ORG", "I-ORG", "B-ORG", "I-LOC"]) == [("ORG", 0, 2), ("ORG", 2, 3), ("LOC", 3, 4)]


def test_checkpoints_resume_exactly(tmp_path: Path, data):
    """A checkpoint (full weights, or LoRA adapters + head) restores the model, optimizer and step: a resumed run
    ends with the same weights as one that never stopped."""
    import torch
    from transformers import AutoTokenizer

    from bench.encoders import minilm
    from workers.engines.encoder_finetune import EncoderTrainer, encode_text
    from workers.engines.finetune import Hooks

    tok = AutoTokenizer.from_pretrained(minilm())
    rows = [json.loads(x) for x in data["topics_train"].read_text().splitlines()][:48]
    labels = sorted({r["label"] for r in rows})
    enc = [encode_text(tok, r, {lab: i for i, lab in enumerate(labels)}, 32) for r in rows]
    for tuning in ("full", "lora"):
        params = {"method": "classification", "tuning": tuning, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "n_epochs": 2, "learning_rate": 1e-3, "batch_size": 16, "seed": 0, "log_every_steps": 100}
        kw = {"base_path": minilm(), "device": "cpu", "params": params, "train": enc, "valid": [], "pad_id": 0,
              "labels": labels}
        straight = EncoderTrainer(**kw)
        straight.run(Hooks(stop=lambda: None, log=lambda m: None, checkpoint=lambda r: None))
        first = EncoderTrainer(**kw)
        path = tmp_path / tuning

        def save(reason: str, t: EncoderTrainer = first, p: Path = path) -> None:
            if t.step == 3:  # the end of epoch 1 (3 steps)
                t.save(p)

        first.run(Hooks(stop=lambda: None, log=lambda m: None, checkpoint=save))
        second = EncoderTrainer(**kw)
        second.resume(path)
        assert second.step == 3
        second.run(Hooks(stop=lambda: None, log=lambda m: None, checkpoint=lambda r: None))
        a, b = straight.model.state_dict(), second.model.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), tuning


# ---- through the platform --------------------------------------------------------------------------------


def test_classifier_finetunes_and_serves(client, key, pg, redis_url, start_worker, data):
    train = upload(client, key, data["topics_train"].read_bytes())
    valid = upload(client, key, data["topics_valid"].read_bytes(), "valid.jsonl")
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4", ready_timeout=180)
    job = finetune(client, key, "classification", train, valid, n_epochs=1, suffix="topics")
    done = wait_status(client, key, job["id"], ("succeeded", "failed", "cancelled"), timeout=400)
    assert done["status"] == "succeeded", (done, w.log()[-3000:])
    out = done["output"]
    assert out["method"] == "classification" and out["labels"] == ["business", "science", "sports", "weather"]
    assert out["metrics"]["accuracy"] >= 0.95 and out["metrics"]["macro_f1"] >= 0.95, out
    evs = events(client, key, job["id"])
    per_epoch = [e["data"] for e in evs if e["type"] == "metrics"]
    assert [m["epoch"] for m in per_epoch] == [1] and per_epoch[0]["accuracy"] == out["metrics"]["accuracy"]
    assert done["usage"]["tokens_per_second"] > 0
    model = client.get(f"/models/{out['model']}", headers=auth(key)).get_json()
    assert model["base_model"] == BASE

    r = client.post("/jobs", headers=auth(key), json={"kind": "classify", "model": out["model"],
                                                       "input": {"text": "the striker scored twice in the final ."}})
    assert r.status_code == 202, r.get_json()
    one = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"))
    assert one["status"] == "succeeded", (one, w.log()[-3000:])
    assert one["output"]["label"] == "sports" and set(one["output"]["scores"]) == set(out["labels"])
    assert abs(sum(one["output"]["scores"].values()) - 1) < 1e-3
    texts = ["profits were higher than forecast this quarter .", "expect heavy rain tonight ."]
    r = client.post("/jobs", headers=auth(key), json={"kind": "classify", "model": out["model"],
                                                       "input": {"texts": texts}, "params": {"top_k": 1}})
    many = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"))
    assert [x["label"] for x in many["output"]["results"]] == ["business", "weather"]
    assert all(len(x["scores"]) == 1 for x in many["output"]["results"])

    # the batch classify task: on a fine-tuned classifier, its labels with probabilities
    r = client.post("/batches", headers=auth(key), json={
        "model": out["model"], "task": {"type": "classify"},
        "documents": [{"custom_id": str(i), "text": t} for i, t in enumerate(texts * 10)]})
    assert r.status_code == 202, r.get_json()
    lines = wait_batch(client, key, r.get_json()["id"])
    assert {x["output"]["label"] for x in lines if x["custom_id"] in ("0", "1")} == {"business", "weather"}
    # narrowed to some of its labels, renormalised
    r = client.post("/batches", headers=auth(key), json={
        "model": out["model"], "task": {"type": "classify", "labels": ["sports", "weather"]},
        "documents": [{"custom_id": "a", "text": texts[1]}]})
    [line] = wait_batch(client, key, r.get_json()["id"])
    assert line["output"]["label"] == "weather" and set(line["output"]["scores"]) == {"sports", "weather"}
    # a zero-shot classify on a causal LM still names its labels; ner needs a token classifier
    r = client.post("/batches", headers=auth(key), json={
        "model": "tiny-random-llama", "task": {"type": "classify"}, "documents": [{"custom_id": "a", "text": "x"}]})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "task.labels"
    r = client.post("/jobs", headers=auth(key), json={"kind": "ner", "model": out["model"], "input": {"text": "x"}})
    assert r.status_code == 422 and "token-classifier" in r.get_json()["error"]["message"]
    r = client.post("/jobs", headers=auth(key), json={"kind": "finetune", "model": "tiny-random-llama",
                                                       "input": {"training_file": train},
                                                       "params": {"method": "classification"}})
    assert r.status_code == 422 and "encoder" in r.get_json()["error"]["message"]


def test_ner_finetunes_and_serves(client, key, pg, redis_url, start_worker, data):
    train = upload(client, key, data["ner_train"].read_bytes())
    valid = upload(client, key, data["ner_valid"].read_bytes(), "valid.jsonl")
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4", ready_timeout=180)
    job = finetune(client, key, "token_classification", train, valid, n_epochs=2)
    done = wait_status(client, key, job["id"], ("succeeded", "failed", "cancelled"), timeout=600)
    assert done["status"] == "succeeded", (done, w.log()[-3000:])
    out = done["output"]
    assert out["labels"] == ["LOC", "ORG", "PER"]
    assert out["metrics"]["f1"] >= 0.9, out["metrics"]
    per_epoch = [e["data"] for e in events(client, key, job["id"]) if e["type"] == "metrics"]
    assert [m["epoch"] for m in per_epoch] == [1, 2]
    assert all({"precision", "recall", "f1", "valid_loss"} <= m.keys() for m in per_epoch)

    text = "Yesterday Maria Garcia met Kenji at the Acme Corp headquarters."
    r = client.post("/jobs", headers=auth(key), json={"kind": "ner", "model": out["model"], "input": {"text": text}})
    assert r.status_code == 202, r.get_json()
    one = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"))
    assert one["status"] == "succeeded", (one, w.log()[-3000:])
    ents = one["output"]["entities"]
    assert [(e["type"], e["text"]) for e in ents] == [("PER", "Maria Garcia"), ("PER", "Kenji"),
                                                      ("ORG", "Acme Corp")], ents
    assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in ents)

    docs = [{"custom_id": str(i), "text": t} for i, t in enumerate(["ravi patel lives in oslo .", "no names here ."])]
    r = client.post("/batches", headers=auth(key), json={"model": out["model"], "task": {"type": "ner"},
                                                          "documents": docs})
    assert r.status_code == 202, r.get_json()
    by_id = {x["custom_id"]: x["output"]["entities"] for x in wait_batch(client, key, r.get_json()["id"])}
    assert [(e["type"], e["text"], e["start"]) for e in by_id["0"]] == [("PER", "ravi patel", 0), ("LOC", "oslo", 20)]
    assert by_id["1"] == []

    # cancel mid-training keeps a checkpoint, as LoRA does
    job = finetune(client, key, "token_classification", train, valid, n_epochs=50, checkpoint_every_steps=2)
    deadline = time.monotonic() + 300
    while not client.get(f"/jobs/{job['id']}/checkpoints", headers=auth(key)).get_json()["data"]:
        assert time.monotonic() < deadline, w.log()[-3000:]
        time.sleep(0.2)
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth(key)).status_code == 200
    cancelled = wait_status(client, key, job["id"], ("succeeded", "failed", "cancelled"), timeout=120)
    assert cancelled["status"] == "cancelled"
    ckpt = client.get(f"/jobs/{job['id']}/checkpoints", headers=auth(key)).get_json()["data"][0]
    assert 0 < ckpt["step"] < 50 * 20 and ckpt["reason"] in ("cancelled", "interval", "epoch")
