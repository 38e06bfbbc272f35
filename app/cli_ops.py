"""`llmos jobs`, `llmos files`, `llmos batches`, `llmos finetunes`: the HTTP API from a shell.

Every command takes --url/--key (or LLMOS_URL / LLMOS_API_KEY) and --json (the API's JSON as it came, for
scripts); without --json a short human summary. `wait` commands show a progress bar (rich) on stderr and exit
non-zero when the job or batch did not succeed."""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

FINAL = ("succeeded", "failed", "cancelled")


class Client:
    def __init__(self, url: str | None, key: str | None) -> None:
        if not key:
            raise click.UsageError("give --key or set LLMOS_API_KEY (llmos keys create --owner NAME makes one)")
        self.base = (url or "http://127.0.0.1:8000").rstrip("/")
        self.key = key

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False,
                headers: dict[str, str] | None = None, timeout: float = 120) -> Any:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, (bytes, Iterator)) else body
        h = {"Authorization": f"Bearer {self.key}"}
        if body is not None and not isinstance(body, (bytes, Iterator)):
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: SIM115 - closed below or by the caller
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise click.ClickException(f"cannot reach {self.base}: {exc.reason} (is `llmos dev` running? "
                                       "--url / LLMOS_URL)") from None
        if raw:
            return resp
        with resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str, **params: Any) -> Any:
        q = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path + ("?" + urllib.parse.urlencode(q) if q else ""))

    def upload(self, path: str, purpose: str) -> Any:
        boundary = "llmos-" + secrets.token_hex(12)
        name = Path(path).name.replace('"', "")
        pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        post = f"\r\n--{boundary}--\r\n".encode()
        size = len(pre) + Path(path).stat().st_size + len(post)

        def body() -> Iterator[bytes]:
            yield pre
            with open(path, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    yield chunk
            yield post

        return self.request("POST", "/files", body(), timeout=600, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)})

    def download(self, file_id: str, dest: str) -> int:
        n = 0
        with self.request("GET", f"/files/{file_id}/content", raw=True, timeout=600) as resp, open(dest, "wb") as out:
            while chunk := resp.read(1024 * 1024):
                out.write(chunk)
                n += len(chunk)
        return n


def _api_error(exc: urllib.error.HTTPError) -> click.ClickException:
    try:
        err = json.loads(exc.read())["error"]
        where = f" (field {err['field']})" if err.get("field") else ""
        return click.ClickException(f"{exc.code} {err.get('code')}: {err.get('message')}{where}")
    except (ValueError, KeyError, TypeError):
        return click.ClickException(f"HTTP {exc.code}")


def conn_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="print the API's JSON (for scripts)")(fn)
    fn = click.option("--key", envvar="LLMOS_API_KEY", default=None, help="API key (or LLMOS_API_KEY)")(fn)
    return click.option("--url", envvar="LLMOS_URL", default=None,
                        help="API base URL (or LLMOS_URL; default http://127.0.0.1:8000)")(fn)


def _json_arg(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _show(obj: Any, as_json: bool, line: Callable[[Any], str]) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else line(obj))


def _job_line(j: dict[str, Any]) -> str:
    prog = j.get("progress") or {}
    frac = f" {prog['fraction']:.0%}" if isinstance(prog.get("fraction"), (int, float)) else ""
    err = f" {j['error']['code']}: {j['error']['message']}" if j.get("error") else ""
    return f"{j['id']}\t{j['kind']}\t{j.get('model') or '-'}\t{j['status']}{frac}\t{j['created_at']}{err}"


def _list(c: Client, path: str, limit: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while len(rows) < limit:
        page = c.get(path, limit=min(100, limit - len(rows)), cursor=cursor, **params)
        rows += page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return rows


def _progress(label: str, poll: Callable[[], dict[str, Any]], fraction: Callable[[dict[str, Any]], float | None],
              done: Callable[[dict[str, Any]], bool], quiet: bool) -> dict[str, Any]:
    """Poll until done, with a rich progress bar on stderr (none with --json or off a terminal)."""
    obj = poll()
    if quiet or done(obj):
        while not done(obj):
            time.sleep(0.5)
            obj = poll()
        return obj
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=1.0)
        while True:
            f = fraction(obj)
            bar.update(task, completed=f if f is not None else 0, description=f"{label} {obj.get('status')}")
            if done(obj):
                bar.update(task, completed=1.0 if obj.get("status") == "succeeded" else f or 0)
                return obj
            time.sleep(0.5)
            obj = poll()


