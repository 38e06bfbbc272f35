"""/v1/files: the same files, as OpenAI's file objects (`file-` ids, integer timestamps, `after` paging)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import File
from app.services import files
from app.services.openai.common import after_page, olist, to_native, to_v1, ts

V1_PREFIX = "file-"


def file_id(native: str) -> str:
    return to_v1(native, V1_PREFIX)


def native_file_id(v1_id: str) -> str:
    return to_native(v1_id, V1_PREFIX, "file")


def file_object(f: File) -> dict[str, Any]:
    return {"id": file_id(f.id), "object": "file", "bytes": f.bytes, "created_at": ts(f.created_at),
            "expires_at": None, "filename": f.filename, "purpose": f.purpose, "status": "processed",
            "status_details": None}


def get(*, session: Session, owner_id: int, v1_id: str) -> File:
    return files.get_file(session=session, owner_id=owner_id, file_id=native_file_id(v1_id))


def list_files(*, session: Session, owner_id: int, after: str | None, limit: int, order: str,
               purpose: str | None) -> dict[str, Any]:
    stmt = select(File).where(File.owner_id == owner_id)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    rows, more = after_page(session, stmt, created=File.created_at, key=File.id,
                            after=native_file_id(after) if after else None, limit=limit, order=order)
    return olist([file_object(f) for f in rows], more)
