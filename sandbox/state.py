"""Everything one emulator instance holds, and the controls tests and benchmarks drive.

A :class:`SandboxState` lives in the aiohttp app under :data:`SANDBOX`. It is only touched from the
event loop that serves the app.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from sandbox import webhook_bodies
from sandbox.atomic_ledger import (
    DECISIONS,
    PENDING,
    REASON_ACCOUNT,
    REASON_CUSTOMER,
    REJECT_PREFIX,
    REJECTED,
    VERIFIED,
    AtomicLedger,
    FundingSource,
    Submission,
)
from sandbox.config import SandboxConfig
from sandbox.delivery import WebhookDelivery, WebhookSender, deliver
from sandbox.faults import Fault, FaultTable, LatencyTable
from sandbox.plaid_errors import PlaidAPIError
from sandbox.plaid_ledger import PlaidLedger
from sandbox.signing import SigningKey, atomic_signature, new_signing_key, plaid_verification_jwt
from sandbox.webhook_log import WebhookLog, WebhookRecord

log = structlog.get_logger("sandbox")


class SandboxState:
    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock  # replaceable at any time, e.g. to expire public tokens in tests
        self.rng = rng if rng is not None else random.Random()
        self.calls: collections.Counter[str] = collections.Counter()
        self.faults = FaultTable(self.rng)
        self.latency = LatencyTable(config.latency_ms)
        self.sender = WebhookSender(config.webhook_timeout_s)
        self.webhooks = WebhookLog()
        self.plaid = PlaidLedger(lambda: self.clock(), self.rng, self._emit_plaid_webhook)
        self.atomic = AtomicLedger()
        self._keys: dict[str, SigningKey] = {}
        self.current_kid = ""
        self._add_key()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- Webhook verification keys ------------------------------------------------------------

    def _add_key(self) -> str:
        key = new_signing_key(int(self.clock()))
        self._keys[key.kid] = key
        self.current_kid = key.kid
        return key.kid

    def rotate_key(self) -> str:
        """A new key becomes current; the old one gets ``expired_at`` = now. Returns the new kid."""
        old = self._keys[self.current_kid]
        if old.expired_at is None:
            old.expired_at = int(self.clock())
        return self._add_key()

    def key(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def sign(self, body: bytes, *, iat: int | None = None, kid: str | None = None) -> str:
        """The ``Plaid-Verification`` JWT Plaid would send with ``body`` (any known kid may sign)."""
        key = self._keys[kid if kid is not None else self.current_kid]
        return plaid_verification_jwt(body, key, int(self.clock()) if iat is None else iat)

    # -- Faults, latency, counters ------------------------------------------------------------

    def set_fault(
        self,
        path: str,
        *,
        status: int,
        error_code: str,
        error_type: str,
        times: int | None = None,
        rate: float | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.faults.set(Fault(path, status, error_code, error_type, times, rate, retry_after))

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_latency(self, path: str | None, ms: float) -> None:
        """Latency for ``path`` (replacing the global value for it), or the global value if ``None``."""
        self.latency.set(path, ms)

    def atomic_submissions(self, account_ref: str) -> int:
        return self.atomic.submissions[account_ref]

    def atomic_funding_sources(self, account_ref: str) -> int:
        return self.atomic.created[account_ref]

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every attempt (POST) of every webhook, in the order they were made."""
        return self.sender.deliveries

    def stats(self) -> dict[str, Any]:
        statuses = collections.Counter(str(d.status) for d in self.sender.deliveries)
        return {
            "calls": dict(self.calls),
            "current_kid": self.current_kid,
            "items": len(self.plaid.items),
            "faults": len(self.faults),
            "webhook_deliveries": len(self.sender.deliveries),
            "webhook_statuses": dict(statuses),
            "webhooks": self.webhooks.counts(),
            "atomic": {
                "submissions": dict(self.atomic.submissions),
                "funding_sources": dict(self.atomic.created),
            },
            "background_tasks": len(self._tasks),
        }

    # -- Background tasks ---------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox.task_failed", error=repr(task.exception()))

    async def drain(self) -> None:
        """Wait until every pending webhook and Atomic decision has been carried out.

        A webhook is pending until delivered or given up, its scheduled retries included: with
        the unscaled schedule and an endpoint that keeps failing, that is up to 24 hours.
        """
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Cancels whatever is pending (scheduled webhook retries too) and closes the HTTP client."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sender.close()

    # -- Plaid webhooks -----------------------------------------------------------------------

    def _emit_plaid_webhook(self, url: str | None, body: dict[str, Any]) -> None:
        if url:
            record = self.webhooks.new("plaid", url, self.clock())
            self.spawn(self._deliver_plaid(record, webhook_bodies.encode(body)))

    async def _deliver_plaid(self, record: WebhookRecord, raw: bytes) -> None:
        """The same bytes on every attempt, retried on Plaid's schedule, each attempt signed afresh.

        Plaid's docs say a receiver must reject a ``Plaid-Verification`` whose ``iat`` is more than
        5 minutes old, and say nothing of how a retry is signed. The third retry comes 10.5 minutes
        after the first attempt: with the first attempt's signature no retry from then on could ever
        verify, so each attempt carries a new JWT (``iat`` now, the current kid) over the same body.
        """

        def headers() -> dict[str, str]:
            return {"Content-Type": "application/json", "Plaid-Verification": self.sign(raw)}

        await deliver(
            self.sender,
            record,
            raw,
            headers,
            clock=lambda: self.clock(),
            retry_scale=self.config.webhook_retry_time_scale,
        )

    # -- Atomic -------------------------------------------------------------------------------

    def atomic_submit(self, key: str, submission: Submission) -> tuple[dict[str, Any], bool]:
        """Records a submission; a new funding source gets its decision scheduled. Raises
        :class:`~sandbox.atomic_ledger.IdempotencyKeyReused`."""
        self.atomic.submissions[submission.account_ref] += 1
        created_at = webhook_bodies.iso8601(self.clock())
        source, response, created = self.atomic.submit(key, submission, created_at)
        if created:
            self.spawn(self._decide_later(source))
        return response, created

    def atomic_verdict(self, source: FundingSource) -> tuple[str, str | None]:
        """What Atomic decides: it checks the bank account through /processor/auth/get first."""
        try:
            self.plaid.processor_auth_get(source.processor_token)
        except PlaidAPIError:
            return REJECTED, REASON_ACCOUNT
        if source.customer_ref.startswith(REJECT_PREFIX):
            return REJECTED, REASON_CUSTOMER
        return VERIFIED, None

    async def _decide_later(self, source: FundingSource) -> None:
        status, reason = self.atomic_verdict(source)
        if self.config.atomic_decision_delay_s > 0:
            await asyncio.sleep(self.config.atomic_decision_delay_s)
        if source.status == PENDING:  # not forced, not removed meanwhile
            self.atomic_decide(source, status, reason)

    def atomic_decide(self, source: FundingSource, status: str, reason: str | None) -> None:
        """Applies a decision and (if a URL is configured) sends the funding_source.updated webhook."""
        if status not in DECISIONS:
            raise ValueError(f"status must be one of {sorted(DECISIONS)}")
        source.status = status
        source.reason = reason
        url = self.config.atomic_webhook_url
        if url:
            body = {
                "event_id": f"evt_{secrets.token_hex(12)}",
                "type": "funding_source.updated",
                "funding_source_id": source.id,
                "account_ref": source.account_ref,
                "status": status,
                "reason": reason,
                "occurred_at": webhook_bodies.iso8601(self.clock()),
            }
            record = self.webhooks.new("atomic", url, self.clock())
            self.spawn(self._deliver_atomic(record, json.dumps(body).encode()))

    async def _deliver_atomic(self, record: WebhookRecord, raw: bytes) -> None:
        """One attempt, never retried: the Atomic contract (README) documents no retries."""
        headers = {
            "Content-Type": "application/json",
            "X-Atomic-Signature": atomic_signature(raw, self.config.atomic_webhook_secret),
        }
        await deliver(self.sender, record, raw, lambda: headers, clock=lambda: self.clock(), retry_scale=None)


SANDBOX = web.AppKey("sandbox_state", SandboxState)
