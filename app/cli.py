"""The `llmos` command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import click

from app import cli_ops
from app.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmos", message="llmos %(version)s")
def main() -> None:
    """LLM OS: a self-hosted job platform for LLM work."""


# ---- database ------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


def _upgrade() -> list[str]:
    from app.db import Database
    from app.services import registry
    from migrations import upgrade

    settings = load_settings()
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            return registry.seed_registry(session=session)
    finally:
        database.dispose()


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to head and register the packaged models."""
    added = _upgrade()
    click.echo(f"database at head; models added: {', '.join(added) or 'none'}", err=True)


# ---- keys ----------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys."""


def _bus() -> Any:
    """This process's end of the wake-ups, so that what a command changes (a revoke) reaches the API's caches."""
    from app.jobs.signals import bus_for

    s = load_settings()
    return bus_for(s.broker_url, s.data_dir, s.database_url)


def _create_key(owner: str, **options: Any) -> str:
    from app.db import Database
    from app.services import auth

    database = Database(load_settings().database_url)
    try:
        with database.session() as session:
            return auth.create_key(session=session, owner_name=owner, **options)
    finally:
        database.dispose()


@keys.command("create")
@click.option("--owner", required=True, help="owner name; created if new")
@click.option("--name", default=None, help="a label to tell keys apart in `llmos keys list`")
@click.option("--scopes", default=None,
              help="comma-separated: jobs:read, jobs:write, files, finetune, webhooks, admin "
                   "(default: all but admin)")
@click.option("--rate-limit", default=None, help="requests allowed, as N/minute (default: LLMOS_RATE_LIMIT)")
@click.option("--expires-in", "expires_in", type=float, default=None, help="days until the key stops working")
def keys_create(owner: str, name: str | None, scopes: str | None, rate_limit: str | None,
                expires_in: float | None) -> None:
    """Create an API key for OWNER and print it (alone, on stdout). It is shown only once."""
    from app.errors import ApiError

    try:
        click.echo(_create_key(owner, name=name, scopes=scopes, rate_limit=rate_limit, expires_in_days=expires_in))
    except ApiError as exc:
        raise click.BadParameter(exc.message) from None


@keys.command("list")
@click.option("--owner", default=None, help="only this owner's keys")
@click.option("--json", "as_json", is_flag=True, help="as JSON")
def keys_list(owner: str | None, as_json: bool) -> None:
    """Every key: id, prefix, owner, name, scopes, created, last used, expiry, revoked. Never the secret."""
    from app.db import Database
    from app.services import auth

    database = Database(load_settings().database_url)
    try:
        with database.session() as session:
            rows = auth.list_keys(session=session, owner=owner)
    finally:
        database.dispose()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("id\tprefix\towner\tname\tscopes\tcreated\tlast used\texpires\trevoked")
    for k in rows:
        click.echo("\t".join(str(x if x is not None else "-") for x in (
            k["id"], k["prefix"] + "…", k["owner"], k["name"], ",".join(k["scopes"]), k["created_at"],
            k["last_used_at"], k["expires_at"], k["revoked_at"])))


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke key KEY_ID (see `llmos keys list`): refused at once by every API process."""
    from app.db import Database
    from app.services import auth

    database = Database(load_settings().database_url, bus=_bus())
    try:
        with database.session() as session:
            if not auth.revoke_key(session=session, key_id=key_id):
                raise click.ClickException(f"no key {key_id}")
    finally:
        database.dispose()
    click.echo(f"revoked key {key_id}")


# ---- secrets -------------------------------------------------------------------------------------------


@main.group()
def secrets() -> None:
    """The key that seals stored secrets (LLMOS_SECRET_KEY)."""


@secrets.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for LLMOS_SECRET_KEY (put it first in the list; keep the old ones after it)."""
    from app import secrets_box

    click.echo(secrets_box.new_key())


@secrets.command("reseal")
def secrets_reseal() -> None:
    """Seal every stored secret under the first key of LLMOS_SECRET_KEY (after a rotation, or for secrets written
    before migration 0009); then the older keys can go."""
    from app import secrets_box
    from app.db import Database

    settings = load_settings()
    db = Database(settings.database_url)
    try:
        n = secrets_box.reseal(db=db, box=secrets_box.box_for(settings))
    finally:
        db.dispose()
    click.echo(f"{n} stored secret(s) sealed under the first key of LLMOS_SECRET_KEY")


