"""What both benchmarks share: child processes and their CPU/RSS from /proc, the machine, the broker's
global counters, a scratch database, percentiles, a plain table, and the JSON result file.

Linux only (it reads /proc), like the machines it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
OWN_VARS = ("PAW_", "PLAID_", "ATOMIC_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**values: str) -> dict[str, str]:
    """The environment for a ``paw`` child: ours, without any project variable from the shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(OWN_VARS) and k not in ("DATABASE_URL", "AMQP_URL")
    }
    env["PAW_LOG_FORMAT"] = "json"
    env.update(values)
    return env


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), in MB."""
    return round(status_kb(pid, "VmHWM") / 1024, 1)


def pids_named(*names: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    out.append(int(entry.name))
    return out


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a supervisor's children)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


@dataclass
class CpuMeter:
    """CPU seconds spent by groups of processes (and the whole machine) between start() and stop().

    A group is a list of pids, or a function listing them at each reading (for processes that come
    and go, like Postgres backends: one that starts in between counts from zero; one that exits in
    between is missed)."""

    groups: Mapping[str, list[int] | Callable[[], list[int]]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        return {
            g: {p: cpu_seconds(p) for p in (pids() if callable(pids) else pids)}
            for g, pids in self.groups.items()
        }

    def start(self) -> None:
        self._start, self._machine, self._t0 = self._read(), machine_busy(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU used per group, as a percentage of one core, plus the whole machine's busy share."""
        wall = time.monotonic() - self._t0
        now, (busy, total) = self._read(), machine_busy()
        out = {
            g: round(100 * sum(v - self._start[g].get(p, 0.0) for p, v in now[g].items()) / wall, 1)
            for g in self.groups
        }
        out["machine_busy_pct_all_cores"] = round(
            100 * (busy - self._machine[0]) / max(total - self._machine[1], 1), 1
        )
        return out


# -- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# -- RabbitMQ ------------------------------------------------------------------------------------

_COUNTERS_EXPR = (
    "M = rabbit_global_counters:overview(), P = maps:get([{protocol,amqp091}], M), "
    "Q = maps:get([{protocol,amqp091},{queue_type,rabbit_quorum_queue}], M), "
    "C = maps:get([{protocol,amqp091},{queue_type,rabbit_classic_queue}], M), "
    "[maps:get(messages_received_total, P), "
    "maps:get(messages_delivered_total, Q) + maps:get(messages_delivered_total, C), "
    "maps:get(messages_acknowledged_total, Q) + maps:get(messages_acknowledged_total, C)]."
)


async def rabbit_counters() -> dict[str, int] | None:
    """The broker's global counters (published, delivered, acked): for every client of the broker,
    so other users of it add noise. ``None`` when rabbitmqctl can't be run here."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "eval",
            _COUNTERS_EXPR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except (OSError, TimeoutError):
        return None
    numbers = re.findall(r"\d+", out.decode())
    if proc.returncode != 0 or len(numbers) != 3:
        return None
    return dict(zip(("published", "delivered", "acked"), map(int, numbers), strict=True))


def counters_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in before}


# -- Postgres ------------------------------------------------------------------------------------


def with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def create_database(admin_dsn: str, name: str) -> str:
    """A fresh, migrated database; returns its DSN."""
    from worker.migrate import migrate

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_db(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# -- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A ``paw`` subcommand (or any module) running in its own process, logging to a file."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]
    admin_port: int = 0  # where its /metrics answers, when the bench chose the port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_events(self) -> Iterator[dict[str, Any]]:
        if not self.log_file.closed:
            self.log_file.flush()
        with self.log_path.open("rb") as f:
            for line in f:
                if line.startswith(b"{"):
                    with contextlib.suppress(ValueError):
                        yield json.loads(line)

    def count_events(self, *names: str) -> dict[str, int]:
        counts = dict.fromkeys(names, 0)
        for e in self.log_events():
            if e.get("event") in counts:
                counts[e["event"]] += 1
        return counts

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def _open_log(log_dir: Path, name: str) -> tuple[Path, IO[bytes]]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    return log_path, log_path.open("wb")


async def spawn(name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Child:
    log_path, log_file = _open_log(log_dir, name)
    proc = await asyncio.create_subprocess_exec(
        *args, env=dict(env), stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL, cwd=ROOT
    )
    return Child(name, proc, log_path, log_file)


async def spawn_paw(name: str, command: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Child:
    # One process per `paw worker|receiver` unless the caller says otherwise: the benchmarks count
    # and place processes themselves.
    env = {"PAW_PROCESSES": "1", **env}
    return await spawn(name, [sys.executable, "-m", "worker.cli", *command], env, log_dir)


async def wait_until(check: Any, what: str, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Polls the coroutine function ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


async def wait_http_ok(url: str, child: Child | None = None, timeout: float = 30.0) -> None:
    async def ok() -> bool:
        if child is not None and child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log_path}")
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ok, f"GET {url}", timeout)


async def wait_logged(child: Child, event: str, timeout: float = 30.0) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        if child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log_path}")
        return next((e for e in child.log_events() if e.get("event") == event), None)

    result: dict[str, Any] = await wait_until(found, f"{child.name} logs {event}", timeout, 0.1)
    return result


# -- numbers and output --------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


async def delete_topology(amqp_url: str, exchange: str, prefix: str) -> None:
    """Deletes a run's exchange and queues, as the product names them."""
    import aio_pika

    from worker.bus.topology import Topology, undeclare
    from worker.settings import Settings

    conn = await aio_pika.connect(amqp_url)
    try:
        topo = Topology.from_settings(Settings(exchange=exchange, queue_prefix=prefix))
        await undeclare(await conn.channel(), topo)
    finally:
        await conn.close()
