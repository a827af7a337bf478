"""Delivering outcome events to the upstream apps' callback URLs: the I/O half.

The consumer of ``<prefix>.callbacks`` (bound to ``item.state.#``) calls :class:`CallbackHandler`
per event, like any handler: it returns once the upstream app answered 2xx (the message is acked),
or raises, and :class:`worker.bus.consumer.Consumer` settles it: :class:`CallbackFailed` (non-2xx,
3xx included since redirects are never followed; a timeout; no connection) goes through the delay
queues until ``PAW_RETRY_BUDGET``, then to the dead queue with ``x-paw-error-code``
``CALLBACK_HTTP_<status>``, ``CALLBACK_TIMEOUT`` or ``CALLBACK_UNREACHABLE``; a refused target
(:class:`CallbackRefused`) or a malformed event is dead-lettered at once. ``paw dlq replay`` puts
them back on ``<prefix>.callbacks`` itself (not the exchange, whose other subscribers had theirs).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from worker.callbacks.payload import envelope, parse_event, signed_headers
from worker.callbacks.targets import AMQP_REF, Callback, address_refusal, url_refusal
from worker.errors import CallbackFailed, CallbackRefused, Poison
from worker.items.store import Store

log = structlog.get_logger(__name__)

USER_AGENT = "paw-callbacks/1"


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses the host if any address it resolves to is refused;
    aiohttp connects only to the addresses returned here, so what was checked is what is reached."""

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for info in found:
            reason = address_refusal(info["host"], allow_private=self.allow_private)
            if reason is not None:
                raise CallbackRefused(f"{host} resolves to {info['host']}: {reason}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds <= 3600 else None


class CallbackClient:
    """POSTs signed callbacks: no redirects, no proxies from the environment, one bounded timeout,
    every address checked (:class:`GuardedResolver`)."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.allow_private), limit=100, ttl_dns_cache=10
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The status of a 2xx answer; else raises :class:`CallbackFailed` or :class:`CallbackRefused`."""
        reason = url_refusal(url, allow_private=self.allow_private)
        if reason is not None:  # a literal address is never resolved, so it is checked here
            raise CallbackRefused(f"callback URL refused: {reason}")
        host = url.split("//", 1)[-1].split("/", 1)[0].rpartition("@")[2]
        try:
            async with self._http().post(
                url,
                data=body,
                headers={**headers, "Content-Type": "application/json"},
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except CallbackRefused:
            raise
        except TimeoutError:
            raise CallbackFailed(
                f"callback to {host} timed out after {self.timeout:g}s",
                service="callback",
                error_code="CALLBACK_TIMEOUT",
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise CallbackFailed(
                f"callback to {host} failed: {type(e).__name__}: {str(e)[:200]}",
                service="callback",
                error_code="CALLBACK_UNREACHABLE",
            ) from None
        if 200 <= status < 300:
            return status
        detail = " (redirects are not followed)" if 300 <= status < 400 else ""
        raise CallbackFailed(
            f"callback to {host} answered {status}{detail}",
            service="callback",
            error_code=f"CALLBACK_HTTP_{status}",
            retry_after=retry_after,
        )


class CallbackHandler:
    """The handler of ``<prefix>.callbacks``: which callback an event goes to, and sending it."""

    def __init__(self, *, store: Store, client: CallbackClient, callbacks: Iterable[Callback]) -> None:
        self.store = store
        self.client = client
        self.callbacks = {c.ref: c for c in callbacks}

    async def __call__(self, routing_key: str, body: bytes, message_id: str | None) -> None:
        if not self.callbacks:  # none configured: the event is acked unread (cheap, it is 5 per Item)
            return
        event = parse_event(routing_key, body)
        item_id = uuid.UUID(event["item_id"])
        structlog.contextvars.bind_contextvars(item_id=str(item_id), event_id=event["event_id"])
        exists, owner = await self.store.owner_of(item_id)
        if not exists:  # the outbox writes an event with its Item's transition: this is no paw event
            raise Poison(f"outcome event {event['event_id']} names Item {item_id}, which does not exist")
        target = self.callbacks.get(owner or AMQP_REF)
        if target is None:
            log.debug("callback.none", owner=owner or AMQP_REF)
            return
        payload = envelope(routing_key, event)
        headers = signed_headers(target.secret, event["event_id"], payload, datetime.now(UTC))
        status = await self.client.post(target.url, payload, headers)
        log.info("callback.delivered", owner=target.ref, status=status, to_state=event["to_state"])
