"""generate: one request handed to the model's batching engine, progress reported from the task thread."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.engines.generation import GenRequest
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome, wait_reporting

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    loaded = rt.cache.get(ctx.model)
    tok = loaded.tokenizer
    if "messages" in ctx.input:
        if not tok.chat_template:
            raise JobFailure("invalid_input", f"model {ctx.model.name!r} has no chat template; send input.prompt")
        text = tok.apply_chat_template(ctx.input["messages"], add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tok(ctx.input["prompt"])["input_ids"]
    if not prompt_ids:
        raise JobFailure("invalid_input", "the prompt is empty after tokenisation")
    p = ctx.params
    if loaded.max_positions and len(prompt_ids) + p["max_new_tokens"] > loaded.max_positions:
        raise JobFailure("invalid_input", f"prompt ({len(prompt_ids)} tokens) + max_new_tokens "
                         f"({p['max_new_tokens']}) exceeds the model's context of {loaded.max_positions}")
    req = GenRequest(
        prompt_ids=prompt_ids, max_new_tokens=p["max_new_tokens"], min_new_tokens=p.get("min_new_tokens", 0),
        temperature=p["temperature"],
        top_p=p["top_p"], top_k=p["top_k"], stop=p["stop"], seed=p.get("seed"),
        deadline=ctx.deadline, cancel=ctx.cancel, adapter=loaded.adapter,
    )
    res = wait_reporting(loaded.engine.submit(req), ctx, req.max_new_tokens, lambda: req.produced,
                         rt.platform.settings.progress_interval_s)
    seconds = time.monotonic() - ctx.started
    usage = {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
        "seconds": round(seconds, 4),
        "generation_seconds": round(res.seconds, 4),
        "tokens_per_second": round(res.completion_tokens / res.seconds, 2) if res.seconds else None,
        "batch_size": res.batch_size,
    }
    return Outcome({"text": res.text, "finish_reason": res.finish_reason}, usage)
