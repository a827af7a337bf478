"""Plaid: requests built and serialised by plaid-python's models, sent with aiohttp.

plaid-python stays the contract: every request is one of its request models (which check the
fields' types when built) serialised by its ``ApiClient``, with the headers its ``Configuration``
makes (client id, secret, ``Plaid-Version``, its User-Agent). Only the transport is aiohttp: the SDK's
urllib3 is synchronous, and running it in threads cost a third of the worker's CPU (thread hand-off,
http.client parsing each response's headers with the ``email`` package; issue 16). Answers are read as
plain JSON, as before: plaid-python's response models cost more CPU than the rest of the call, and we
read a handful of fields. Errors become :class:`UpstreamError` carrying Plaid's ``error_code`` and
``request_id``; the message never includes the request (which holds tokens).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import plaid
import structlog
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.accounts_get_request_options import AccountsGetRequestOptions
from plaid.model.country_code import CountryCode
from plaid.model.item_get_request import ItemGetRequest
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.link_token_create_request import LinkTokenCreateRequest
from plaid.model.link_token_create_request_user import LinkTokenCreateRequestUser
from plaid.model.processor_token_create_request import ProcessorTokenCreateRequest
from plaid.model.products import Products
from plaid.model.webhook_verification_key_get_request import WebhookVerificationKeyGetRequest

from worker import metrics
from worker.errors import UpstreamError

log = structlog.get_logger(__name__)

PLAID_VERSION = "2020-09-14"
ATOMIC_PROCESSOR = "atomic"  # not "atomicfi", which is a different company


@dataclass(frozen=True)
class Exchange:
    access_token: str
    item_id: str
    request_id: str


@dataclasses.dataclass(frozen=True)
class Account:
    account_id: str
    type: str
    subtype: str | None
    verification_status: str | None
    mask: str | None


@dataclasses.dataclass(frozen=True)
class ItemHealth:
    """What ``/item/get`` says of an Item now: its error (``None``: healthy)."""

    error_code: str | None
    error_type: str | None
    request_id: str


@dataclasses.dataclass(frozen=True)
class LinkToken:
    link_token: str
    expiration: str  # ISO 8601, as Plaid sends it
    request_id: str


def malformed() -> UpstreamError:
    return UpstreamError(
        "Plaid answered malformed JSON", service="plaid", status=502, error_code="BAD_RESPONSE"
    )


def unreachable(e: BaseException) -> UpstreamError:
    """A connection failure or timeout: no answer, so no Plaid error code (transient)."""
    return UpstreamError(
        f"Plaid unreachable: {type(e).__name__}", service="plaid", error_code="NETWORK_ERROR"
    )


def plaid_error(status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Plaid's answer with an HTTP error status as :class:`UpstreamError`: its ``error_code`` (or
    ``HTTP_<status>`` when the body is not Plaid's error object), type, request id, Retry-After."""
    body: dict[str, Any] = {}
    try:
        parsed = orjson.loads(raw or b"{}")
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    retry_after = None
    if headers.get("Retry-After"):
        try:
            retry_after = float(headers["Retry-After"])
        except ValueError:
            retry_after = None
    code = body.get("error_code") or f"HTTP_{status}"
    return UpstreamError(
        f"Plaid {code}: {body.get('error_message') or f'HTTP {status}'}",
        service="plaid",
        status=status,
        error_code=code,
        error_type=body.get("error_type"),
        request_id=body.get("request_id"),
        retry_after=retry_after,
    )


def sdk_headers(config: plaid.Configuration) -> dict[str, str]:
    """The headers plaid-python sends with ``config``: its default headers (``Plaid-Version``, its
    User-Agent) and every auth setting it puts in a header (client id, secret)."""
    with plaid.ApiClient(config) as client:  # it opens a urllib3 pool: closed again at once
        headers = dict(client.default_headers)
    for auth in config.auth_settings().values():
        if auth["in"] == "header" and auth["value"] is not None:
            headers[auth["key"]] = auth["value"]
    headers.update({"Content-Type": "application/json", "Accept": "application/json"})
    return headers


