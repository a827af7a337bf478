"""``paw worker|receiver --processes N``: a parent that starts N copies of the command, restarts one
that dies (with backoff), and drains them all on SIGTERM.

One Python process uses one core; the worker and the receiver are built to run as several (queues
shared through RabbitMQ, the receivers' port shared with ``SO_REUSEPORT``, the deployment-wide gauges
exported by one worker only). The parent imports nothing heavy, holds no connection, and does no
work of its own: if it is SIGKILLed its children get SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and
drain. Each child has its own admin port (probes and ``/metrics``): the base port plus 10 per child
(the worker's 9100, 9110, …, the receiver's 9101, 9111, …, so the two never collide on one host).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

PORT_STEP = 10
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child up this long has its backoff reset
STARTUP_S = 10.0  # a child whose first start fails sooner says the setup is wrong: stop, don't loop
PR_SET_PDEATHSIG = 1

# -- Pure decisions ---------------------------------------------------------------------------


def cpu_count(affinity: int, cpu_max: str | None) -> int:
    """The cores this process may use: those it is pinned to, capped by a cgroup v2 CPU quota
    (``cpu.max``: ``"max 100000"`` or ``"<quota> <period>"``), rounded up; at least 1."""
    cores = max(1, affinity)
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        with contextlib.suppress(ValueError, ZeroDivisionError):
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period or "100000"))))
    return cores


def process_count(requested: int, cores: int, pool: int) -> int:
    """``--processes``/``PAW_PROCESSES``; 0 means one per core, but no more processes than the
    Postgres pool can give 2 connections each (``PAW_DB_POOL_SIZE`` is the command's in all)."""
    return requested if requested > 0 else max(1, min(cores, pool // 2))


def pool_share(pool: int, n: int) -> int:
    """Each of ``n`` children's Postgres pool: ``PAW_DB_POOL_SIZE`` is what one command may open,
    shared among its processes (at least 2 each), so one per core on a large host does not open
    cores x the pool and meet Postgres's ``max_connections``."""
    return max(2, math.ceil(pool / n))


def child_port(base: int, index: int) -> int:
    """Child ``index``'s admin port; 0 (any free port) stays 0."""
    return base + PORT_STEP * index if base else 0


def restart_delay(failures: int) -> float:
    """Seconds before the next start after ``failures`` quick deaths in a row: 1, 2, 4 … 30."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1)))


@dataclass
class Backoff:
    failures: int = 0

    def after_exit(self, ran_s: float) -> float:
        """The delay before restarting a child that ran ``ran_s`` seconds."""
        self.failures = 1 if ran_s >= HEALTHY_AFTER_S else self.failures + 1
        return restart_delay(self.failures)


# -- The parent --------------------------------------------------------------------------------


def machine_cores() -> int:
    cpu_max = None
    with contextlib.suppress(OSError):
        with open("/sys/fs/cgroup/cpu.max") as f:
            cpu_max = f.read()
    return cpu_count(len(os.sched_getaffinity(0)), cpu_max)


def _death_signal() -> Callable[[], None]:
    """What a child runs between fork and exec: SIGTERM to it when the parent dies, and at once if
    the parent already died before it got there (prctl looked up here, before the fork)."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


async def supervise(
    n: int,
    argv_for: Callable[[int], Sequence[str]],
    stop: asyncio.Event,
    *,
    env_for: Callable[[int], dict[str, str]] | None = None,
    drain_s: float,
) -> int:
    """Runs ``paw <argv_for(i)>`` for i in 0..n-1 until ``stop``; then SIGTERMs them, waits up to
    ``drain_s`` and SIGKILLs what is left. A child that dies is started again after a backoff; one
    that exits with an error within ``STARTUP_S`` of its first start (no database, an unmigrated one,
    a wrong key; not a kill) stops them all, and its exit code is the parent's, as it would be with
    one process. Answers 0 after a stop."""
    outcome: list[int] = []
    die_with_parent = _death_signal()

    async def pause(delay: float) -> None:  # the backoff, cut short by a stop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    async def keep(index: int) -> None:
        backoff = Backoff()
        first = True
        while not stop.is_set():
            env = {**os.environ, **(env_for(index) if env_for else {})}
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "worker.cli", *argv_for(index), env=env, preexec_fn=die_with_parent
                )
            except OSError as e:  # no memory, no process slot, too many files: try again later
                delay = backoff.after_exit(0.0)
                log.error("supervisor.spawn_failed", child=index, error=str(e), restart_in_s=delay)
                await pause(delay)
                continue
            log.info("supervisor.child_started", child=index, pid=proc.pid)
            waiter = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await _drain(proc, index, drain_s)
                stopping.cancel()
                return
            stopping.cancel()
            code, ran = proc.returncode, time.monotonic() - started
            if first and code is not None and code > 0 and ran < STARTUP_S:  # it exited, not killed
                log.error("supervisor.child_failed_to_start", child=index, pid=proc.pid, exit_code=code)
                outcome.append(code)
                stop.set()
                return
            first = False
            delay = backoff.after_exit(ran)
            log.warning(
                "supervisor.child_exited",
                child=index,
                pid=proc.pid,
                exit_code=code,
                ran_s=round(ran, 1),
                restart_in_s=delay,
            )
            await pause(delay)

    log.info("supervisor.started", processes=n)
    await asyncio.gather(*(keep(i) for i in range(n)))
    log.info("supervisor.stopped", processes=n)
    return outcome[0] if outcome else 0


async def _drain(proc: asyncio.subprocess.Process, index: int, drain_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), drain_s)
    except TimeoutError:
        log.error("supervisor.child_killed", child=index, pid=proc.pid, after_s=drain_s)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
