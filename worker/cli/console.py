"""``paw console``: the on-call web console (:mod:`worker.console`), and ``paw console user`` to
write a line of its users file."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import ssl
import sys

import structlog

from worker.cli.context import Subparsers, stop_on_signals
from worker.console import auth
from worker.settings import Settings

log = structlog.get_logger(__name__)

CONSOLE_ENV = (
    "PAW_CONSOLE_AUTH, PAW_CONSOLE_USERS_FILE, PAW_CONSOLE_SESSION_SECRET, PAW_CONSOLE_TRUSTED_PROXIES, "
    "PAW_CONSOLE_PROXY_USER_HEADER, PAW_CONSOLE_TLS_CERT/KEY"
)


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "console",
        help="the on-call web console: Items, timelines, dead letters, planned replays "
        "(PAW_CONSOLE_HOST, PAW_CONSOLE_PORT; default 127.0.0.1:9102)",
        description=f"Serves the console until SIGTERM. Sign-in and roles: {CONSOLE_ENV} (README, Console).",
    )
    p.add_argument("--host", help="listen address (default PAW_CONSOLE_HOST)")
    p.add_argument("--port", type=int, help="listen port (default PAW_CONSOLE_PORT)")
    p.set_defaults(func=cmd_console)
    users = p.add_subparsers(dest="console_command")
    u = users.add_parser(
        "user", help="print a users-file line for PAW_CONSOLE_USERS_FILE (asks the password)"
    )
    u.add_argument("name")
    u.add_argument("--role", choices=[r.value for r in auth.Role], default="viewer")
    u.set_defaults(func=cmd_console_user)


async def cmd_console_user(_: Settings, args: argparse.Namespace) -> int:
    password = getpass.getpass(f"password for {args.name}: ")
    if password != getpass.getpass("again: "):
        print("paw: the passwords differ", file=sys.stderr)
        return 2
    print(auth.users_file_line(args.name, auth.Role(args.role), password))
    return 0


async def cmd_console(s: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from worker.console.app import create_app
    from worker.services import open_services

    host = args.host or s.console_host
    port = args.port or s.console_port
    try:
        security = auth.ConsoleAuth.from_env(os.environ)
    except ValueError as e:
        print(f"paw: console: {e}", file=sys.stderr)
        return 2
    refusal = auth.check_binding(security, host, security.tls)
    if refusal is not None:
        print(f"paw: console: {refusal}", file=sys.stderr)
        return 2
    tls = None
    if security.tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(os.environ["PAW_CONSOLE_TLS_CERT"], os.environ["PAW_CONSOLE_TLS_KEY"])
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with open_services(s, "paw-console", pool_size=5) as svc:
        runner = web.AppRunner(create_app(s, svc, security), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        scheme = "https" if tls else "http"
        log.info("console.started", url=f"{scheme}://{host}:{port}/console/", auth=security.mode)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    return 0