class PlaidClient:
    def __init__(self, *, host: str, client_id: str, secret: str, connections: int, timeout: float) -> None:
        config = plaid.Configuration(
            host=host,
            api_key={"clientId": client_id, "secret": secret, "plaidVersion": PLAID_VERSION},
        )
        self._host = config.host.rstrip("/")
        # At most ``connections`` calls at once; the others wait for a slot here, outside the call's
        # timeout (which starts once the call is sent, as urllib3's did in its thread): waiting for a
        # slot while Plaid is slow must not turn calls never sent into timeouts.
        self._slots = asyncio.Semaphore(connections)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # No cookie jar: plaid-python's urllib3 keeps no cookies, so a load balancer's cookie is
        # never sent back (nor parsed and matched on every call: 6-10 % of a call's CPU here).
        self._session = aiohttp.ClientSession(
            headers=sdk_headers(config),
            connector=aiohttp.TCPConnector(limit=connections),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, endpoint: str, request: Callable[[], Any]) -> dict[str, Any]:
        """POSTs the SDK request model ``request()`` builds to ``endpoint``, serialised as the SDK
        serialises it; answers the JSON object Plaid sent, or raises :class:`UpstreamError`."""
        body = json.dumps(plaid.ApiClient.sanitize_for_serialization(request()))
        async with self._slots:
            return await self._post(endpoint, body)

    async def _post(self, endpoint: str, body: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            try:
                async with self._session.post(
                    self._host + endpoint,
                    data=body,
                    timeout=self._timeout,
                    allow_redirects=False,  # Plaid does not redirect; never send the secret elsewhere
                ) as resp:
                    raw = await resp.read()
                    if resp.status >= 400:
                        raise plaid_error(resp.status, raw, resp.headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise unreachable(e) from None
            try:
                answer = orjson.loads(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or "request_id" not in answer:
                raise malformed()
            return answer
        except UpstreamError as err:
            metrics.UPSTREAM_ERRORS.labels("plaid", endpoint, err.error_code or "unknown").inc()
            log.info(
                "plaid.error",
                endpoint=endpoint,
                status=err.status,
                error_code=err.error_code,
                request_id=err.request_id,
            )
            raise
        finally:
            metrics.child(metrics.UPSTREAM_SECONDS, "plaid", endpoint).observe(time.perf_counter() - started)

    async def exchange_public_token(self, public_token: str) -> Exchange:
        resp = await self._call(
            "/item/public_token/exchange",
            lambda: ItemPublicTokenExchangeRequest(public_token=public_token),
        )
        return Exchange(resp["access_token"], resp["item_id"], resp["request_id"])

    async def accounts(
        self, access_token: str, account_ids: list[str] | None = None
    ) -> tuple[list[Account], str]:
        def request() -> AccountsGetRequest:
            if account_ids:
                options = AccountsGetRequestOptions(account_ids=account_ids)
                return AccountsGetRequest(access_token=access_token, options=options)
            return AccountsGetRequest(access_token=access_token)

        resp = await self._call("/accounts/get", request)
        accounts = [
            Account(
                account_id=a["account_id"],
                type=str(a["type"]),
                subtype=str(a["subtype"]) if a.get("subtype") is not None else None,
                verification_status=(
                    str(a["verification_status"]) if a.get("verification_status") is not None else None
                ),
                mask=a.get("mask"),
            )
            for a in resp["accounts"]
        ]
        return accounts, resp["request_id"]

    async def create_processor_token(self, access_token: str, account_id: str) -> tuple[str, str]:
        resp = await self._call(
            "/processor/token/create",
            lambda: ProcessorTokenCreateRequest(
                access_token=access_token, account_id=account_id, processor=ATOMIC_PROCESSOR
            ),
        )
        return resp["processor_token"], resp["request_id"]

    async def remove_item(self, access_token: str) -> str:
        resp = await self._call("/item/remove", lambda: ItemRemoveRequest(access_token=access_token))
        return str(resp["request_id"])

    async def item_get(self, access_token: str) -> ItemHealth:
        """``/item/get``: the Item's health now (its ``error``, null when the login works)."""
        resp = await self._call("/item/get", lambda: ItemGetRequest(access_token=access_token))
        item = resp.get("item")
        if not isinstance(item, dict):
            raise malformed()
        error = item.get("error")
        if not isinstance(error, dict):
            return ItemHealth(None, None, str(resp["request_id"]))
        code, kind = error.get("error_code"), error.get("error_type")
        return ItemHealth(
            str(code) if code else "UNKNOWN", str(kind) if kind else None, str(resp["request_id"])
        )

    async def link_token(
        self,
        *,
        client_user_id: str,
        client_name: str,
        language: str,
        country_codes: list[str],
        webhook: str | None,
        redirect_uri: str | None,
        access_token: str | None = None,
        products: list[str] | None = None,
    ) -> LinkToken:
        """``/link/token/create``: for a new Item with ``products`` (paw asks for ``["auth"]``), or
        in update mode for the Item of ``access_token`` (no products)."""

        def request() -> LinkTokenCreateRequest:
            optional: dict[str, Any] = {}
            if webhook:
                optional["webhook"] = webhook
            if redirect_uri:
                optional["redirect_uri"] = redirect_uri
            if access_token is not None:
                optional["access_token"] = access_token
            if products:
                optional["products"] = [Products(p) for p in products]
            return LinkTokenCreateRequest(
                client_name=client_name,
                language=language,
                country_codes=[CountryCode(c) for c in country_codes],
                user=LinkTokenCreateRequestUser(client_user_id=client_user_id),
                **optional,
            )

        resp = await self._call("/link/token/create", request)
        return LinkToken(str(resp["link_token"]), str(resp["expiration"]), str(resp["request_id"]))

    async def webhook_verification_key(self, kid: str) -> dict[str, Any]:
        resp = await self._call(
            "/webhook_verification_key/get",
            lambda: WebhookVerificationKeyGetRequest(key_id=kid),
        )
        key = resp.get("key")
        if not isinstance(key, dict):
            raise malformed()
        return key