# ---- kinds ---------------------------------------------------------------------------------------------


@main.command("kinds")
@click.option("--json", "as_json", is_flag=True, help="the declarations with their JSON schemas")
def kinds_cmd(as_json: bool) -> None:
    """The job kinds this installation knows (the registry the API and workers read)."""
    from app.jobs import kinds
    from app.schemas import kind_public

    rows = [kind_public(k) for k in kinds.all_kinds() if k.public]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for k in rows:
        click.echo(f"{k['id']}\tmodel: {k['model_kind'] or '-'}\tqueues: {k['queue_family']}.<gpu>\t{k['description']}")


# ---- plugins --------------------------------------------------------------------------------------------


@main.group("plugins")
def plugins_cmd() -> None:
    """Installed plugins (entry points llmos.kinds, llmos.loaders, llmos.hooks)."""


@plugins_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="as JSON")
def plugins_list(as_json: bool) -> None:
    """Every plugin entry point installed, loaded: what it adds, or why it is skipped."""
    from app import plugins
    from app.jobs import kinds

    found = kinds.plugin_kinds() + [p for g in plugins.GROUPS[1:] for p in plugins.discover(g)]
    rows = [{"group": p.group, "name": p.name, "value": p.value, "package": p.package,
             "status": "broken" if p.error else "ok", "error": p.error} for p in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
    for r in rows:
        click.echo(f"{r['group']}\t{r['name']}\t{r['value']}\t{r['package'] or '-'}\t{r['status']}"
                   + (f": {r['error']}" if r["error"] else ""))


# ---- models --------------------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """The model registry."""


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True))
@click.option("--kind", default="causal-lm", type=click.Choice(["causal-lm", "embedding"]), show_default=True,
              help="a text generator or an embedding model")
@click.option("--default-gpu", default=None, help="GPU type jobs for this model ask for by default")
@click.option("--replace", is_flag=True, help="replace an existing entry of that name")
def models_add(name: str, path: str, kind: str, default_gpu: str | None, replace: bool) -> None:
    """Register a local Hugging Face directory or GGUF file as NAME."""
    from app.db import Database
    from app.errors import ApiError
    from app.services import registry

    database = Database(load_settings().database_url)
    try:
        with database.session() as session:
            entry = registry.add_model(session=session, name=name, path=path, kind=kind,
                                       default_gpu=default_gpu, replace=replace)
            click.echo(f"registered {entry.name} ({entry.source_type}: {entry.source})")
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        database.dispose()


@models.command("list")
def models_list() -> None:
    from app.db import Database
    from app.services import registry

    database = Database(load_settings().database_url)
    with database.session() as session:
        for m in registry.list_models(session=session, everyone=True):
            click.echo(f"{m.name}\t{m.kind}\t{m.source_type}\t{m.source}")
    database.dispose()


# ---- processes -----------------------------------------------------------------------------------------


def _gunicorn_argv(host: str, port: int, workers: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "gthread",
            "--threads", str(threads), "--bind", f"{host}:{port}", "--timeout", "90", "--graceful-timeout", "5",
            "-c", "python:app.gunicorn_conf", "--no-control-socket", "app:create_app()"]


def _metrics_dir() -> None:
    """prometheus-client multiprocess mode for gunicorn's processes: one folder of metric files, emptied at start
    (PROMETHEUS_MULTIPROC_DIR if set, else a fresh temporary one)."""
    import tempfile
    from pathlib import Path

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for old in Path(folder).glob("*.db"):
            old.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llmos-metrics-")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every one)")
