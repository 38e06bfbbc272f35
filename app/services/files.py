"""Files: bytes on disk under settings.files_dir, a row with size, sha256 and owner in the database.

Uploads are copied in chunks (never read whole into memory) into a temporary file next to their final place,
hashed and counted on the way, and renamed into place; the row is written after the bytes are safe on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotFound, TooLarge
from app.models import File
from app.schemas import control_problem
from app.services.pagination import page, paginate
from app.settings import Settings

log = logging.getLogger(__name__)

UPLOAD_PURPOSES = ("batch", "fine-tune", "assistants", "user_data", "evals")
COPY_CHUNK = 1024 * 1024


def files_dir(settings: Settings) -> Path:
    assert settings.files_dir is not None
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    return settings.files_dir


def new_file_id() -> str:
    from app.jobs.lifecycle import new_id

    return new_id("file")


class FileWriter:
    """Write a file in pieces into a temporary path, counting and hashing; `commit` renames it into place."""

    def __init__(self, settings: Settings, file_id: str, limit: int | None = None) -> None:
        self.final = files_dir(settings) / file_id
        fd, tmp = tempfile.mkstemp(prefix=f".{file_id}-", dir=self.final.parent)
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise TooLarge(f"the file is larger than the limit of {self.limit} bytes (LLMOS_MAX_FILE_BYTES)",
                           field="file", code="file_too_large")
        self.digest.update(data)
        self.fh.write(data)

    def commit(self) -> Path:
        self.fh.close()
        os.replace(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def check_filename(filename: str) -> str:
    """An upload's name as stored: at most 255 characters, no NUL, control character or lone surrogate (422)."""
    name = filename or "upload"
    why = control_problem(name)
    if why:
        raise InvalidInput(f"file: the filename {why}", field="file")
    if len(name) > 255:
        raise InvalidInput("file: the filename is longer than 255 characters", field="file")
    return name


def remove_unless_committed(session: Session, path: Path) -> None:
    """Delete `path` if the session's transaction rolls back instead of committing: an upload whose row is
    never written leaves nothing on disk."""
    state = {"open": True}

    def _rolled_back(_session: Session) -> None:
        if state["open"]:
            state["open"] = False
            path.unlink(missing_ok=True)

    def _committed(_session: Session) -> None:
        state["open"] = False

    event.listen(session, "after_rollback", _rolled_back)
    event.listen(session, "after_commit", _committed)


def upload(*, session: Session, settings: Settings, owner_id: int, stream: IO[bytes], filename: str,
           purpose: str) -> File:
    """Stream an upload to disk and add its row. Name and purpose are checked before a byte is written; the bytes
    are removed again when the row cannot be written or its transaction does not commit."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidInput(f"purpose must be one of: {', '.join(UPLOAD_PURPOSES)}", field="purpose")
    name = check_filename(filename)
    file_id = new_file_id()
    writer = FileWriter(settings, file_id, limit=settings.max_file_bytes)
    try:
        while chunk := stream.read(COPY_CHUNK):
            writer.write(chunk)
        path = writer.commit()
    except BaseException:
        writer.discard()
        raise
    try:
        row = File(id=file_id, owner_id=owner_id, purpose=purpose, filename=name, bytes=writer.size,
                   sha256=writer.digest.hexdigest(), path=str(path))
        session.add(row)
        session.flush()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    remove_unless_committed(session, path)
    return row


def get_file(*, session: Session, owner_id: int, file_id: str) -> File:
    row = session.get(File, file_id)
    if row is None or row.owner_id != owner_id:
        raise NotFound(f"no file {file_id!r}", code="file_not_found")
    return row


def list_files(*, session: Session, owner_id: int, limit: int, cursor: str | None,
               purpose: str | None = None) -> tuple[list[File], str | None]:
    stmt = select(File).where(File.owner_id == owner_id)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    stmt = paginate(stmt, created=File.created_at, key=File.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


def delete_file(*, session: Session, owner_id: int, file_id: str) -> None:
    row = get_file(session=session, owner_id=owner_id, file_id=file_id)
    path = Path(row.path)
    session.delete(row)
    session.flush()
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the row is gone; a stray file on disk is only space
        log.warning("file=%s could not remove %s: %s", file_id, path, exc)
