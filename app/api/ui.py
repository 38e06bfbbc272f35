"""The web dashboard at /ui: static files from the package (app/ui/static), no key needed to load them; the page
asks for a key, keeps it in sessionStorage and calls the API with it as a Bearer token.

Why a static page of vanilla JS modules rather than server-rendered pages or a JS build: every figure it shows is
already an API answer, so the page is a client of the same API a user scripts against (no second set of views to
keep in step with it, and what the page shows is what the API answers); live status is a poll of those answers;
and there is nothing to build, vendor or fetch: the files are read as they are in the repository. Every value is
written into the page as text (textContent, DOM attributes), never as HTML, and the page is served with a
Content-Security-Policy that allows only its own scripts and styles."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def static_dir() -> Path:
    return Path(str(resources.files("app.ui") / "static"))


def _secure(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def index() -> Response:
    resp = send_from_directory(static_dir(), "index.html", max_age=0)
    resp.headers["Cache-Control"] = "no-cache"
    return _secure(resp)


def asset(filename: str) -> Response:
    resp = send_from_directory(static_dir(), filename, max_age=0)  # safe_join: nothing outside static/
    resp.headers["Cache-Control"] = "no-cache"  # revalidated by ETag: an upgrade is seen at the next load
    return _secure(resp)


def register(app: Flask) -> None:
    bp = Blueprint("ui", __name__)
    bp.add_url_rule("/ui", "index", index, methods=["GET"])
    bp.add_url_rule("/ui/", "index_slash", index, methods=["GET"])
    bp.add_url_rule("/ui/static/<path:filename>", "asset", asset, methods=["GET"])
    app.register_blueprint(bp)
