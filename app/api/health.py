from __future__ import annotations

from flask_restful import Resource
from sqlalchemy import text

from app.platform import platform


class Health(Resource):
    def get(self) -> tuple[dict, int]:
        with platform().db.session() as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok", "database": "ok"}, 200
