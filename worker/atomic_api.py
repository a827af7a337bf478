"""Atomic, through the documented contract in the README ("Atomic contract").

Atomic's API is not public: this adapter is the one place that knows its shape. Submissions carry an
``Idempotency-Key`` (the Item id), so a redelivered message cannot create a second funding source.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker import metrics
from worker.errors import UpstreamError

SIGNATURE_HEADER = "X-Atomic-Signature"
CODE = re.compile(r"[A-Z0-9_]{1,40}")


@dataclass(frozen=True)
class FundingSource:
    id: str
    status: str
    reason: str | None = None


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """Constant-time check of ``X-Atomic-Signature: sha256=<hex HMAC-SHA256(raw body)>``."""
    if not header:
        return False
    return hmac.compare_digest(header.strip().encode(), sign(body, secret).encode())


class AtomicClient:
    def __init__(self, *, base_url: str, api_key: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=256),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API key, not a session: no cookies kept
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        """One call; ``endpoint`` is the path pattern (the metrics label)."""
        url = f"{self._base}{path}"
        started = time.perf_counter()
        try:
            async with self._session.request(method, url, **kwargs) as resp:
                data: Any = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status >= 400:
                    raise self._error(method, endpoint, resp.status, data, resp.headers.get("Retry-After"))
                if not isinstance(data, dict):
                    raise UpstreamError(
                        f"Atomic {method} {endpoint}: not a JSON object", service="atomic", status=resp.status
                    )
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            metrics.UPSTREAM_ERRORS.labels("atomic", endpoint, "NETWORK_ERROR").inc()
            raise UpstreamError(
                f"Atomic unreachable: {type(e).__name__}", service="atomic", error_code="NETWORK_ERROR"
            ) from None
        finally:
            metrics.child(metrics.UPSTREAM_SECONDS, "atomic", endpoint).observe(time.perf_counter() - started)

    @staticmethod
    def _error(method: str, endpoint: str, status: int, data: Any, retry_after: str | None) -> UpstreamError:
        raw = data.get("error") if isinstance(data, dict) else None
        code = str(raw).upper() if isinstance(raw, str) and CODE.fullmatch(raw.upper()) else str(status)
        error_code = f"ATOMIC_{code}"
        metrics.UPSTREAM_ERRORS.labels("atomic", endpoint, error_code).inc()
        return UpstreamError(
            f"Atomic {method} {endpoint} answered {status}: {code}",
            service="atomic",
            status=status,
            error_code=error_code,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )

    async def submit_funding_source(
        self, *, processor_token: str, account_ref: str, customer_ref: str, idempotency_key: str
    ) -> FundingSource:
        data = await self._request(
            "POST",
            "/v1/funding_sources",
            "/v1/funding_sources",
            json={
                "processor_token": processor_token,
                "account_ref": account_ref,
                "customer_ref": customer_ref,
            },
            headers={"Idempotency-Key": idempotency_key},
        )
        return FundingSource(str(data["id"]), str(data["status"]), data.get("reason"))

    async def funding_source(self, funding_source_id: str) -> FundingSource:
        data = await self._request(
            "GET", f"/v1/funding_sources/{funding_source_id}", "/v1/funding_sources/{id}"
        )
        return FundingSource(str(data["id"]), str(data["status"]), data.get("reason"))

    async def refresh_funding_source(self, funding_source_id: str) -> FundingSource:
        """The bank account's numbers changed: Atomic re-pulls them with /processor/auth/get."""
        data = await self._request(
            "POST", f"/v1/funding_sources/{funding_source_id}/refresh", "/v1/funding_sources/{id}/refresh"
        )
        return FundingSource(str(data["id"]), str(data["status"]), data.get("reason"))

    async def remove_funding_source(self, funding_source_id: str) -> None:
        await self._request("DELETE", f"/v1/funding_sources/{funding_source_id}", "/v1/funding_sources/{id}")
