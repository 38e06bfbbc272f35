"""The `llmos` command as an operator runs it: a real process, its exit status, stdout and stderr, and what
it leaves in the database the API reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.models import ApiKey, ModelEntry, Owner
from tests.conftest import ROOT, auth

JOB = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "hi"}}


def llmos(database_url: str, *args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_DATABASE_URL=database_url, LLMOS_DATA_DIR=str(data_dir), LLMOS_ENV="test")
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def db(app):  # noqa: ANN001, ANN201
    return app.extensions["llmos"].db


# ---- keys ---------------------------------------------------------------------------------------------


def test_keys_create_prints_only_the_key_and_it_authenticates(app, client, key, pg, tmp_path):
    res = llmos(pg, "keys", "create", "--owner", "bob", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("\n") and res.stdout.count("\n") == 1, repr(res.stdout)
    bob = res.stdout.strip()
    assert bob.startswith("llmos_") and len(bob) > 30 and " " not in bob
    assert bob not in res.stderr

    r = client.get("/jobs", headers=auth(bob))
    assert r.status_code == 200 and r.get_json() == {"data": [], "next_cursor": None}
    job = client.post("/jobs", json=JOB, headers=auth(bob))
    assert job.status_code == 202
    # the key belongs to bob: alice (the `key` fixture) does not see bob's job
    assert client.get(f"/jobs/{job.get_json()['id']}", headers=auth(key)).status_code == 404
    with db(app).session() as s:
        owner = s.scalar(select(Owner).where(Owner.name == "bob"))
        assert owner is not None
        # only a hash is stored, never the key itself
        hashes = list(s.scalars(select(ApiKey.key_hash).where(ApiKey.owner_id == owner.id)))
        assert len(hashes) == 1 and bob not in hashes[0]


def test_keys_create_twice_gives_two_keys_for_one_owner(app, client, pg, tmp_path):
    first = llmos(pg, "keys", "create", "--owner", "carol", data_dir=tmp_path).stdout.strip()
    second = llmos(pg, "keys", "create", "--owner", "carol", data_dir=tmp_path).stdout.strip()
    assert first and second and first != second
    job = client.post("/jobs", json=JOB, headers=auth(first)).get_json()
    assert client.get(f"/jobs/{job['id']}", headers=auth(second)).status_code == 200
    with db(app).session() as s:
        assert s.scalar(select(func.count()).select_from(Owner).where(Owner.name == "carol")) == 1


def test_keys_create_needs_an_owner(pg, tmp_path):
    res = llmos(pg, "keys", "create", data_dir=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    assert "--owner" in res.stderr


def test_an_unreachable_database_fails_without_printing_a_key(tmp_path):
    res = llmos("postgresql://postgres@127.0.0.1:1/nowhere", "keys", "create", "--owner", "bob",
                data_dir=tmp_path)
    assert res.returncode != 0
    assert res.stdout == ""


# ---- models -------------------------------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    return d


def entry(app, name: str) -> ModelEntry | None:  # noqa: ANN001
    with db(app).session() as s:
        return s.get(ModelEntry, name)


def test_models_add_registers_a_hf_directory(app, client, key, pg, hf_dir, tmp_path):
    res = llmos(pg, "models", "add", "my-llama", str(hf_dir), data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "registered my-llama" in res.stdout and "hf_dir" in res.stdout
    row = entry(app, "my-llama")
    assert row is not None
    assert (row.source_type, row.source, row.kind) == ("hf_dir", str(hf_dir.resolve()), "causal-lm")

    models = {m["id"]: m for m in client.get("/models", headers=auth(key)).get_json()["data"]}
    assert models["my-llama"]["source_type"] == "hf_dir"
    r = client.post("/jobs", json={**JOB, "model": "my-llama"}, headers=auth(key))
    assert r.status_code == 202 and r.get_json()["model"] == "my-llama"


def test_models_add_registers_a_gguf_file_with_options(app, client, key, pg, tmp_path):
    gguf = tmp_path / "weights" / "tiny.Q4_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    res = llmos(pg, "models", "add", "tiny-gguf", str(gguf), "--default-gpu", "l4", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    row = entry(app, "tiny-gguf")
    assert row is not None
    assert (row.source_type, row.source, row.default_gpu) == ("gguf", str(gguf.resolve()), "l4")
    # the model's default GPU decides where its jobs queue
    job = client.post("/jobs", json={**JOB, "model": "tiny-gguf"}, headers=auth(key)).get_json()
    assert job["gpu"] == ["l4"] and job["queue"] == "generate.l4"


@pytest.mark.parametrize(("name", "message"), [
    ("missing", "does not exist"),
    ("empty-dir", "has no config.json"),
    ("weights.bin", "neither a model directory nor a .gguf file"),
])
def test_models_add_a_bad_path_fails_clearly(app, pg, tmp_path, name, message):
    path = tmp_path / name
    if name == "empty-dir":
        path.mkdir()
    elif name == "weights.bin":
        path.write_bytes(b"not a model")
    res = llmos(pg, "models", "add", "broken", str(path), data_dir=tmp_path)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert entry(app, "broken") is None


def test_models_add_refuses_a_taken_name_unless_replace(app, pg, hf_dir, tmp_path):
    res = llmos(pg, "models", "add", "tiny-random-llama", str(hf_dir), data_dir=tmp_path)
    assert res.returncode == 1
    assert "already registered" in res.stderr and "Traceback" not in res.stderr
    assert entry(app, "tiny-random-llama").source_type == "random"

    res = llmos(pg, "models", "add", "tiny-random-llama", str(hf_dir), "--replace", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert entry(app, "tiny-random-llama").source_type == "hf_dir"


# ---- database -----------------------------------------------------------------------------------------


def test_db_upgrade_on_a_fresh_sqlite_file_creates_and_seeds(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    res = llmos(url, "db", "upgrade", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "smollm2-135m-instruct" in res.stderr and "tiny-random-llama" in res.stderr
    again = llmos(url, "db", "upgrade", data_dir=tmp_path)
    assert again.returncode == 0 and "models added: none" in again.stderr
    listed = llmos(url, "models", "list", data_dir=tmp_path)
    assert listed.returncode == 0
    assert {line.split("\t")[0] for line in listed.stdout.splitlines()} == {
        "smollm2-135m-instruct", "tiny-random-llama", "all-minilm-l6-v2"}
