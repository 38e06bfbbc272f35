"""echo: the output is the input, after params.sleep_s (cancel and the time limit are honoured while waiting)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    sleep_s = float(ctx.params.get("sleep_s", 0.0))
    if sleep_s > 0:
        wake = time.monotonic() + sleep_s
        while (left := wake - time.monotonic()) > 0:
            if time.monotonic() >= ctx.deadline:
                raise JobFailure("timeout", f"the job ran past its time limit of {ctx.timeout_s}s")
            if ctx.cancel.wait(min(left, max(0.0, ctx.deadline - time.monotonic()))):
                raise JobFailure("cancelled", "cancelled while sleeping")
        if time.monotonic() > ctx.deadline:
            raise JobFailure("timeout", f"the job ran past its time limit of {ctx.timeout_s}s")
    return Outcome(dict(ctx.input), {"seconds": round(time.monotonic() - ctx.started, 4), "slept_s": sleep_s})
