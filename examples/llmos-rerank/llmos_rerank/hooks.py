"""A job-event hook: appends each ended job ({"job_id", "kind", "status", "error_code"}) as a JSON line to the file
named by LLMOS_RERANK_HOOK_FILE, when set."""

from __future__ import annotations

import json
import os
from typing import Any


def record(event: dict[str, Any]) -> None:
    path = os.environ.get("LLMOS_RERANK_HOOK_FILE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