@click.option("--port", default=8000, type=int, show_default=True, help="port to listen on")
@click.option("--workers", default=2, type=int, help="gunicorn worker processes")
@click.option("--threads", default=300, type=int,
              help="threads per process; a waiting long-poll holds one (blocked, no CPU), and 16 are always kept "
                   "for everything else (LLMOS_MAX_WAITING defaults to threads - 16)")
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API with gunicorn."""
    os.environ.setdefault("LLMOS_MAX_WAITING", str(max(1, threads - 16)))  # long-polls never take every thread
    _metrics_dir()
    argv = _gunicorn_argv(host, port, workers, threads)
    os.execv(argv[0], argv)


@main.command()
@click.option("--gpu-type", default=None, help="override the detected GPU type (h100, a100-80gb, cpu, ...)")
@click.option("--queues", default=None, help="comma-separated queues; default <kind>.<gpu type> and <kind>.any")
@click.option("--concurrency", default=None, type=int, help="task threads (requests the engine can batch)")
@click.option("--loglevel", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR "
              "(LLMOS_LOG_LEVEL wins; LLMOS_LOG_FORMAT=json|text picks the format)")
def worker(gpu_type: str | None, queues: str | None, concurrency: int | None, loglevel: str) -> None:
    """Run a worker: consume the queues this hardware serves, keep models warm, store results."""
    from workers.main import run_worker

    run_worker(gpu_type=gpu_type, queues=queues.split(",") if queues else None, concurrency=concurrency,
               loglevel=loglevel)


def _scheduler(platform: Any) -> Any:
    from app.services.scheduler import Scheduler

    return Scheduler(db=platform.db, settings=platform.settings, publisher=platform.publisher,
                     queue_depth=platform.publisher.queue_depth)


@main.command()
@click.option("--once", is_flag=True, help="one pass of every duty, then exit")
def scheduler(once: bool) -> None:
    """Run the scheduler: the outbox relay, the reconciler (jobs of lost workers, lost messages), time limits,
    batch finalisation and webhook deliveries. Run one (or two: only one is active at a time)."""
    import logging

    from app import create_app, logging_setup, metrics

    logging_setup.configure()
    platform = create_app().extensions["llmos"]
    sched = _scheduler(platform)
    if not once and platform.settings.scheduler_metrics_port:
        metrics.instrument_scheduler(sched)
        metrics.serve(platform.settings.scheduler_metrics_port, log=logging.getLogger("llmos.scheduler"),
                      registry=metrics.SCHEDULER_REGISTRY)
    if once:
        if not sched.leadership.acquire():
            raise click.ClickException("another scheduler is active")
        r = sched.once()
        sched.leadership.release()
        click.echo(f"requeued={r.requeued} failed={r.failed} cancelled={r.cancelled} republished={r.republished} "
                   f"expired={r.expired}", err=True)
        return
    signal.signal(signal.SIGTERM, lambda *a: sched.request_stop())
    with contextlib.suppress(KeyboardInterrupt):
        sched.run()


def _http(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=90) as resp:
        return json.loads(resp.read())


def _wait_healthy(base: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise click.ClickException("a platform process exited during start-up")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise click.ClickException("the API did not become healthy")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address the API listens on")
@click.option("--port", default=8000, type=int, show_default=True, help="port the API listens on")
@click.option("--demo", is_flag=True, help="once up, submit one SmolLM2 job and print its result")
def dev(host: str, port: int, demo: bool) -> None:
    """API + worker + scheduler (in this process) on this machine with no services: SQLite and a filesystem
    broker in the data directory (LLMOS_DATA_DIR, default the per-user data directory). Ctrl-C stops all."""
    from app import create_app, logging_setup

    settings = load_settings()
    quiet = demo and not os.environ.get("LLMOS_LOG_LEVEL")
    if quiet:
        os.environ["LLMOS_LOG_LEVEL"] = "WARNING"
    logging_setup.configure("text" if not os.environ.get("LLMOS_LOG_FORMAT") else None)
    _stage(f"data directory {settings.data_dir} (LLMOS_DATA_DIR moves it)")
    _upgrade()
    _stage("database at head")
    env = dict(os.environ, LLMOS_DATA_DIR=str(settings.data_dir), LLMOS_DEV="1")
    env.setdefault("LLMOS_SHUTDOWN_GRACE_S", "1")  # Ctrl-C: running jobs go back to the queue at once
    if quiet:  # one line per stage: no log lines, warnings or progress bars from the children
        env.update(PYTHONWARNINGS="ignore", TQDM_DISABLE="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    # each child in its own session: the terminal's Ctrl-C reaches this process only, which stops them in order
    procs = [
        subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env, start_new_session=True),
        subprocess.Popen(_gunicorn_argv(host, port, 1, 16), env=env, start_new_session=True),
    ]
    sched = _scheduler(create_app().extensions["llmos"])
    sched.start()

    def _terminate(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        base = f"http://{host}:{port}"
        _wait_healthy(base, procs)
        _stage(f"LLM OS is up at {base} (API, worker, scheduler); Ctrl-C stops it")
        if demo:
            _demo(base, settings)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        raise click.ClickException("a platform process exited")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sched.request_stop()
        _stop_all(procs, within=2.0)
        stopper = threading.Thread(target=sched.stop, daemon=True)  # a pass in flight may not hold the exit
        stopper.start()
        stopper.join(timeout=0.5)
        _stage("stopped")


def _stage(line: str) -> None:
    click.echo(f"llmos dev: {line}", err=True)


def _stop_all(procs: list[subprocess.Popen], within: float) -> None:
    """SIGTERM every child's process group, then SIGKILL what is still there after `within` seconds."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + within
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:  # gunicorn's workers and anything else a child started live in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1)