def _exit_for(status: str) -> None:
    if status != "succeeded":
        sys.exit(1)


# ---- jobs ------------------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Jobs: submit, get, list, wait, cancel, events."""


@jobs.command("submit")
@click.option("--kind", default="generate", show_default=True, help="generate, embed, finetune, echo, …")
@click.option("--model", default=None, help="registry name (llmos models list)")
@click.option("--prompt", default=None, help="generate: a raw prompt (input {\"prompt\": …})")
@click.option("--message", "message", default=None, help="generate: one user message through the chat template")
@click.option("--input", "input_json", default=None, help="the job's input as JSON (instead of --prompt/--message)")
@click.option("--params", "params_json", default=None, help="params as JSON, e.g. '{\"max_new_tokens\": 32}'")
@click.option("--gpu", default=None, help="GPU type, a comma-separated preference list, or any")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0-9, 9 most urgent")
@click.option("--timeout", "timeout_s", type=int, default=None, help="the job's time limit in seconds")
@click.option("--wait", is_flag=True, help="wait for it to end (progress on stderr); exit 1 unless it succeeded")
@conn_options
def jobs_submit(kind: str, model: str | None, prompt: str | None, message: str | None, input_json: str | None,
                params_json: str | None, gpu: str | None, priority: int | None, timeout_s: int | None, wait: bool,
                url: str | None, key: str | None, as_json: bool) -> None:
    """Submit a job; prints its id (or, with --wait, the finished job)."""
    c = Client(url, key)
    inp = _json_arg(input_json, "--input")
    if inp is None:
        if message is not None:
            inp = {"messages": [{"role": "user", "content": message}]}
        elif prompt is not None:
            inp = {"prompt": prompt}
        else:
            inp = {}
    body: dict[str, Any] = {"kind": kind, "input": inp}
    for k, v in (("model", model), ("params", _json_arg(params_json, "--params")), ("priority", priority),
                 ("timeout_s", timeout_s)):
        if v is not None:
            body[k] = v
    if gpu:
        body["gpu"] = gpu.split(",") if "," in gpu else gpu
    job = c.request("POST", "/jobs", body)
    if not wait:
        _show(job, as_json, lambda j: j["id"])
        return
    job = _wait_job(c, job["id"], as_json)
    _show(job, as_json, _job_result)
    _exit_for(job["status"])


def _job_result(j: dict[str, Any]) -> str:
    out = j.get("output") or {}
    text = out.get("text") if isinstance(out, dict) else None
    return _job_line(j) + (f"\n{text}" if text else (f"\n{json.dumps(out)}" if out else ""))


def _wait_job(c: Client, job_id: str, quiet: bool) -> dict[str, Any]:
    return _progress(job_id, lambda: c.get(f"/jobs/{job_id}", wait=10),
                     lambda j: (j.get("progress") or {}).get("fraction"), lambda j: j["status"] in FINAL, quiet)


