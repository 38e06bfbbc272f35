"""docker-compose.yml and the Dockerfile, checked on paper: no Docker engine is needed to run these.

Each check is something `docker compose up` would get wrong at run time: a command the `llmos` CLI does not
have, a health check that cannot pass in the image, a start order that serves before migrating, a GPU worker
without a GPU, an image that does not install the package its commands come from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from app.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# service -> (the llmos subcommand path, parameters it must be given)
LLMOS_SERVICES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "migrate": (["db", "upgrade"], {}),
    "api": (["api"], {"host": "0.0.0.0", "port": 8000}),
    "worker-cpu": (["worker"], {"gpu_type": "cpu"}),
    "worker-gpu": (["worker"], {"gpu_type": "h100"}),
    "scheduler": (["scheduler"], {}),
}
COMPOSE_ENV = {"POSTGRES_PASSWORD": "s3cret-from-dotenv",
               "LLMOS_SECRET_KEY": "q+/3Qqz5lYcS6pKdBfuZNqSX2X+TtkfTQgNFDm/LJdU="}  # as `openssl rand -base64 32`
CADDYFILE = ROOT / "deploy" / "Caddyfile"


# ---- helpers -------------------------------------------------------------------------------------------


_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (the forms docker-compose.yml uses)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        have = env.get(name)
        missing = have is None or (have == "" and op is not None and op.startswith(":"))
        if not missing:
            return have
        if op is not None and op.endswith("?"):
            raise ValueError(f"{name}: {arg}")
        return arg if op is not None else ""

    return _VAR.sub(one, value)


def as_argv(command: str | list[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return [interpolate(str(a), COMPOSE_ENV) for a in argv]


def resolve(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Parse argv as the `llmos` command would, without running it. Returns (subcommand path, parameters);
    fails on an unknown subcommand, an unknown option or a bad value."""
    assert argv and argv[0] == "llmos", f"not an llmos command: {argv}"
    cmd: click.Command = main
    parent: click.Context | None = None
    path: list[str] = []
    args = argv[1:]
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=path[-1] if path else "llmos", parent=parent)
        name = args[0] if args else ""
        sub = cmd.get_command(ctx, name)
        assert sub is not None, (
            f"{argv}: 'llmos {' '.join(path)}' has no subcommand {name!r}; it has {cmd.list_commands(ctx)}")
        cmd, parent, path, args = sub, ctx, [*path, name], args[1:]
    try:
        ctx = cmd.make_context(path[-1], list(args), parent=parent)
    except click.ClickException as exc:
        pytest.fail(f"{argv}: {exc.format_message()}")
    return path, ctx.params


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v), COMPOSE_ENV) for k, v in env.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck"
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            instruction, _, rest = pending.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
            pending = ""
    return out


def dockerfile_args() -> dict[str, str]:
    return {k: v.strip('"') for k, _, v in (a.partition("=") for i, a in dockerfile_instructions() if i == "ARG")}


# ---- compose -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = {"postgres", "redis", *LLMOS_SERVICES} - set(services)
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


@pytest.mark.parametrize("name", LLMOS_SERVICES)
def test_command_is_a_real_llmos_subcommand(services: dict[str, dict[str, Any]], name: str) -> None:
    path, params = resolve(as_argv(services[name]["command"]))
    want_path, want_params = LLMOS_SERVICES[name]
    assert path == want_path
    assert {k: params[k] for k in want_params} == want_params
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_resolve_refuses_what_llmos_does_not_have() -> None:
    """The command check above can fail: unknown subcommands and options are caught."""
    with pytest.raises(AssertionError, match="no subcommand 'serve'"):
        resolve(["llmos", "serve"])
    with pytest.raises(AssertionError, match="no subcommand 'migrate'"):
        resolve(["llmos", "db", "migrate"])
    with pytest.raises(pytest.fail.Exception, match="--gpu"):
        resolve(["llmos", "worker", "--gpu", "h100"])
    with pytest.raises(pytest.fail.Exception, match="eighty"):
        resolve(["llmos", "api", "--port", "eighty"])


