"""/v1/files: create (multipart), list (`after`, `limit`, `order`, `purpose`), retrieve, delete, content."""

from __future__ import annotations

from flask import request, send_file

from app.api.files import upload_from_request
from app.api.v1.base import V1Resource
from app.platform import platform
from app.services import files as native
from app.services.openai import files


class FileList(V1Resource):
    read_scope = write_scope = "files"

    def post(self) -> tuple[dict, int]:
        with platform().db.session() as session:
            return files.file_object(upload_from_request(session, self.owner_id)), 200

    def get(self) -> dict:
        after, limit, order = self.list_args(default_limit=10_000, high=10_000)
        with platform().db.session() as session:
            return files.list_files(session=session, owner_id=self.owner_id, after=after, limit=limit, order=order,
                                    purpose=request.args.get("purpose"))


class FileItem(V1Resource):
    read_scope = write_scope = "files"

    def get(self, file_id: str) -> dict:
        with platform().db.session() as session:
            return files.file_object(files.get(session=session, owner_id=self.owner_id, v1_id=file_id))

    def delete(self, file_id: str) -> dict:
        with platform().db.session() as session:
            native.delete_file(session=session, owner_id=self.owner_id, file_id=files.native_file_id(file_id))
        return {"id": file_id, "object": "file", "deleted": True}


class FileContent(V1Resource):
    read_scope = write_scope = "files"

    def get(self, file_id: str):  # noqa: ANN201 - a streamed file response
        with platform().db.session() as session:
            row = files.get(session=session, owner_id=self.owner_id, v1_id=file_id)
        mimetype = "application/jsonl" if row.filename.endswith(".jsonl") else "application/octet-stream"
        return send_file(row.path, mimetype=mimetype, as_attachment=True, download_name=row.filename,
                         conditional=True, etag=row.sha256)


ROUTES = [(FileList, "/files"), (FileItem, "/files/<string:file_id>"),
          (FileContent, "/files/<string:file_id>/content")]
