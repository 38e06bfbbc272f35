"""`llmos jobs | files | batches | finetunes` through a subprocess against a live API and a real worker; every
option of every command has help text; `--version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
from click.testing import CliRunner

from app.cli import main
from tests.conftest import ROOT


def test_every_option_has_help_and_there_is_a_version() -> None:
    missing = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help and not {"--help", "--version"} & set(p.opts):
                missing.append(f"{' '.join(path)} {p.opts[0]}")
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(main, ["llmos"])
    assert not missing, missing
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("llmos ")
    for group in ("jobs", "files", "batches", "finetunes", "keys"):
        r = CliRunner().invoke(main, [group, "--help"])
        assert r.exit_code == 0 and "Commands:" in r.output, r.output


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    if ok:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_jobs_files_batches_through_the_cli(live_api, key, pg, redis_url, start_worker, tmp_path):
    start_worker(pg, redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_URL=live_api, LLMOS_API_KEY=key)

    # jobs: submit and wait, get, events oldest first, list, cancel
    done = json.loads(cli(env, "jobs", "submit", "--kind", "echo", "--input", '{"hello": "world"}', "--wait",
                          "--json").stdout)
    assert done["status"] == "succeeded" and done["output"] == {"hello": "world"}
    assert json.loads(cli(env, "jobs", "get", done["id"], "--json").stdout)["id"] == done["id"]
    events = json.loads(cli(env, "jobs", "events", done["id"], "--json").stdout)
    assert [e["type"] for e in events] == ["queued", "running", "succeeded"]
    human = cli(env, "jobs", "events", done["id"]).stdout.splitlines()
    assert [line.split("\t")[1] for line in human] == ["queued", "running", "succeeded"]
    stuck = cli(env, "jobs", "submit", "--kind", "echo", "--gpu", "h100").stdout.strip()
    assert stuck.startswith("job_")
    listed = json.loads(cli(env, "jobs", "list", "--status", "queued", "--json").stdout)
    assert [j["id"] for j in listed] == [stuck]
    assert json.loads(cli(env, "jobs", "cancel", stuck, "--json").stdout)["status"] == "cancelled"
    waited = cli(env, "jobs", "wait", stuck, ok=False)
    assert waited.returncode == 1 and "cancelled" in waited.stdout
    missing = cli(env, "jobs", "get", "job_nope", ok=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    nokey = cli({k: v for k, v in env.items() if k != "LLMOS_API_KEY"}, "jobs", "list", ok=False)
    assert nokey.returncode == 2 and "LLMOS_API_KEY" in nokey.stderr

    # files: upload, list, get, download, delete
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"custom_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(5)))
    fid = cli(env, "files", "upload", str(docs), "--purpose", "batch").stdout.strip()
    assert fid.startswith("file_")
    assert fid in cli(env, "files", "list").stdout
    assert json.loads(cli(env, "files", "get", fid, "--json").stdout)["bytes"] == docs.stat().st_size
    cli(env, "files", "download", fid, "-o", str(tmp_path / "back.jsonl"))
    assert (tmp_path / "back.jsonl").read_bytes() == docs.read_bytes()

    # batches: create from a local file and wait (progress bar on stderr), download
    b = json.loads(cli(env, "batches", "create", str(docs), "--task", "generate", "--model", "tiny-random-llama",
                       "--params", '{"max_new_tokens": 2}', "--wait", "--json").stdout)
    assert b["status"] == "succeeded" and b["request_counts"]["completed"] == 5
    assert b["id"] in cli(env, "batches", "list").stdout
    out = tmp_path / "out.jsonl"
    cli(env, "batches", "download", b["id"], "-o", str(out))
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == [f"d{i}" for i in range(5)]
    cli(env, "files", "delete", fid)
    assert cli(env, "files", "get", fid, ok=False).returncode == 1
