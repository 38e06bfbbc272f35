"""Plugins: the example package examples/llmos-rerank (installed by the test command) adds a `rerank` kind used
through the API and a real worker, and a hook the worker calls; a broken plugin is logged and skipped by the API,
`llmos plugins list` and the worker, which go on serving."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import auth, wait_status

BROKEN_ENTRY_POINTS = """\
[llmos.kinds]
missing = no_such_module_for_llmos:KIND
notakind = json:dumps

[llmos.loaders]
noloader = json:loads

[llmos.hooks]
badhook = no_such_module_for_llmos_hooks:hook
"""


@pytest.fixture
def broken_plugin(tmp_path: Path):
    """An installed distribution whose entry points are all wrong (a dist-info directory on sys.path)."""
    from app.jobs import kinds

    site = tmp_path / "site"
    info = site / "broken_llmos_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-llmos-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(BROKEN_ENTRY_POINTS)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    kinds.reload()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
        kinds.reload()


def test_rerank_plugin_through_the_api_and_a_broken_plugin_skipped(client, key, pg, redis_url, start_worker,
                                                                     broken_plugin, caplog, tmp_path):
    from app.cli import main
    from app.jobs import kinds

    pytest.importorskip("llmos_rerank", reason="pip install -e examples/llmos-rerank (the test command does)")
    caplog.set_level(logging.ERROR, logger="llmos.plugins")
    kinds.reload()
    errors = [r.getMessage() for r in caplog.records if r.name == "llmos.plugins"]
    assert any("missing" in m and "ModuleNotFoundError" in m for m in errors), errors
    assert any("notakind" in m and "not an app.jobs.kinds.JobKind" in m for m in errors), errors

    # the API lists the plugin's kind with its schemas beside the built-in ones; the broken ones are absent
    r = client.get("/kinds", headers=auth(key))
    assert r.status_code == 200
    by_name = {k["id"]: k for k in r.get_json()["data"]}
    assert {"generate", "finetune", "classify", "ner", "rerank"} <= set(by_name)
    assert "missing" not in by_name and "notakind" not in by_name
    assert by_name["rerank"]["model_kind"] == "embedding"
    assert "documents" in by_name["rerank"]["schemas"]["input"]["properties"]

    out = CliRunner().invoke(main, ["plugins", "list", "--json"])
    assert out.exit_code == 0, out.output
    rows = {(p["group"], p["name"]): p for p in json.loads(out.output[out.output.index("["):])}
    assert rows[("llmos.kinds", "rerank")]["status"] == "ok"
    assert rows[("llmos.kinds", "rerank")]["package"].startswith("llmos-rerank")
    for broken in (("llmos.kinds", "missing"), ("llmos.kinds", "notakind"), ("llmos.loaders", "noloader"),
                   ("llmos.hooks", "badhook")):
        assert rows[broken]["status"] == "broken" and rows[broken]["error"], rows[broken]

    # the API checks the plugin's input schema like any kind's
    r = client.post("/jobs", headers=auth(key), json={"kind": "rerank", "model": "all-minilm-l6-v2",
                                                       "input": {"query": "cats", "documents": []}})
    assert r.status_code == 422 and r.get_json()["error"]["field"].startswith("input.documents")

    # a worker with the same broken plugin installed starts, says why it skipped it, and runs the plugin's jobs
    hook_file = tmp_path / "hook.jsonl"
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2", ready_timeout=180,
                     PYTHONPATH=str(broken_plugin), LLMOS_RERANK_HOOK_FILE=str(hook_file))
    docs = ["Stock markets fell sharply on Monday.", "The cat slept on the mat all afternoon.",
            "A recipe for tomato soup."]
    r = client.post("/jobs", headers=auth(key), json={"kind": "rerank", "model": "all-minilm-l6-v2",
                                                       "input": {"query": "Where did the cat sleep?",
                                                                 "documents": docs},
                                                       "params": {"top_n": 2}})
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["queue"].startswith("rerank.")  # its own queue family, from the declaration
    done = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded", (done, w.log()[-3000:])
    results = done["output"]["results"]
    assert [x["index"] for x in results][0] == 1 and len(results) == 2
    assert results[0]["document"] == docs[1] and results[0]["score"] > results[1]["score"]
    log = w.log()
    assert "plugin llmos.loaders (noloader" in log and "plugin llmos.hooks (badhook" in log
    lines = [json.loads(x) for x in hook_file.read_text().splitlines()]  # the plugin's hook heard the job end
    assert {"job_id": done["id"], "kind": "rerank", "status": "succeeded", "error_code": None} in lines