@pytest.mark.parametrize("name", LLMOS_SERVICES)
def test_services_share_one_image_and_production_settings(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = services[name]
    assert service.get("image") == services["api"].get("image"), "one image for api, workers and migrate"
    build = service.get("build")
    assert build and (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()

    env = environment(service)
    assert env["LLMOS_ENV"] == "production"
    assert env["LLMOS_BROKER_URL"] == "redis://redis:6379/0"
    url = make_url(env["LLMOS_DATABASE_URL"])
    pg = environment(services["postgres"])
    assert (url.drivername, url.host, url.port) == ("postgresql", "postgres", 5432)
    assert (url.username, url.password, url.database) == (
        pg.get("POSTGRES_USER", "postgres"), pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])

    model_dir = env["LLMOS_MODEL_DIR"]
    volumes = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service.get("volumes", [])]
    assert any(v.split(":")[1] == model_dir for v in volumes), f"no volume at LLMOS_MODEL_DIR={model_dir}"

    # The settings the process will load from this environment validate (production refuses SQLite, etc.).
    from app.settings import load_settings

    for var in [v for v in os.environ if v.startswith("LLMOS_")]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = load_settings()
    assert settings.env == "production" and not settings.is_sqlite
    assert str(settings.model_dir) == model_dir


def test_no_default_database_password(services: dict[str, dict[str, Any]]) -> None:
    """A production stack with a password everyone knows is an error at start, not a default."""
    raw = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(services["api"]["environment"]["LLMOS_DATABASE_URL"], {})


