"""Why a job failed, as one of the codes a user sees in `error.code`."""

from __future__ import annotations

CODES = ("model_not_found", "invalid_input", "out_of_memory", "timeout", "worker_lost", "cancelled", "internal")


class JobFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