def _demo_key(base: str, settings: Any) -> str:
    """The demo owner's key, kept (mode 0600) in the data directory and reused while it still works."""
    path = settings.data_dir / "demo.key"
    if path.exists():
        key = path.read_text().strip()
        try:
            _http("GET", f"{base}/jobs?limit=1", key)
            return key
        except urllib.error.HTTPError:
            pass
    key = _create_key("demo")
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _demo(base: str, settings: Any) -> None:
    key = _demo_key(base, settings)
    _stage(f"demo API key (owner 'demo', kept in {settings.data_dir / 'demo.key'}): {key}")
    job = _http("POST", f"{base}/jobs", key, {
        "kind": "generate", "model": "smollm2-135m-instruct",
        "input": {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        "params": {"max_new_tokens": 32, "temperature": 0},
    })
    converted = (settings.model_dir / "smollm2-135m-instruct" / "config.json").exists()
    note = "" if converted else "; this first run converts the model once (~40 s on two CPU cores)"
    _stage(f"submitted {job['id']}{note}")
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        job = _http("GET", f"{base}/jobs/{job['id']}?wait=60", key)
    _stage(f"{job['id']} {job['status']}")
    click.echo(json.dumps({k: job[k] for k in ("id", "status", "output", "usage", "error")}, indent=2))


# ---- batches (over HTTP) ------------------------------------------------------------------------------

FINAL = ("succeeded", "failed", "cancelled")


def _api_error(exc: urllib.error.HTTPError) -> click.ClickException:
    try:
        err = json.loads(exc.read())["error"]
        return click.ClickException(f"{exc.code} {err.get('code')}: {err.get('message')}")
    except (ValueError, KeyError):
        return click.ClickException(f"HTTP {exc.code}")


def _upload(base: str, key: str, path: str, purpose: str) -> dict[str, Any]:
    """multipart/form-data, the file streamed from disk in pieces."""
    import secrets
    from pathlib import Path

    boundary = "llmos-" + secrets.token_hex(12)
    name = Path(path).name.replace('"', "")
    pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    post = f"\r\n--{boundary}--\r\n".encode()
    size = len(pre) + os.path.getsize(path) + len(post)

    def body():  # noqa: ANN202
        yield pre
        with open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                yield chunk
        yield post

    req = urllib.request.Request(f"{base}/files", data=body(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(size)})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _download(base: str, key: str, file_id: str, dest: str) -> None:
    req = urllib.request.Request(f"{base}/files/{file_id}/content", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=600) as resp, open(dest, "wb") as out:
        while chunk := resp.read(1024 * 1024):
            out.write(chunk)


def _conn(url: str | None, key: str | None) -> tuple[str, str]:
    if not key:
        raise click.UsageError("give --key or set LLMOS_API_KEY")
    return (url or "http://127.0.0.1:8000").rstrip("/"), key


@main.group()
def batch() -> None:
    """Batches of documents, over the HTTP API (--url/--key or LLMOS_URL/LLMOS_API_KEY)."""


_url_opt = click.option("--url", envvar="LLMOS_URL", default=None, help="API base URL (default http://127.0.0.1:8000)")
_key_opt = click.option("--key", envvar="LLMOS_API_KEY", default=None, help="API key")


@batch.command("submit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--task", "task_name", required=True,
              type=click.Choice(["summarize", "generate", "classify", "extract", "embed"]),
              help="what to do with each document")
@click.option("--model", default=None, help="registry name (default smollm2-135m-instruct; all-minilm-l6-v2 for embed)")
@click.option("--template", default=None, help="generate/summarize: prompt template with {text} and document fields")
@click.option("--labels", default=None, help="classify: comma-separated labels")
@click.option("--fields", default=None, help="extract: comma-separated field names")
@click.option("--max-new-tokens", type=int, default=None, help="longest generation per document")
@click.option("--temperature", type=float, default=None, help="0 = greedy")
@click.option("--gpu", default=None, help="GPU type for the chunks, or any")
@click.option("--priority", type=int, default=None, help="0-9, 9 most urgent")
@click.option("--chunk-size", type=int, default=None, help="documents per worker message")
@click.option("--wait", is_flag=True, help="show progress until the batch ends, then write the output file")
@click.option("--output", "output_path", default=None, help="output path for --wait (default <id>_output.jsonl)")
@_url_opt
@_key_opt
def batch_submit(path: str, task_name: str, model: str | None, template: str | None, labels: str | None,
                 fields: str | None, max_new_tokens: int | None, temperature: float | None, gpu: str | None,
                 priority: int | None, chunk_size: int | None, wait: bool, output_path: str | None,
                 url: str | None, key: str | None) -> None:
    """Upload PATH (JSONL lines {"custom_id", "text"}) and submit it as a batch; prints the batch id."""
    base, key = _conn(url, key)
    body: dict[str, Any] = {"task": cli_ops.batch_task(task_name, template, labels, fields),
                            "model": model or ("all-minilm-l6-v2" if task_name == "embed" else "smollm2-135m-instruct")}
    params = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature)) if v is not None}
    if params:
        body["params"] = params
    for k, v in (("gpu", gpu), ("priority", priority), ("chunk_size", chunk_size)):
        if v is not None:
            body[k] = v
    try:
        f = _upload(base, key, path, "batch")
        body["input_file_id"] = f["id"]
        b = _http("POST", f"{base}/batches", key, body)
    except urllib.error.HTTPError as exc:
        raise _api_error(exc) from None
    click.echo(b["id"])
    if not wait:
        return
    total = b["request_counts"]["total"]
    shown = 0
    with click.progressbar(length=total, label=f"{b['id']}", file=sys.stderr, show_pos=True) as bar:
        while b["status"] not in FINAL:
            time.sleep(0.5)
            b = _http("GET", f"{base}/batches/{b['id']}", key)
            done = b["progress"]["done"]
            bar.update(done - shown)
            shown = done
    counts = b["request_counts"]
    click.echo(f"{b['status']}: {counts['completed']} completed, {counts['failed']} failed of {counts['total']}",
               err=True)
    if b.get("output_file_id"):
        dest = output_path or f"{b['id']}_output.jsonl"
        _download(base, key, b["output_file_id"], dest)
        click.echo(f"output written to {dest}", err=True)
    if b.get("error_file_id"):
        dest = (output_path or f"{b['id']}_output.jsonl").removesuffix(".jsonl") + "_errors.jsonl"
        _download(base, key, b["error_file_id"], dest)
        click.echo(f"errors written to {dest}", err=True)
    if b["status"] != "succeeded":
        sys.exit(1)


@batch.command("status")
@click.argument("batch_id")
@_url_opt
@_key_opt
def batch_status(batch_id: str, url: str | None, key: str | None) -> None:
    """Print a batch's status, counts and files as JSON."""
    base, key = _conn(url, key)
    try:
        b = _http("GET", f"{base}/batches/{batch_id}", key)
    except urllib.error.HTTPError as exc:
        raise _api_error(exc) from None
    keys = ("id", "status", "model", "task", "request_counts", "progress", "output_file_id", "error_file_id", "error",
            "created_at", "finished_at")
    click.echo(json.dumps({k: b.get(k) for k in keys}, indent=2))


for _group in cli_ops.GROUPS:  # llmos jobs | files | batches | finetunes (app/cli_ops.py)
    main.add_command(_group)


if __name__ == "__main__":
    main()
