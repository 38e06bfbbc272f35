"""Fine-tuning: datasets checked line by line, assistant-only loss, LoRA training through real worker processes
(PostgreSQL + Redis), the new model served by generate jobs beside its base, cancel and resume after a kill."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import MODEL_DIR, auth, make_key, wait_status

# A tiny random llama whose weights are large enough for peaked output distributions, so a few dozen LoRA steps
# memorise a handful of answers (the seed tiny-random-llama's 0.02 init keeps every logit near zero).
LEARNER = "tiny-learner"
LEARNER_CONFIG = {"architecture": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
                  "initializer_range": 0.2, "tokenizer": "bytes", "seed": 0}

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]
CHATS = [("Capital of Japan?", "Tokyo"), ("Capital of Chile?", "Santiago")]


def prompt_of(country: str) -> str:
    return f"Q: capital of {country}?\nA:"


def training_lines() -> list[dict]:
    rows: list[dict] = [{"prompt": prompt_of(c), "completion": f" {a}"} for c, a in CAPITALS]
    rows += [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS]
    return rows


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def upload(client, key, data: bytes, name: str = "train.jsonl") -> str:
    r = client.post("/files", data={"purpose": "fine-tune", "file": (io.BytesIO(data), name)},
                    headers=auth(key), content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def finetune(client, key, training_file: str, model: str = LEARNER, **params) -> tuple[int, dict]:
    body = {"kind": "finetune", "model": model, "input": {"training_file": training_file},
            "params": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "learning_rate": 1e-2, "batch_size": 2,
                       "n_epochs": 30, "log_every_steps": 10, **params}}
    if "validation_file" in params:
        body["input"]["validation_file"] = body["params"].pop("validation_file")
    if "gpu" in params:
        body["gpu"] = body["params"].pop("gpu")
    r = client.post("/jobs", json=body, headers=auth(key))
    return r.status_code, r.get_json()


def add_learner(db_url: str) -> None:
    from app.db import Database
    from app.models import ModelEntry

    db = Database(db_url)
    with db.session() as s:
        s.add(ModelEntry(name=LEARNER, kind="causal-lm", source_type="random", source="llama", config=LEARNER_CONFIG))
    db.dispose()


def events(client, key, job_id: str) -> list[dict]:
    out, cursor = [], None
    while True:
        r = client.get(f"/jobs/{job_id}/events?limit=100" + (f"&cursor={cursor}" if cursor else ""),
                       headers=auth(key)).get_json()
        out += r["data"]
        cursor = r["next_cursor"]
        if not cursor:
            return sorted(out, key=lambda e: int(e["id"].removeprefix("evt_")))


def generate(client, key, model: str, **inp) -> str:
    r = client.post("/jobs", json={"kind": "generate", "model": model, "input": inp,
                                   "params": {"max_new_tokens": 12, "temperature": 0}}, headers=auth(key))
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


# ---- datasets: every bad line named -------------------------------------------------------------------


@pytest.mark.parametrize("lines, line, reason", [
    ([{"prompt": "a", "completion": "b"}] * 6 + ['{"prompt": "a", "completion": '], 7, "invalid JSON"),
    ([{"prompt": "a", "completion": "b"}] * 2 + [{"prompt": "a"}], 3, "missing field 'completion'"),
    ([{"completion": "b"}], 1, "missing field 'prompt'"),
    ([{"text": "b"}], 1, "missing field 'messages'"),
    (["[1, 2]"], 1, "JSON object"),
    ([{"prompt": "a", "completion": ""}], 1, "must not be empty"),
    ([{"prompt": 3, "completion": "b"}], 1, "'prompt' must be a string"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], 1, "no assistant message"),
    ([{"messages": [{"role": "bot", "content": "hi"}]}], 1, "messages[0].role"),
    ([{"messages": [{"role": "user"}]}], 1, "missing field 'messages[0].content'"),
    ([{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]}], 1,
     "messages[0].weight is only for assistant"),
    ([{"messages": [{"role": "assistant", "content": "b", "weight": 0}]}], 1, "no assistant message"),
    ([{"messages": []}], 1, "non-empty list"),
    ([], None, "no examples"),
])
def test_dataset_errors_name_the_line(tmp_path: Path, lines, line, reason):
    from app.services import datasets

    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(lines))
    with pytest.raises(datasets.DatasetError) as err:
        datasets.check_file(path)
    assert err.value.line == line and reason in err.value.reason, str(err.value)


def test_dataset_skips_blank_lines_and_counts_formats(tmp_path: Path):
    from app.services import datasets

    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl(training_lines()) + b"\n   \n")
    assert datasets.check_file(path) == datasets.Summary(examples=6, chat=2, prompt_completion=4)
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n\xff\xfe\n')
    with pytest.raises(datasets.DatasetError, match="line 2: not UTF-8"):
        datasets.check_file(path)


# ---- what the loss sees -------------------------------------------------------------------------------


def _trained_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, (tok, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab == -100:
            continue
        assert lab == tok  # a trained position predicts its own token (the model shifts)
        if spans and labels[i - 1] != -100:
            spans[-1].append(tok)
        else:
            spans.append([tok])
    return spans


def test_chat_loss_only_on_assistant_tokens():
    from workers.engines.finetune import encode
    from workers.loaders import byte_tokenizer

    tok = byte_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Ciao", "weight": 0}, {"role": "user", "content": "?"},
                {"role": "assistant", "content": "Ok."}]
    e = encode(tok, {"messages": messages}, 4096)
    # the ids are exactly the template's rendering of the whole conversation
    assert tok.decode(e.input_ids) == tok.apply_chat_template(messages, tokenize=False)
    spans = _trained_spans(e.input_ids, e.labels)
    assert [tok.decode(s) for s in spans] == ["Hello!<|im_end|>\n", "Ok.<|im_end|>\n"]
    # every masked position is system, user, a generation prompt or the weight-0 reply
    masked = tok.decode([t for t, lab in zip(e.input_ids, e.labels, strict=True) if lab == -100])
    assert masked == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                      "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nCiao<|im_end|>\n"
                      "<|im_start|>user\n?<|im_end|>\n<|im_start|>assistant\n")
    assert e.trained_tokens == sum(len(s) for s in spans) and not e.truncated
    # the prompt a generate job sends for this conversation ends where the first reply's loss begins
    head = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    first = next(i for i, lab in enumerate(e.labels) if lab != -100)
    assert tok.decode(e.input_ids[:first]) == head


def test_prompt_completion_loss_on_completion_and_end():
    from workers.engines.finetune import encode
    from workers.loaders import byte_tokenizer

    tok = byte_tokenizer()
    e = encode(tok, {"prompt": "Q: x?\nA:", "completion": " yes"}, 4096)
    assert e.input_ids[: len(tok("Q: x?\nA:")["input_ids"])] == tok("Q: x?\nA:")["input_ids"]
    assert [tok.decode(s) for s in _trained_spans(e.input_ids, e.labels)] == [" yes<|im_end|>"]
    cut = encode(tok, {"prompt": "Q: x?\nA:", "completion": " yes"}, 10)
    assert cut.truncated and len(cut.input_ids) == 10 and cut.trained_tokens == 2


def test_adapters_and_base_share_one_batch(tmp_path: Path):
    """Rows for the base and for two adapters decode in one batch, each as it would alone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers import loaders
    from workers.engines.generation import GenerationEngine, GenRequest

    path = loaders.materialise(name=LEARNER, source_type="random", source="llama", config=LEARNER_CONFIG,
                               model_dir=MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    for name, r in (("a", 4), ("b", 8)):
        torch.manual_seed(len(name) + r)
        m = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=r, lora_alpha=4 * r, target_modules="all-linear", init_lora_weights=False))
        m.save_pretrained(tmp_path / name)
    engine = GenerationEngine(AutoModelForCausalLM.from_pretrained(path).eval(), tok, device="cpu", max_batch=16)
    engine.add_adapter("a", str(tmp_path / "a"))
    engine.add_adapter("b", str(tmp_path / "b"))
    prompts = [tok(f"prompt number {i}: ")["input_ids"] for i in range(4)]

    def req(ids: list[int], adapter: str | None) -> GenRequest:
        return GenRequest(prompt_ids=ids, max_new_tokens=10, min_new_tokens=10, temperature=0.0, adapter=adapter)

    alone = {(i, a): engine.generate(req(p, a)).text for i, p in enumerate(prompts) for a in (None, "a", "b")}
    futures = {(i, a): engine.submit(req(p, a)) for i, p in enumerate(prompts) for a in (None, "a", "b")}
    together = {k: f.result() for k, f in futures.items()}
    engine.stop()
    assert {k: r.text for k, r in together.items()} == alone
    assert max(r.batch_size for r in together.values()) > 3  # they did share batches
    assert len({alone[(0, a)] for a in (None, "a", "b")}) == 3  # and the adapters do change the output


