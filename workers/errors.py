"""Why a job failed, as one of the codes a user sees in `error.code`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

CODES = ("model_not_found", "invalid_input", "out_of_memory", "timeout", "worker_lost", "cancelled", "internal")


class JobFailure(Exception):
    """A failure the user sees as `error.code`. `also`: writes that commit with the failure (what a stopped chunk
    finished); `output`: what a stopped job made before it stopped."""

    def __init__(self, code: str, message: str, *, also: Callable[[Session], None] | None = None,
                 output: dict[str, Any] | None = None) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.also = also
        self.output = output
