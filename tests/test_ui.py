"""The dashboard at /ui in a real browser: playwright driving Debian's chromium (never a downloaded build), headless,
against the API served over HTTP with a real worker and scheduler on PostgreSQL + Redis. Screenshots of each page
are kept under build/test-artifacts/ui (or $LLMOS_TEST_ARTIFACTS/ui)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

BASE = "tiny-random-llama"
CHATS = [("Capital of France?", "Paris"), ("Capital of Italy?", "Rome"), ("Capital of Spain?", "Madrid"),
         ("Capital of Peru?", "Lima")]
HOSTILE = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"


def artifacts() -> Path:
    where = Path(os.environ.get("LLMOS_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts") / "ui"
    where.mkdir(parents=True, exist_ok=True)
    return where


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("LLMOS_REQUIRE_SERVICES"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, body: dict) -> dict:
        r = self.s.post(self.base + path, json=body, timeout=30)
        assert r.status_code == 202, r.text
        return r.json()

    def get(self, path: str) -> dict:
        r = self.s.get(self.base + path, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, rows: list[tuple[str, str]], name: str) -> str:
        data = "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                       + "\n" for q, a in rows).encode()
        r = self.s.post(self.base + "/files", data={"purpose": "fine-tune"},
                        files={"file": (name, io.BytesIO(data))}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["id"]


def test_served_from_the_package_without_a_key_or_a_rate_limit(make_app, pg, redis_url):
    app = make_app(database_url=pg, broker_url=redis_url, rate_limit="2/minute")
    client = app.test_client()
    for _ in range(4):  # beyond the limit: /ui is exempt
        r = client.get("/ui")
        assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert '<script type="module" src="/ui/static/js/main.js">' in page and "https://" not in page
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    js = client.get("/ui/static/js/main.js")
    assert js.status_code == 200 and "javascript" in js.mimetype
    assert client.get("/ui/static/app.css").mimetype == "text/css"
    missing = client.get("/ui/static/../settings.py")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert client.get("/queues").status_code == 401  # the data behind it still needs a key


def test_dashboard_in_chromium(live_api, key, admin_key, pg, redis_url, start_worker):
    from playwright.sync_api import expect, sync_playwright

    api = Api(live_api, key)
    shots = artifacts()
    train, valid = api.upload(CHATS, "train.jsonl"), api.upload(CHATS[:2], "valid.jsonl")
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4")
    # started first, they run while the browser looks at the rest
    ft = api.post("/jobs", {"kind": "finetune", "model": BASE, "input": {"training_file": train,
                                                                        "validation_file": valid},
                            "params": {"n_epochs": 2, "batch_size": 1, "log_every_steps": 1, "learning_rate": 1e-3}})
    batch = api.post("/batches", {"model": BASE, "documents": [{"custom_id": f"d{i}", "text": f"doc {i}"}
                                                                for i in range(6)],
                                  "task": {"type": "generate", "template": "Summarize: {text}"},
                                  "params": {"max_new_tokens": 2, "temperature": 0}, "chunk_size": 2})
    stuck = api.post("/jobs", {"kind": "echo", "gpu": "h100", "input": {"x": 1}})  # no h100 worker here

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: "Refused" in m.text and errors.append(m.text))  # a CSP violation
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)

        # a bad key is refused with the API's message, and nothing is stored
        page.goto(f"{live_api}/ui")
        page.fill("#api-key", "llmos_not_a_key")
        page.click("#sign-in button[type=submit]")
        expect(page.locator("#sign-in-error")).to_contain_text("Sign-in failed")
        assert page.evaluate("sessionStorage.getItem('llmos.key')") is None
        page.screenshot(path=str(shots / "sign-in-refused.png"))

        page.fill("#api-key", key)
        page.click("#sign-in button[type=submit]")
        expect(page.locator("table#jobs")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('llmos.key')") == key

        # a job submitted over the API appears and reaches succeeded without a reload
        job = api.post("/jobs", {"kind": "echo", "input": {"note": HOSTILE}, "params": {"sleep_s": 3},
                                 "metadata": {"who": HOSTILE}})
        row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
        expect(row).to_be_visible()
        assert row.get_attribute("data-status") in ("queued", "running")
        expect(row).to_have_attribute("data-status", "succeeded")
        expect(row.locator(".badge")).to_have_text("succeeded")
        page.screenshot(path=str(shots / "jobs.png"))

        # filters: by status and kind (the page's URL keeps them); a status no such job has shows none
        page.select_option("#filter-status", "succeeded")
        expect(page.locator("#filter-status")).to_have_value("succeeded")
        expect(row).to_be_visible()
        page.select_option("#filter-kind", "echo")
        expect(page.locator("#filter-kind")).to_have_value("echo")
        expect(row).to_be_visible()
        assert "status=succeeded" in page.url and "kind=echo" in page.url
        page.select_option("#filter-status", "failed")
        expect(page.locator("#jobs tr.empty")).to_be_visible()
        page.click("#job-filters >> text=Clear")
        expect(row).to_be_visible()

        # its page: timeline oldest first, output (user data shown as text, never run), usage
        row.locator("a").click()
        expect(page.locator("#timeline li").first).to_have_attribute("data-type", "queued")
        expect(page.locator("#timeline li").last).to_have_attribute("data-type", "succeeded")
        expect(page.locator("#timeline li[data-type=running]")).to_have_count(1)
        expect(page.locator("#output pre")).to_contain_text(HOSTILE)
        expect(page.locator("#usage dl")).to_be_visible()
        assert page.evaluate("window.__xss") is None
        page.screenshot(path=str(shots / "job.png"), full_page=True)

        # batches: a progress bar that fills as the chunks end
        page.click("#nav a[data-page=batches]")
        brow = page.locator(f'#batches tr[data-id="{batch["id"]}"]')
        expect(brow.locator(".progress")).to_be_visible()
        expect(brow).to_have_attribute("data-status", "succeeded", timeout=60_000)
        expect(brow.locator(".progress")).to_have_attribute("aria-valuenow", "100")
        expect(brow.locator(".progress .label")).to_have_text("6/6 done")
        page.screenshot(path=str(shots / "batches.png"))
        brow.locator("a").click()
        expect(page.locator("#chunks tbody tr")).to_have_count(3)

        # queues: depth and oldest age, the queue no worker consumes flagged
        page.click("#nav a[data-page=queues]")
        q = page.locator('#queues tr[data-queue="echo.h100"]')
        expect(q.locator(".depth")).to_have_text("1")
        expect(q).to_have_class("warn")
        expect(page.locator('#queues tr[data-queue="echo.cpu"]')).to_be_visible()  # the worker's own, empty
        page.screenshot(path=str(shots / "queues.png"))
        [entry] = [x for x in api.get("/queues")["data"] if x["name"] == "echo.h100"]
        assert entry["depth"] == 1 and entry["workers"] == 0 and entry["oldest_age_s"] >= 0
        requests.post(f"{live_api}/jobs/{stuck['id']}/cancel", headers={"Authorization": f"Bearer {key}"},
                      timeout=30)

        # workers: a plain key sees the GPU pools
        page.click("#nav a[data-page=workers]")
        expect(page.locator('#gpu-pools tr[data-gpu="cpu"]')).to_be_visible()

        # a fine-tune: its loss curve (one point a step) and its checkpoints (one an epoch)
        page.click("#nav a[data-page=finetunes]")
        frow = page.locator(f'#finetunes tr[data-id="{ft["id"]}"]')
        expect(frow).to_have_attribute("data-status", "succeeded", timeout=90_000)
        frow.locator("a").click()
        expect(page.locator("#finetuned-model")).to_be_visible()
        expect(page.locator("#loss-curve .series.train circle")).to_have_count(8)  # 4 examples x 2 epochs
        expect(page.locator("#loss-curve .series.train polyline")).to_have_count(1)
        expect(page.locator("#loss-curve .series.valid circle").first).to_be_attached()
        expect(page.locator("#checkpoints-table tbody tr")).to_have_count(2)
        page.screenshot(path=str(shots / "finetune.png"), full_page=True)

        # an admin key sees each worker; signing out forgets the key
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('llmos.key')") is None
        page.fill("#api-key", admin_key)
        page.click("#sign-in button[type=submit]")
        page.click("#nav a[data-page=workers]")
        expect(page.locator("#workers tbody tr").first).to_contain_text("cpu")
        expect(page.locator("#workers .badge").first).to_have_text("alive")
        page.screenshot(path=str(shots / "workers.png"))

        # a key revoked while signed in: the next call signs the page out with the API's message
        page.evaluate("sessionStorage.setItem('llmos.key', 'llmos_revoked')")
        page.click("#nav a[data-page=queues]")
        expect(page.locator("#sign-in-error")).to_contain_text("Signed out")

        assert not errors, errors
        browser.close()
