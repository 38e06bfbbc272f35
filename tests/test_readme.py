"""`llmos dev --demo` as a newcomer sees it, the README's shell examples run as written against it, and Ctrl-C
stopping everything it started within 5 s."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL_DIR, ROOT, free_port, worker_env

MARK = "<!-- runs-against-llmos-dev -->"


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(re.escape(MARK) + r"\s*```sh\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "the README lost its runnable examples"
    return blocks


def processes_with(data_dir: Path) -> list[int]:
    """Live processes whose environment names this data directory (what `llmos dev` started)."""
    needle = f"LLMOS_DATA_DIR={data_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0") and b"Z" not in (proc / "stat").read_bytes(
            ).split(b") ")[1][:1]:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not (MODEL_DIR / "smollm2-135m-instruct" / "config.json").exists() and
                    os.environ.get("LLMOS_REQUIRE_SERVICES") != "1", reason="SmolLM2 not converted yet")
def test_dev_demo_readme_examples_and_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = worker_env("", "", data)
    for k in ("LLMOS_DATABASE_URL", "LLMOS_BROKER_URL", "LLMOS_ENV"):
        env.pop(k)
    env.update(LLMOS_WORKER_METRICS_PORT="0", LLMOS_SCHEDULER_METRICS_PORT="0")
    port = free_port()
    err_path, out_path = tmp_path / "dev.err", tmp_path / "dev.out"
    with open(err_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--demo", "--port", str(port)], env=env,
                                cwd=tmp_path, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 240
        while not out_path.read_text().strip().endswith("}"):
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.5)
        result = json.loads(out_path.read_text())
        assert result["status"] == "succeeded" and "Paris" in result["output"]["text"], result
        lines = err_path.read_text().splitlines()
        # one line per stage; no warnings, banners or progress bars
        assert lines and all(line.startswith("llmos dev: ") for line in lines), lines
        assert any(str(data) in line for line in lines)
        assert not any("converts the model" in line for line in lines)  # converted already
        assert not (tmp_path / ".llmos").exists()  # nothing left in the working directory
        key = (data / "demo.key").read_text().strip()
        assert f"(owner 'demo', kept in {data / 'demo.key'}): {key}" in "\n".join(lines)
        from app.cli import _demo_key
        from app.settings import load_settings

        assert _demo_key(f"http://127.0.0.1:{port}", load_settings({"data_dir": data})) == key  # reused

        # the README's examples, as written (only the port differs)
        script = "\n".join(readme_blocks()).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                             env=dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}"),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (script, run.stdout[-2000:], run.stderr[-2000:])
        assert run.stdout.count("Paris") >= 2, run.stdout[-3000:]  # from curl's long-poll and `llmos jobs submit`
        assert "queued" in run.stdout and "succeeded" in run.stdout

        # Ctrl-C: everything stops within 5 s
        assert processes_with(data)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        while processes_with(data) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert not processes_with(data), processes_with(data)
        assert took < 5, took
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_with(data):
            os.kill(pid, signal.SIGKILL)