@jobs.command("get")
@click.argument("job_id")
@conn_options
def jobs_get(job_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """One job: status, output, usage, error."""
    _show(Client(url, key).get(f"/jobs/{job_id}"), as_json, _job_result)


@jobs.command("list")
@click.option("--status", default=None, help="queued, running, succeeded, failed, cancelled, cancelling")
@click.option("--kind", default=None, help="only this kind")
@click.option("--model", default=None, help="only this model")
@click.option("--batch", "batch_id", default=None, help="the chunks of this batch")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many, newest first")
@conn_options
def jobs_list(status: str | None, kind: str | None, model: str | None, batch_id: str | None, limit: int,
              url: str | None, key: str | None, as_json: bool) -> None:
    """Your jobs, newest first (pages followed up to --limit)."""
    rows = _list(Client(url, key), "/jobs", limit, {"status": status, "kind": kind, "model": model,
                                                      "batch_id": batch_id})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for j in rows:
        click.echo(_job_line(j))


@jobs.command("wait")
@click.argument("job_id")
@conn_options
def jobs_wait(job_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Wait for a job to end (progress bar on stderr); exit 1 unless it succeeded."""
    job = _wait_job(Client(url, key), job_id, as_json)
    _show(job, as_json, _job_result)
    _exit_for(job["status"])


@jobs.command("cancel")
@click.argument("job_id")
@conn_options
def jobs_cancel(job_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Cancel a queued or running job."""
    _show(Client(url, key).request("POST", f"/jobs/{job_id}/cancel"), as_json, _job_line)


@jobs.command("events")
@click.argument("job_id")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True, help="most events shown")
@conn_options
def jobs_events(job_id: str, limit: int, url: str | None, key: str | None, as_json: bool) -> None:
    """A job's timeline, oldest first."""
    rows = _list(Client(url, key), f"/jobs/{job_id}/events", limit, {"order": "asc"})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for e in rows:
        click.echo(f"{e['created_at']}\t{e['type']}\t{e.get('message') or ''}")


# ---- files -----------------------------------------------------------------------------------------------


@click.group()
def files() -> None:
    """Files: upload, list, get, download, delete."""


def _file_line(f: dict[str, Any]) -> str:
    return f"{f['id']}\t{f['purpose']}\t{f['bytes']}\t{f.get('filename', '')}\t{f['created_at']}"


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--purpose", type=click.Choice(["batch", "fine-tune"]), required=True,
              help="batch (JSONL documents) or fine-tune (JSONL examples)")