def test_secret_key_required(services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored webhook secrets are sealed with LLMOS_SECRET_KEY: compose refuses to start without one, and the
    processes would refuse it too (production settings)."""
    for name in LLMOS_SERVICES:
        raw = services[name]["environment"]["LLMOS_SECRET_KEY"]
        with pytest.raises(ValueError, match="LLMOS_SECRET_KEY"):
            interpolate(raw, {})
    from app.settings import load_settings

    for var in [v for v in os.environ if v.startswith("LLMOS_")]:
        monkeypatch.delenv(var)
    env = environment(services["api"])
    for var, value in env.items():
        if var != "LLMOS_SECRET_KEY":
            monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match="LLMOS_SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("LLMOS_SECRET_KEY", env["LLMOS_SECRET_KEY"])
    assert load_settings().secret_key.get_secret_value() == COMPOSE_ENV["LLMOS_SECRET_KEY"]


def caddy_env(text: str, env: Mapping[str, str]) -> str:
    """Caddyfile {$VAR} and {$VAR:default}, substituted before parsing as Caddy does."""
    return re.sub(r"\{\$(\w+)(?::([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", text)


def caddy_sites(text: str) -> dict[str, list[list[str]]]:
    """The Caddyfile's site blocks: address -> directives (each a token list; sub-blocks flattened). No global
    options block, snippets or matchers are used in deploy/Caddyfile."""
    sites: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    depth = 0
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if depth == 0:
            assert tokens[-1] == "{", f"expected a site block, got {line!r}"
            current = sites.setdefault(" ".join(tokens[:-1]), [])
            depth = 1
            continue
        assert current is not None
        if tokens == ["}"]:
            depth -= 1
            continue
        if tokens[-1] == "{":
            depth += 1
            tokens = tokens[:-1]
        current.append(tokens)
    assert depth == 0, "unbalanced braces in the Caddyfile"
    return sites


def test_https_proxy_in_front_of_the_api(services: dict[str, dict[str, Any]]) -> None:
    """The stack serves HTTPS: a Caddy proxy with its internal CA by default (a real certificate by .env), the
    API's plain HTTP only on the host's loopback."""
    proxy = services.get("proxy")
    assert proxy, "docker-compose.yml has no proxy service (HTTPS)"
    assert str(proxy["image"]).split(":")[0] == "caddy"
    published = [interpolate(str(p), COMPOSE_ENV) for p in proxy.get("ports", [])]
    assert any(p.rsplit(":", 1)[-1] == "443" for p in published), published
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"

    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    assert (ROOT / mounts["/etc/caddy/Caddyfile"]).resolve() == CADDYFILE and CADDYFILE.is_file()
    assert (ROOT / mounts["/etc/caddy/certs"]).is_dir()
    assert mounts["/data"] in yaml.safe_load(COMPOSE.read_text())["volumes"], "certificates and CA must persist"

    _, api_params = resolve(as_argv(services["api"]["command"]))
    env = environment(proxy)
    sites = caddy_sites(caddy_env(CADDYFILE.read_text(), env))
    assert list(sites) == ["localhost"], sites
    [directives] = sites.values()
    assert ["tls", "internal"] in directives, "the local default: a certificate from Caddy's internal CA"
    assert ["reverse_proxy", f"api:{api_params['port']}"] in directives

    # a real certificate: a domain with ACME, or files mounted from deploy/certs/
    acme = caddy_sites(caddy_env(CADDYFILE.read_text(), {"LLMOS_SITE_ADDRESS": "llmos.example.com",
                                                         "LLMOS_TLS": "ops@example.com"}))
    assert ["tls", "ops@example.com"] in acme["llmos.example.com"]
    files = caddy_sites(caddy_env(CADDYFILE.read_text(), {
        "LLMOS_TLS": "/etc/caddy/certs/fullchain.pem /etc/caddy/certs/privkey.pem"}))
    assert ["tls", "/etc/caddy/certs/fullchain.pem", "/etc/caddy/certs/privkey.pem"] in files["localhost"]
    used = set(re.findall(r"\{\$(\w+)", CADDYFILE.read_text()))
    assert used <= set(proxy["environment"]), f"the Caddyfile reads {used}; the proxy service passes them"

    for port in services["api"].get("ports", []):
        host = interpolate(str(port), COMPOSE_ENV).rsplit(":", 2)
        assert len(host) == 3 and host[0] in ("127.0.0.1", "[::1]"), f"the API's plain HTTP is published: {port}"
    assert environment(services["api"])["LLMOS_PUBLIC_URL"].startswith("https://")


def test_health_checks(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert re.search(r"redis-cli\b.*\bping\b", healthcheck_text(services["redis"]))

    api_check = healthcheck_text(services["api"])
    assert not re.search(r"\b(curl|wget)\b", api_check), "python:3.11-slim has neither curl nor wget"
    m = re.search(r"https?://(127\.0\.0\.1|localhost):(\d+)(/\w+)", api_check)
    assert m, f"the api health check does not call the API: {api_check}"
    _, params = resolve(as_argv(services["api"]["command"]))
    assert int(m.group(2)) == params["port"]

    from app import create_app

    app = create_app({"env": "test", "data_dir": tmp_path})
    try:
        assert m.group(3) in {rule.rule for rule in app.url_map.iter_rules()}
    finally:
        app.extensions["llmos"].db.dispose()

    published = [str(p) for p in services["api"].get("ports", [])]
    assert any(interpolate(p, COMPOSE_ENV).rsplit(":", 1)[-1] == str(params["port"]) for p in published)


def test_redis_keeps_every_message(services: dict[str, dict[str, Any]]) -> None:
    argv = as_argv(services["redis"]["command"])
    pairs = set(zip(argv, argv[1:], strict=False))
    assert ("--maxmemory-policy", "noeviction") in pairs
    assert ("--appendonly", "yes") in pairs


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions, not a bare list"
        return {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}

    assert conditions("migrate").get("postgres") == "service_healthy"
    assert services["migrate"].get("restart", "no") in ("no", "on-failure"), "a one-shot must not restart"
    for name in ("api", "worker-cpu", "worker-gpu", "scheduler"):
        got = conditions(name)
        assert got.get("migrate") == "service_completed_successfully", name
        assert got.get("redis") == "service_healthy", name

    for name in services:
        for dep, condition in conditions(name).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy; it has no check"


def test_gpu_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    def devices(name: str) -> list[dict[str, Any]]:
        deploy = services[name].get("deploy") or {}
        return ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []

    gpus = [d for d in devices("worker-gpu") if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, "worker-gpu has no NVIDIA device reservation"
    assert gpus[0].get("count") or gpus[0].get("device_ids")
    assert devices("worker-cpu") == []


# ---- Dockerfile ----------------------------------------------------------------------------------------


def test_dockerfile_base_image() -> None:
    instructions = dockerfile_instructions()
    first_from = next(rest for i, rest in instructions if i == "FROM")
    image = re.sub(r"\$\{(\w+)\}", lambda m: dockerfile_args()[m.group(1)], first_from.split()[0])
    assert image == "python:3.11-slim"


def test_dockerfile_installs_the_project() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    instructions = dockerfile_instructions()

    copied: list[tuple[int, str]] = []
    for n, (instruction, rest) in enumerate(instructions):
        if instruction in ("COPY", "ADD") and "--from" not in rest:
            copied += [(n, src) for src in shlex.split(rest)[:-1] if not src.startswith("--")]
    for _, src in copied:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"
    ignored = set()
    if (ROOT / ".dockerignore").exists():
        ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & {src for _, src in copied}, ".dockerignore drops a path the Dockerfile copies"

    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied_at = {src.rstrip("/"): n for n, src in copied}
    missing = [p for p in packages if p not in copied_at]
    assert not missing, f"the image does not copy {missing}"

    installs = [n for n, (i, rest) in enumerate(instructions)
                if i == "RUN" and re.search(r"pip install [^;&|]*?\s\"?\.(\[[^\]]*\])?\"?(\s|;|$)", rest)]
    assert installs and max(installs) > max(copied_at[p] for p in packages), (
        "no `pip install .` after the code is copied")

    extras = pyproject["project"]["optional-dependencies"]
    extra = dockerfile_args()["EXTRAS"]
    assert extra in extras
    assert re.search(r"pip install [^;&|]*\.\[\$\{?EXTRAS\}?\]", " ".join(r for i, r in instructions if i == "RUN"))


def test_image_extra_has_what_workers_import(services: dict[str, dict[str, Any]]) -> None:
    """Workers run from the compose image, so the extra it is built with must bring torch."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def requirements(extra: str) -> set[str]:
        out: set[str] = set()
        for req in extras[extra]:
            m = re.fullmatch(r"llmos\[([\w,]+)\]", req)
            out |= set().union(*(requirements(e) for e in m.group(1).split(","))) if m else {req}
        return out

    extra = (services["worker-cpu"]["build"].get("args") or {}).get("EXTRAS", dockerfile_args()["EXTRAS"])
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements(extra)}
    assert {"torch", "transformers", "celery", "psycopg"} <= names, names


