"""Files: upload (multipart, streamed to disk), list, metadata, content, delete. Owner-scoped."""

from __future__ import annotations

from flask import request, send_file
from sqlalchemy.orm import Session

from app.api.base import AuthResource
from app.batch_schemas import file_public
from app.errors import InvalidInput, TooLarge
from app.models import File
from app.platform import platform
from app.services import files

MULTIPART_SLACK = 64 * 1024  # form boundaries and the purpose field around the file's bytes


def upload_from_request(session: Session, owner_id: int) -> File:
    """The multipart upload of this request ('file' and 'purpose' fields), streamed to disk, its row added."""
    p = platform()
    limit = p.settings.max_file_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise TooLarge(f"the file is larger than the limit of {limit} bytes (LLMOS_MAX_FILE_BYTES)",
                       field="file", code="file_too_large")
    # the app-wide limit is for JSON bodies; an upload has its own. Werkzeug spools a large file part to a
    # temporary file while parsing, and files.upload copies it on in 1 MiB pieces.
    request.max_content_length = limit + MULTIPART_SLACK
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise InvalidInput("send the file as multipart/form-data with fields 'file' and 'purpose'",
                           field="file")
    upload = request.files.get("file")
    if upload is None:
        raise InvalidInput("file: field required", field="file")
    purpose = request.form.get("purpose")
    if not purpose:
        raise InvalidInput("purpose: field required", field="purpose")
    return files.upload(session=session, settings=p.settings, owner_id=owner_id, stream=upload.stream,
                        filename=upload.filename or "upload", purpose=purpose)


class FileList(AuthResource):
    read_scope = write_scope = "files"

    def post(self) -> tuple[dict, int]:
        with platform().db.session() as session:
            return file_public(upload_from_request(session, self.owner_id), self.base_url()), 201

    def get(self) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = files.list_files(session=session, owner_id=self.owner_id, limit=limit,
                                                 cursor=cursor, purpose=request.args.get("purpose"))
            return {"data": [file_public(f, self.base_url()) for f in rows], "next_cursor": next_cursor}


class FileItem(AuthResource):
    read_scope = write_scope = "files"

    def get(self, file_id: str) -> dict:
        with platform().db.session() as session:
            return file_public(files.get_file(session=session, owner_id=self.owner_id, file_id=file_id),
                               self.base_url())

    def delete(self, file_id: str) -> dict:
        with platform().db.session() as session:
            files.delete_file(session=session, owner_id=self.owner_id, file_id=file_id)
        return {"id": file_id, "object": "file", "deleted": True}


class FileContent(AuthResource):
    read_scope = write_scope = "files"

    def get(self, file_id: str):  # noqa: ANN201 - a streamed file response
        with platform().db.session() as session:
            row = files.get_file(session=session, owner_id=self.owner_id, file_id=file_id)
        mimetype = "application/jsonl" if row.filename.endswith(".jsonl") else "application/octet-stream"
        return send_file(row.path, mimetype=mimetype, as_attachment=True, download_name=row.filename,
                         conditional=True, etag=row.sha256)
