"""A RabbitMQ cluster of three nodes on loopback ports, run with Debian's ``rabbitmq-server`` by the test
that needs it (``tests/chaos/test_cluster.py``), and thrown away afterwards.

Each node has its own name (``paw<run>n<i>@localhost``), AMQP and distribution ports and data and log
directories, all under one temporary directory (``paw-cluster-*``) that is also the nodes' and
``rabbitmqctl``'s HOME, holding the Erlang cookie they share. The nodes read none of the machine's
RabbitMQ configuration (``/etc/rabbitmq``: its node, ``rabbit@localhost`` on 5672, runs beside them
untouched; it has another cookie, so nothing here could even talk to it), and load no plugin (no
management listener to clash over). Every ``rabbitmqctl`` names its node with ``-n``.

Nodes 2 and 3 join node 1, one after the other, with ``rabbitmqctl stop_app / join_cluster / start_app``. :meth:`Cluster.kill`
sends SIGKILL to a node's Erlang VM (``beam.smp``); :meth:`Cluster.restart` starts it again on its
data, and it rejoins. :meth:`Cluster.stop` kills every node and removes the directory;
:func:`kill_leftovers` kills nodes an earlier run left behind (a test run killed itself), recognised by
the directory in their command line, never any other Erlang VM. ``KEEP_PAW_CLUSTER=1`` keeps the
directory (the nodes' logs) after the test; the nodes are killed regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers import eventually, free_port, service_answers

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
DIR_PREFIX = "paw-cluster-"
SIZE = 3


def unavailable() -> str | None:
    """Why a cluster cannot run here, or None."""
    if not SERVER.exists() or not CTL.exists():
        return f"needs Debian's rabbitmq-server ({SERVER})"
    return None


@dataclasses.dataclass
class Node:
    index: int
    name: str  # paw1a2b3c4dn1@localhost
    port: int  # AMQP
    dist_port: int  # Erlang distribution
    home: Path  # the cluster's directory
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def dir(self) -> Path:
        return self.home / f"n{self.index}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "beam.pid"

    def env(self) -> dict[str, str]:
        home = str(self.home)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": home,  # the cookie: $HOME/.erlang.cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # not the machine's /etc/rabbitmq: its env file names its node, its config its 5672 listener
            "RABBITMQ_CONF_ENV_FILE": f"{home}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{home}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{home}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{home}/enabled_plugins",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Erlang distribution on loopback only
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }


def _beam_pid(node: Node) -> int | None:
    try:
        return int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_leftovers() -> int:
    """SIGKILLs the Erlang VMs of clusters that earlier runs left behind (a run killed before its
    teardown): a ``paw-cluster-*`` directory whose owning process is gone, and every VM whose HOME (in
    its command line) is that directory; removes the directories. A cluster another test run is
    using right now is left alone. Returns how many VMs it killed."""
    stale = []
    for home in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((home / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None or not _alive(owner):
            stale.append(home)
    killed = 0
    for entry in Path("/proc").iterdir() if stale else ():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "-home" in argv and any(argv[argv.index("-home") + 1 :][:1] == [str(h)] for h in stale):
            _kill(int(entry.name))
            killed += 1
    for home in stale:
        shutil.rmtree(home, ignore_errors=True)
    return killed


class Cluster:
    def __init__(self, size: int = SIZE) -> None:
        run = uuid.uuid4().hex[:8]
        self.home = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.nodes = [
            Node(i, f"paw{run}n{i}@localhost", free_port(), free_port(), self.home)
            for i in range(1, size + 1)
        ]
        (self.home / "owner.pid").write_text(str(os.getpid()))
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")
        (self.home / "rabbitmq.conf").write_text("# the listener comes from RABBITMQ_NODE_PORT\n")

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def amqp_url(self) -> str:
        """AMQP_URL naming every node, node 1 first."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def ctl(self, node: Node, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> <args>``; its output. Raises on a non-zero exit."""
        proc = await asyncio.create_subprocess_exec(
            str(CTL),
            "-n",
            node.name,
            *args,
            env=node.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {out.decode(errors='replace')}")
        return out.decode(errors="replace")

    async def _launch(self, node: Node) -> None:
        node.dir.mkdir(exist_ok=True)
        node.pid_file.unlink(missing_ok=True)
        with (node.dir / "server.out").open("ab") as out:
            node.proc = await asyncio.create_subprocess_exec(
                str(SERVER),
                env=node.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=node.dir,  # whatever a node writes outside its directories stays in the cluster's
                start_new_session=True,  # its own process group: Ctrl-C on pytest does not reach it
            )

    async def _answering(self, node: Node, timeout: float = 60) -> None:
        async def up() -> bool:
            assert node.proc is not None
            if node.proc.returncode is not None:
                raise AssertionError(f"{node.name} exited: {self.tail(node)}")
            return await asyncio.to_thread(service_answers, node.url, node.port)

        await eventually(up, timeout=timeout, interval=0.1)

    def tail(self, node: Node) -> str:
        try:
            return (node.dir / "server.out").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no output)"

    async def start(self) -> None:
        """Starts every node, then joins nodes 2.. to node 1; returns once all run as one cluster."""
        await asyncio.gather(*(self._launch(n) for n in self.nodes))
        await asyncio.gather(*(self._answering(n) for n in self.nodes))
        first = self.nodes[0]

        async def join(node: Node) -> None:
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", first.name)
            await self.ctl(node, "start_app")

        # One at a time: two nodes joining at once race on node 1's Mnesia schema change and the
        # loser's start_app fails ({badmatch, {error, {normal, {mnesia_app, start, …}}}}, seen in CI).
        for node in self.nodes[1:]:
            await join(node)
        running = await self.running_nodes(first)
        assert running == {n.name for n in self.nodes}, running

    async def running_nodes(self, via: Node) -> set[str]:
        out = await self.ctl(via, "eval", "rabbit_nodes:all_running().")
        return {name.strip(" '[]\n") for name in out.split(",") if name.strip(" '[]\n")}

    async def kill(self, node: Node) -> None:
        """SIGKILL on the node's Erlang VM; returns once it is gone."""
        pid = _beam_pid(node)
        assert pid is not None, f"no pid file for {node.name}"
        _kill(pid)
        assert node.proc is not None
        await asyncio.wait_for(node.proc.wait(), 30)  # the wrapper script ends with the VM

    async def restart(self, node: Node) -> None:
        """Starts a killed node again on its own data; returns once it answers AMQP and runs in the
        cluster again."""
        await self._launch(node)
        await self._answering(node)
        await self.ctl(node, "await_startup")

    async def queues(self, via: Node, *fields: str) -> list[list[str]]:
        """``rabbitmqctl list_queues name <fields>``, one row per queue."""
        out = await self.ctl(via, "list_queues", "-q", "--no-table-headers", "name", *fields)
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    async def stop(self) -> None:
        """Kills every node (there is nothing to keep) and removes the cluster's directory."""
        for node in self.nodes:
            pid = _beam_pid(node)
            if pid is not None:
                _kill(pid)
        for node in self.nodes:
            if node.proc is None:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.proc.wait(), 5)  # the wrapper script ends with its VM
            if node.proc.returncode is None:  # killed before the VM wrote its pid file
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                await asyncio.wait_for(node.proc.wait(), 10)
        if not os.environ.get("KEEP_PAW_CLUSTER"):
            shutil.rmtree(self.home, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_cluster(size: int = SIZE) -> AsyncIterator[Cluster]:
    """A started cluster; stopped and removed afterwards, whatever happened."""
    kill_leftovers()
    cluster = Cluster(size)
    started = time.monotonic()
    try:
        await cluster.start()
        print(f"cluster of {size} started in {time.monotonic() - started:.1f}s")
        yield cluster
    finally:
        await cluster.stop()