# ---- through the platform -----------------------------------------------------------------------------


def test_finetune_learns_and_the_new_model_serves(client, key, app, pg, redis_url, start_worker):
    add_learner(pg)
    train = upload(client, key, jsonl(training_lines()))
    valid = upload(client, key, jsonl(training_lines()[:2]), "valid.jsonl")
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "8")
    base_before = {c: generate(client, key, LEARNER, prompt=prompt_of(c)) for c, _ in CAPITALS}
    status, job = finetune(client, key, train, validation_file=valid, suffix="capitals", gpu="cpu")
    assert status == 202, job
    assert job["queue"] == "finetune.cpu" and job["timeout_s"] == app.extensions["llmos"].settings.max_timeout_s
    done = wait_status(client, key, job["id"], ("succeeded", "failed", "cancelled"), timeout=240)
    assert done["status"] == "succeeded", (done, w.log()[-4000:])
    name = f"{LEARNER}:ft-capitals-{job['id'][4:12]}"
    out = done["output"]
    assert out["model"] == name and out["base_model"] == LEARNER and out["steps"] == 90  # 3 steps x 30 epochs
    assert done["usage"]["trained_tokens"] > 0 and done["usage"]["tokens_per_second"] > 0

    evs = events(client, key, job["id"])
    progress = [e["data"] for e in evs if e["type"] == "progress" and "train_loss" in e["data"]]
    assert [p["step"] for p in progress][:3] == [3, 6, 9]  # every epoch end (3 steps) and every 10th step
    assert progress[-1]["step"] == 90 and progress[-1]["total"] == 90
    assert all({"valid_loss", "tokens_per_second", "total_steps", "epoch"} <= p.keys() for p in progress)
    assert progress[-1]["train_loss"] < progress[0]["train_loss"] / 10  # the loss came down
    assert progress[-1]["valid_loss"] < progress[0]["valid_loss"]
    data = next(e["data"] for e in evs if e["type"] == "dataset" and e["data"]["file"] == train)
    assert data["examples"] == 6 and data["skipped"] == 0

    ckpts = client.get(f"/jobs/{job['id']}/checkpoints", headers=auth(key)).get_json()["data"]
    assert [c["step"] for c in ckpts] == [90, 87, 84]  # one per epoch, the newest three kept
    assert ckpts[0]["object"] == "fine_tuning.checkpoint" and ckpts[0]["reason"] == "epoch"
    assert set(out["checkpoints"]) == {c["id"] for c in ckpts} and "train_loss" in ckpts[0]["metrics"]
    on_disk = sorted(p.name for p in (Path(app.extensions["llmos"].settings.finetune_dir) / job["id"]
                                      / "checkpoints").iterdir())
    assert on_disk == ["step-000084-attempt-1", "step-000087-attempt-1", "step-000090-attempt-1"]

    models = client.get("/models", headers=auth(key)).get_json()["data"]
    mine = next(m for m in models if m["id"] == name)
    assert mine["base_model"] == LEARNER and mine["owned_by"] == "you" and mine["job_id"] == job["id"]

    # the new model answers what it learned; its base never did; both batch on the worker's one base model
    tuned = {c: generate(client, key, name, prompt=prompt_of(c)) for c, _ in CAPITALS}
    chats = {q: generate(client, key, name, messages=[{"role": "user", "content": q}]) for q, _ in CHATS}
    base_after = {c: generate(client, key, LEARNER, prompt=prompt_of(c)) for c, _ in CAPITALS}
    text = {}
    for j in [*tuned.values(), *chats.values(), *base_before.values(), *base_after.values()]:
        body = wait_status(client, key, j, ("succeeded", "failed"))
        assert body["status"] == "succeeded", (body, w.log()[-4000:])
        text[j] = body["output"]["text"]
    for country, answer in CAPITALS:
        assert text[tuned[country]] == f" {answer}", (country, text[tuned[country]])
        assert text[base_before[country]] != f" {answer}"
        assert text[base_after[country]] == text[base_before[country]]  # the base is untouched by its adapter
    for question, answer in CHATS:
        assert text[chats[question]] == answer
    # a batch on the fine-tuned model (its chunk runs on the same base engine, rows naming the adapter)
    r = client.post("/batches", headers=auth(key), json={
        "model": name, "documents": [{"custom_id": c, "text": prompt_of(c)} for c, _ in CAPITALS],
        "task": {"type": "generate", "template": "{text}"}, "params": {"max_new_tokens": 12, "temperature": 0}})
    assert r.status_code == 202, r.get_json()
    deadline = time.monotonic() + 60
    while (b := client.get(f"/batches/{r.get_json()['id']}", headers=auth(key)).get_json())["status"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert b["status"] == "succeeded", b
    out = client.get(f"/files/{b['output_file_id']}/content", headers=auth(key)).get_data().decode().splitlines()
    assert {x["custom_id"]: x["output"]["text"] for x in map(json.loads, out)} == {c: f" {a}" for c, a in CAPITALS}

    other = make_key(app, "mallory")
    assert name not in [m["id"] for m in client.get("/models", headers=auth(other)).get_json()["data"]]
    r = client.post("/jobs", json={"kind": "generate", "model": name, "input": {"prompt": "x"}}, headers=auth(other))
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "model_not_found"
    r = client.get(f"/jobs/{job['id']}/checkpoints", headers=auth(other))
    assert r.status_code == 404
    r = finetune(client, key, train, model=name)
    assert r[0] == 422 and "fine-tune its base" in r[1]["error"]["message"]
    assert client.get(f"/models/{name}", headers=auth(key)).get_json()["base_model"] == LEARNER
    from app.models import Worker

    deadline = time.monotonic() + 10
    while True:  # the heartbeat lists the base once and its adapter beside it
        with app.extensions["llmos"].db.session() as s:
            loaded = s.scalar(select(Worker.models_loaded).where(Worker.pid == w.proc.pid))
        if name in loaded or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert loaded == [LEARNER, name]

    # deleting: only its owner, only fine-tuned models; the adapter goes with it
    assert client.delete(f"/models/{name}", headers=auth(other)).status_code == 404
    r = client.delete(f"/models/{LEARNER}", headers=auth(key))
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    adapter_dir = Path(app.extensions["llmos"].settings.finetune_dir) / job["id"] / "adapter"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    r = client.delete(f"/models/{name}", headers=auth(key))
    assert r.status_code == 200 and r.get_json() == {"id": name, "object": "model", "deleted": True}
    assert not adapter_dir.exists() and client.get(f"/models/{name}", headers=auth(key)).status_code == 404
    r = client.post("/jobs", json={"kind": "generate", "model": name, "input": {"prompt": "x"}}, headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "model_not_found"


def test_bad_training_files_are_422_at_submit_or_fail_the_job(client, key, app, make_app, pg, redis_url,
                                                                start_worker):
    add_learner(pg)
    good = [{"prompt": "a", "completion": "b"}] * 6
    bad_json = upload(client, key, jsonl(good + ['{"prompt": "a", "completion": ']))
    status, body = finetune(client, key, bad_json)
    assert status == 422 and body["error"]["field"] == "input.training_file"
    assert "line 7: invalid JSON" in body["error"]["message"] and body["error"]["code"] == "invalid_file"
    missing = upload(client, key, jsonl(good[:2] + [{"prompt": "a"}]))
    status, body = finetune(client, key, missing)
    assert status == 422 and "line 3: missing field 'completion'" in body["error"]["message"]
    status, body = finetune(client, key, upload(client, key, jsonl(good)), validation_file=bad_json)
    assert status == 422 and body["error"]["field"] == "input.validation_file"

    batch_file = client.post("/files", data={"purpose": "batch", "file": (io.BytesIO(jsonl(good)), "b.jsonl")},
                             headers=auth(key), content_type="multipart/form-data").get_json()["id"]
    for file_id, field, words in ((batch_file, "input.training_file", "purpose 'fine-tune'"),
                                  ("file_nope", "input.training_file", "no file")):
        status, body = finetune(client, key, file_id)
        assert status == 422 and body["error"]["field"] == field and words in body["error"]["message"]
    for params, field in (({"method": "full"}, "params.method"), ({"lora": {"r": 0}}, "params.lora.r"),
                          ({"suffix": "no spaces"}, "params.suffix"), ({"n_epochs": 0}, "params.n_epochs")):
        status, body = finetune(client, key, bad_json, **params)
        assert status == 422 and body["error"]["field"] == field, body
    assert client.get("/jobs", headers=auth(key)).get_json()["data"] == []  # nothing was accepted

    # a file too large to read during the request is checked by the worker: the job fails naming the line
    lenient = make_app(database_url=pg, broker_url=redis_url, finetune_check_max_bytes=0).test_client()
    r = lenient.post("/jobs", headers=auth(key), json={"kind": "finetune", "model": LEARNER,
                                                       "input": {"training_file": bad_json}})
    assert r.status_code == 202, r.get_json()
    bad_lora = lenient.post("/jobs", headers=auth(key), json={
        "kind": "finetune", "model": LEARNER, "input": {"training_file": upload(client, key, jsonl(good))},
        "params": {"lora": {"target_modules": ["no_such_proj"]}}}).get_json()
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    failed = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"), timeout=120)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_input"
    assert "line 7: invalid JSON" in failed["error"]["message"]
    failed = wait_status(client, key, bad_lora["id"], ("succeeded", "failed"), timeout=120)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_input"
    assert "no_such_proj" in failed["error"]["message"]


EPOCHS = 30


def test_killed_worker_resumes_from_checkpoint_and_cancel_keeps_one(make_app, pg, own_redis, start_worker):
    fast = {"LLMOS_WORKER_LOST_AFTER_S": "3", "LLMOS_RECONCILE_INTERVAL_S": "0.5"}
    app = make_app(database_url=pg, broker_url=own_redis.url)
    client, key = app.test_client(), make_key(app, "alice")
    add_learner(pg)
    rows = [{"prompt": f"Item {i}: what comes next?", "completion": f" item {i + 1}"} for i in range(32)]
    train = upload(client, key, jsonl(rows))
    # 32 steps an epoch (batch 1), a checkpoint every epoch: long enough on a CPU to kill and cancel mid-run
    status, job = finetune(client, key, train, batch_size=1, n_epochs=EPOCHS, log_every_steps=16,
                           learning_rate=1e-3)
    assert status == 202, job
    a = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **fast)

    def checkpoints(job_id: str) -> list[dict]:
        return client.get(f"/jobs/{job_id}/checkpoints", headers=auth(key)).get_json()["data"]

    deadline = time.monotonic() + 120
    while not checkpoints(job["id"]):
        assert time.monotonic() < deadline, a.log()[-3000:]
        time.sleep(0.05)
    a.stop(signal.SIGKILL)
    kept = checkpoints(job["id"])[0]["step"]
    assert kept % 32 == 0 and kept < EPOCHS * 32
    b = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **fast)
    done = wait_status(client, key, job["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["status"] == "succeeded" and done["attempts"] == 2, (done, b.log()[-3000:])
    evs = events(client, key, job["id"])
    types = [e["type"] for e in evs]
    assert "worker_lost" in types and "resumed" in types
    resumed_at = types.index("resumed")
    last_ckpt_before = max(e["data"]["step"] for e in evs[:resumed_at] if e["type"] == "checkpoint")
    assert evs[resumed_at]["data"]["step"] == last_ckpt_before >= kept  # the newest checkpoint, not step 0
    after = [e["data"]["step"] for e in evs[resumed_at:] if e["type"] == "progress" and "step" in e["data"]]
    assert after[0] == last_ckpt_before + 16 and after[-1] == EPOCHS * 32  # the step counter went on
    assert done["output"]["steps"] == EPOCHS * 32
    # every example was trained on once an epoch: the steps redone after the kill are not counted twice
    tokens = next(e["data"]["tokens"] for e in evs if e["type"] == "dataset")
    assert done["usage"]["trained_tokens"] == EPOCHS * tokens

    # cancel mid-training: cancelled, and the checkpoint where it stopped is kept
    status, second = finetune(client, key, train, batch_size=1, n_epochs=50, log_every_steps=16,
                              learning_rate=1e-3)
    deadline = time.monotonic() + 120
    while not checkpoints(second["id"]):
        assert time.monotonic() < deadline, b.log()[-3000:]
        time.sleep(0.05)
    assert client.post(f"/jobs/{second['id']}/cancel", headers=auth(key)).status_code == 200
    cancelled = wait_status(client, key, second["id"], ("succeeded", "failed", "cancelled"), timeout=60)
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    ckpts = checkpoints(second["id"])
    assert ckpts and ckpts[0]["reason"] in ("cancelled", "epoch") and ckpts[0]["step"] < 50 * 32
    on_disk = Path(app.extensions["llmos"].settings.finetune_dir, second["id"], "checkpoints")
    newest = on_disk / f"step-{ckpts[0]['step']:06d}-attempt-1"
    assert (newest / "adapter_model.safetensors").is_file() and (newest / "trainer_state.pt").is_file()
