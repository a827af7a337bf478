"""The one place that starts paw's HTTP servers: the receiver, the admin servers, and the tests' copies
of them. Each gets paw's request limits, passed where aiohttp applies them.

Where that is: the keyword arguments of ``web.AppRunner`` go to ``Application._make_handler``, then to
``web.Server``, which hands them to the ``RequestHandler`` it makes for every connection; its parser
enforces them. (``handler_args=`` is ``web.Application``'s keyword. Given to the runner, it reaches
``RequestHandler`` as an unknown keyword; ``Server`` then falls back, on every connection, to a
handler with aiohttp's defaults, logging "Failed to create request handler with custom kwargs" on
``aiohttp.server``.) To make such a mistake fail once at start-up rather than on every connection,
:func:`start_http` builds one handler the way the server will and checks the limits it got.

The header count is enforced from aiohttp 3.13.4 on (``max_headers`` was accepted and ignored
before), hence ``aiohttp>=3.13.4`` in pyproject.toml.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """HTTP/1 request head limits; beyond any of them aiohttp answers 400 before a handler runs."""

    max_line_size: int = 8190  # the request line, bytes
    max_field_size: int = 8190  # one header line (name, colon, value), bytes
    max_headers: int = 100  # headers in one request


HTTP_LIMITS = HttpLimits()


class HttpLimitsNotApplied(RuntimeError):
    """aiohttp would not apply paw's limits (or its quiet access log) to a connection."""


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float,
    reuse_port: bool = False,
    limits: HttpLimits = HTTP_LIMITS,
) -> tuple[web.AppRunner, str]:
    """Serves ``app`` on ``host:port`` (0: any free port) with ``limits`` and no access log.

    Returns the runner (``cleanup()`` stops accepting, then gives requests in flight up to
    ``shutdown_timeout`` seconds) and the URL it listens on.
    """
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=shutdown_timeout, **dataclasses.asdict(limits)
    )
    await runner.setup()
    try:
        _check_applied(runner, limits)
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[-1][1])
    return runner, f"http://{host}:{bound}"


def _check_applied(runner: web.AppRunner, limits: HttpLimits) -> None:
    """One connection handler, built as the server builds one per connection, has ``limits``."""
    server = runner.server
    assert server is not None  # after setup()
    handler = server()  # no transport: never connected, nothing to close
    got = HttpLimits(
        max_line_size=handler.max_line_size,
        max_field_size=handler.max_field_size,
        max_headers=handler.max_headers,
    )
    if got != limits or handler.access_logger is not None:
        raise HttpLimitsNotApplied(
            f"aiohttp would serve with {got} (access log {'on' if handler.access_logger else 'off'}), "
            f"not {limits} and no access log: check the keyword arguments of web.AppRunner"
        )