def test_dockerfile_default_command_and_user() -> None:
    instructions = dockerfile_instructions()
    cmd = [rest for i, rest in instructions if i == "CMD"][-1]
    path, _ = resolve(json.loads(cmd))
    assert path == ["api"]
    users = [rest for i, rest in instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image should not run as root"


# ---- monitoring profile: Flower, Prometheus, Grafana ----------------------------------------------------------

MONITORING = ("flower", "prometheus", "grafana")


def test_monitoring_services_are_in_their_profile(services: dict[str, dict[str, Any]]) -> None:
    for name in MONITORING:
        assert services[name].get("profiles") == ["monitoring"], name
    # a ${VAR:?} would stop every `docker compose up`, monitoring or not: compose interpolates all profiles
    for name in MONITORING:
        assert ":?" not in json.dumps(services[name]), name


def _entry_argv(service: dict[str, Any], env: dict[str, str]) -> list[str]:
    return [interpolate(str(a), env) for a in [*service.get("entrypoint", []), *service.get("command", [])]]


@pytest.mark.parametrize(("name", "var"), [("flower", "FLOWER_BASIC_AUTH"), ("grafana", "GF_SECURITY_ADMIN_PASSWORD")])
def test_monitoring_ui_refuses_to_start_without_a_password(services: dict[str, dict[str, Any]], name: str,
                                                           var: str, tmp_path: Path) -> None:
    """The entrypoint checks the secret; run the same shell line with and without it (run.sh/celery stubbed)."""
    import subprocess

    service = services[name]
    argv = _entry_argv(service, {})
    assert argv[:2] == ["sh", "-c"]
    script = argv[2].replace("$$", "$").replace("exec /run.sh", "exec echo started")
    rest = ["echo", "started"] if name == "flower" else []
    env_value = interpolate(str(service["environment"][var]), {})
    assert env_value == ""  # nothing in .env: empty, and refused below
    no = subprocess.run(["sh", "-c", script, "--", *rest], env={"PATH": os.environ["PATH"], var: ""},
                        capture_output=True, text=True)
    assert no.returncode == 1 and "in .env" in no.stderr
    yes = subprocess.run(["sh", "-c", script, "--", *rest], env={"PATH": os.environ["PATH"], var: "u:p"},
                         capture_output=True, text=True)
    assert yes.returncode == 0 and yes.stdout.strip() == "started"


def test_flower_sees_live_workers(services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    """Workers on Redis send event heartbeats (Flower shows them online); Flower reads the same broker."""
    from celery import Celery

    argv_seen: list[list[str]] = []
    monkeypatch.setattr(Celery, "worker_main", lambda self, argv=None: argv_seen.append(list(argv or [])))
    from workers.main import run_worker

    run_worker(gpu_type="cpu", config={"env": "test", "data_dir": tmp_path, "broker_url": "redis://redis:6379/0",
                                       "database_url": f"sqlite:///{tmp_path / 'x.db'}"})
    assert argv_seen and "--without-heartbeat" not in argv_seen[0]
    broker = environment(services["worker-cpu"])["LLMOS_BROKER_URL"]
    assert f"--broker={broker}" in _entry_argv(services["flower"], COMPOSE_ENV)


def _metric_names() -> set[str]:
    names: set[str] = set()
    for src in ("app/metrics.py", "workers/metrics.py"):
        names |= set(re.findall(r"\"(llmos_\w+)\"", (ROOT / src).read_text()))
    return names


def test_prometheus_scrapes_every_llmos_process(services: dict[str, dict[str, Any]], monkeypatch) -> None:
    prometheus = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets: dict[str, tuple[int, set[str]]] = {}
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                targets[name] = (sd["port"], job.get("metrics_path", "/metrics"))
    _, api_params = resolve(as_argv(services["api"]["command"]))
    assert targets["api"] == (api_params["port"], "/metrics")
    from app.settings import load_settings

    for var in [v for v in os.environ if v.startswith("LLMOS_")]:
        monkeypatch.delenv(var)
    for var, value in environment(services["worker-cpu"]).items():
        monkeypatch.setenv(var, value)
    settings = load_settings()
    for name in ("worker-cpu", "worker-gpu"):
        assert targets[name][0] == settings.worker_metrics_port, name
    assert targets["scheduler"][0] == settings.scheduler_metrics_port


def test_grafana_is_provisioned_with_the_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    prov = mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((prov / "dashboards" / "llmos.yml").read_text())["providers"][0]
    folder = provider["options"]["path"]
    dashboards = mounts[folder]
    dash = json.loads((dashboards / "llmos.json").read_text())
    assert dash["uid"] and dash["panels"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(folder) and (dashboards / home.removeprefix(folder + "/")).is_file()
    # every query names metrics the code exports, through the datasource provisioned above
    known = _metric_names()
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]
            used |= {re.sub(r"_(total|bucket|count|sum)$", "", m) for m in re.findall(r"llmos_\w+", target["expr"])}
    assert used and used <= known, used - known
    wanted = {"llmos_http_requests", "llmos_http_request_duration_seconds", "llmos_jobs", "llmos_queue_depth",
              "llmos_queue_oldest_age_seconds", "llmos_job_queue_wait_seconds", "llmos_job_run_seconds",
              "llmos_tokens_generated", "llmos_batch_documents", "llmos_model_cache_hits",
              "llmos_model_cache_misses", "llmos_model_cache_loads", "llmos_model_cache_bytes",
              "llmos_gpu_memory_bytes", "llmos_webhook_attempts"}
    assert wanted <= used, wanted - used