@conn_options
def files_upload(path: str, purpose: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Upload PATH (streamed from disk); prints the file id."""
    _show(Client(url, key).upload(path, purpose), as_json, lambda f: f["id"])


@files.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many, newest first")
@conn_options
def files_list(limit: int, url: str | None, key: str | None, as_json: bool) -> None:
    """Your files, newest first."""
    rows = _list(Client(url, key), "/files", limit, {})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for f in rows:
        click.echo(_file_line(f))


@files.command("get")
@click.argument("file_id")
@conn_options
def files_get(file_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """One file's metadata."""
    _show(Client(url, key).get(f"/files/{file_id}"), as_json, _file_line)


@files.command("download")
@click.argument("file_id")
@click.option("--output", "-o", "dest", default=None, help="where to write it (default: its id, or - for stdout)")
@conn_options
def files_download(file_id: str, dest: str | None, url: str | None, key: str | None, as_json: bool) -> None:
    """Download a file's content."""
    c = Client(url, key)
    if dest == "-":
        with c.request("GET", f"/files/{file_id}/content", raw=True, timeout=600) as resp:
            while chunk := resp.read(1024 * 1024):
                sys.stdout.buffer.write(chunk)
        return
    dest = dest or file_id
    n = c.download(file_id, dest)
    _show({"id": file_id, "path": dest, "bytes": n}, as_json, lambda r: f"{r['bytes']} bytes written to {r['path']}")


@files.command("delete")
@click.argument("file_id")
@conn_options
def files_delete(file_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Delete a file."""
    r = Client(url, key).request("DELETE", f"/files/{file_id}")
    _show(r, as_json, lambda _r: f"deleted {file_id}")


# ---- batches ---------------------------------------------------------------------------------------------


@click.group()
def batches() -> None:
    """Batches of documents: create, get, list, wait, cancel, download."""


def _batch_line(b: dict[str, Any]) -> str:
    c = b.get("request_counts") or {}
    return (f"{b['id']}\t{b['status']}\t{c.get('completed', 0)}+{c.get('failed', 0)}/{c.get('total', 0)}\t"
            f"{b.get('model') or '-'}\t{b['created_at']}")


@batches.command("create")
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--input-file", "input_file", default=None, help="an uploaded file's id (instead of PATH)")
@click.option("--task", "task_name", default="summarize", show_default=True,
              type=click.Choice(["summarize", "generate", "classify", "extract", "embed"]),
              help="what to do per document")
@click.option("--model", default=None, help="registry name (default smollm2-135m-instruct; all-minilm-l6-v2 for embed)")
@click.option("--template", default=None, help="generate/summarize: prompt template with {text} and other fields")
@click.option("--labels", default=None, help="classify: comma-separated labels")
@click.option("--fields", default=None, help="extract: comma-separated field names")
@click.option("--params", "params_json", default=None, help="params as JSON, e.g. '{\"max_new_tokens\": 64}'")
@click.option("--wait", is_flag=True, help="wait with a progress bar; exit 1 unless it succeeded")
@conn_options
def batches_create(path: str | None, input_file: str | None, task_name: str, model: str | None,
                   template: str | None, labels: str | None, fields: str | None, params_json: str | None, wait: bool,
                   url: str | None, key: str | None, as_json: bool) -> None:
    """Create a batch from PATH (JSONL {"custom_id", "text"} lines, uploaded first) or --input-file."""
    if bool(path) == bool(input_file):
        raise click.UsageError("give PATH or --input-file (one of them)")
    c = Client(url, key)
    file_id = input_file or c.upload(str(path), "batch")["id"]
    body: dict[str, Any] = {"input_file_id": file_id, "task": batch_task(task_name, template, labels, fields),
                            "model": model or ("all-minilm-l6-v2" if task_name == "embed" else "smollm2-135m-instruct")}
    params = _json_arg(params_json, "--params")
    if params:
        body["params"] = params
    b = c.request("POST", "/batches", body)
    if wait:
        b = _wait_batch(c, b["id"], as_json)
    _show(b, as_json, _batch_line if wait else (lambda x: x["id"]))
    if wait:
        _exit_for(b["status"])


def _wait_batch(c: Client, batch_id: str, quiet: bool) -> dict[str, Any]:
    return _progress(batch_id, lambda: c.get(f"/batches/{batch_id}"),
                     lambda b: (b.get("progress") or {}).get("fraction"), lambda b: b["status"] in FINAL, quiet)


@batches.command("get")
@click.argument("batch_id")
@conn_options
def batches_get(batch_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """One batch: status, counts, files."""
    _show(Client(url, key).get(f"/batches/{batch_id}"), as_json, _batch_line)


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many, newest first")
@conn_options
def batches_list(limit: int, url: str | None, key: str | None, as_json: bool) -> None:
    """Your batches, newest first."""
    rows = _list(Client(url, key), "/batches", limit, {})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for b in rows:
        click.echo(_batch_line(b))


@batches.command("wait")
@click.argument("batch_id")
@conn_options
def batches_wait(batch_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Wait for a batch to end, with a progress bar; exit 1 unless it succeeded."""
    b = _wait_batch(Client(url, key), batch_id, as_json)
    _show(b, as_json, _batch_line)
    _exit_for(b["status"])


@batches.command("cancel")
@click.argument("batch_id")
@conn_options
def batches_cancel(batch_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Cancel a batch: chunks not started are dropped, running ones finish."""
    _show(Client(url, key).request("POST", f"/batches/{batch_id}/cancel"), as_json, _batch_line)


@batches.command("download")
@click.argument("batch_id")
@click.option("--output", "-o", "dest", default=None, help="output path (default <batch id>_output.jsonl)")
@conn_options
def batches_download(batch_id: str, dest: str | None, url: str | None, key: str | None, as_json: bool) -> None:
    """Write a finished batch's output file (and its error file, beside it, when there is one)."""
    c = Client(url, key)
    b = c.get(f"/batches/{batch_id}")
    if not b.get("output_file_id") and not b.get("error_file_id"):
        raise click.ClickException(f"{batch_id} is {b['status']}: no output yet")
    written = {}
    out = dest or f"{batch_id}_output.jsonl"
    if b.get("output_file_id"):
        c.download(b["output_file_id"], out)
        written["output"] = out
    if b.get("error_file_id"):
        err = out.removesuffix(".jsonl") + "_errors.jsonl"
        c.download(b["error_file_id"], err)
        written["errors"] = err
    _show(written, as_json, lambda w: "\n".join(f"{k} written to {v}" for k, v in w.items()))


# ---- fine-tunes --------------------------------------------------------------------------------------------


@click.group()
def finetunes() -> None:
    """Fine-tuning (LoRA) jobs: create, get, list, wait, cancel, events, checkpoints."""


@finetunes.command("create")
@click.argument("training_file")
@click.option("--model", default="smollm2-135m-instruct", show_default=True, help="the base model")
@click.option("--validation-file", default=None, help="a file id for validation loss")
@click.option("--epochs", "n_epochs", type=int, default=None, help="passes over the training data")
@click.option("--batch-size", type=int, default=None, help="examples per step")
@click.option("--learning-rate", type=float, default=None, help="peak learning rate")
@click.option("--suffix", default=None, help="goes into the new model's name")
@click.option("--params", "params_json", default=None, help="more params as JSON (lora, max_seq_len, …)")
@click.option("--gpu", default=None, help="GPU type, or any (default: the model's default)")
@click.option("--wait", is_flag=True, help="wait with a progress bar; exit 1 unless it succeeded")
@conn_options
def finetunes_create(training_file: str, model: str, validation_file: str | None, n_epochs: int | None,
                     batch_size: int | None, learning_rate: float | None, suffix: str | None,
                     params_json: str | None, gpu: str | None, wait: bool, url: str | None, key: str | None,
                     as_json: bool) -> None:
    """Start a LoRA fine-tune of --model on TRAINING_FILE (a file id, or a local JSONL path uploaded first)."""
    c = Client(url, key)
    if Path(training_file).is_file():
        training_file = c.upload(training_file, "fine-tune")["id"]
    params = dict(_json_arg(params_json, "--params") or {})
    for k, v in (("n_epochs", n_epochs), ("batch_size", batch_size), ("learning_rate", learning_rate),
                 ("suffix", suffix)):
        if v is not None:
            params[k] = v
    inp = {"training_file": training_file}
    if validation_file:
        inp["validation_file"] = validation_file
    body: dict[str, Any] = {"kind": "finetune", "model": model, "input": inp, "params": params}
    if gpu:
        body["gpu"] = gpu
    job = c.request("POST", "/jobs", body)
    if wait:
        job = _wait_job(c, job["id"], as_json)
    _show(job, as_json, _job_result if wait else (lambda j: j["id"]))
    if wait:
        _exit_for(job["status"])


@finetunes.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many, newest first")
@conn_options
def finetunes_list(limit: int, url: str | None, key: str | None, as_json: bool) -> None:
    """Your fine-tuning jobs, newest first."""
    rows = _list(Client(url, key), "/jobs", limit, {"kind": "finetune"})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for j in rows:
        click.echo(_job_line(j) + (f"\t{(j.get('output') or {}).get('model', '')}" if j.get("output") else ""))


@finetunes.command("checkpoints")
@click.argument("job_id")
@conn_options
def finetunes_checkpoints(job_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """A fine-tune's checkpoints."""
    rows = Client(url, key).get(f"/jobs/{job_id}/checkpoints")["data"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for ck in rows:
        click.echo(f"{ck['id']}\tstep {ck['step']}/{ck.get('total_steps')}\tepoch {ck.get('epoch')}\t"
                   f"{ck.get('reason')}\t{json.dumps(ck.get('metrics') or {})}")


finetunes.add_command(jobs_get, "get")
finetunes.add_command(jobs_wait, "wait")
finetunes.add_command(jobs_cancel, "cancel")
finetunes.add_command(jobs_events, "events")

GROUPS = (jobs, files, batches, finetunes)


SUMMARIZE = "Summarize:\n{text}\nSummary:"


def batch_task(task: str, template: str | None, labels: str | None, fields: str | None) -> dict[str, Any]:
    """The `task` object of a batch from the command line's --task and its options."""

    def split(v: str | None, opt: str) -> list[str]:
        items = [x.strip() for x in (v or "").split(",") if x.strip()]
        if not items:
            raise click.UsageError(f"--task {task} needs {opt} (comma-separated)")
        return items

    if task == "summarize":
        return {"type": "generate", "template": template or SUMMARIZE}
    if task == "generate":
        return {"type": "generate", "template": template or "{text}"}
    if task == "classify":
        return {"type": "classify", "labels": split(labels, "--labels")}
    if task == "extract":
        return {"type": "extract", "fields": split(fields, "--fields")}
    return {"type": "embed"}
