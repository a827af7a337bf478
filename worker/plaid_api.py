"""Plaid, through the unmodified plaid-python SDK.

plaid-python is synchronous (urllib3), so every call runs in a bounded thread pool, never on the
event loop. Its errors become :class:`UpstreamError` carrying Plaid's ``error_code`` and
``request_id``; the message never includes the request (which holds tokens).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import plaid
import structlog
import urllib3
from plaid.api import plaid_api
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


class MalformedResponse(Exception):
    """Plaid answered 2xx with something that is not the JSON object it documents."""


def to_upstream_error(e: Exception) -> UpstreamError:
    """Maps what plaid-python raises to :class:`UpstreamError`, without request data."""
    if isinstance(e, MalformedResponse | ValueError):
        return UpstreamError(
            "Plaid answered malformed JSON", service="plaid", status=502, error_code="BAD_RESPONSE"
        )
    if isinstance(e, plaid.ApiException) and not e.status:
        # plaid-python reports connection failures and timeouts as ApiException(status=0)
        return UpstreamError(f"Plaid unreachable: {e.reason}", service="plaid", error_code="NETWORK_ERROR")
    if isinstance(e, plaid.ApiException):
        body: dict[str, Any] = {}
        try:
            parsed = json.loads(e.body or b"{}")
            body = parsed if isinstance(parsed, dict) else {}
        except (TypeError, ValueError):
            pass
        retry_after = None
        if e.headers and e.headers.get("Retry-After"):
            try:
                retry_after = float(e.headers["Retry-After"])
            except ValueError:
                retry_after = None
        code = body.get("error_code") or f"HTTP_{e.status}"
        return UpstreamError(
            f"Plaid {code}: {body.get('error_message') or e.reason}",
            service="plaid",
            status=e.status,
            error_code=code,
            error_type=body.get("error_type"),
            request_id=body.get("request_id"),
            retry_after=retry_after,
        )
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        return UpstreamError(
            f"Plaid unreachable: {type(e).__name__}", service="plaid", error_code="NETWORK_ERROR"
        )
    raise e


class PlaidClient:
    def __init__(self, *, host: str, client_id: str, secret: str, threads: int, timeout: float) -> None:
        config = plaid.Configuration(
            host=host,
            api_key={"clientId": client_id, "secret": secret, "plaidVersion": PLAID_VERSION},
        )
        config.connection_pool_maxsize = threads
        self._api_client = plaid.ApiClient(config)
        self._api = plaid_api.PlaidApi(self._api_client)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plaid")
        self._timeout = timeout

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api_client.close()
        self._api_client.rest_client.pool_manager.clear()

    async def _call(
        self, endpoint: str, call: Callable[..., Any], request: Callable[[], Any]
    ) -> dict[str, Any]:
        """Runs one plaid-python call in the thread pool: the request model is built, sent and its
        JSON answer parsed there, off the event loop. The answer is read as plain JSON
        (``_preload_content=False``): plaid-python's response models cost more CPU than the rest of
        the call, and we read a handful of fields."""

        def blocking() -> dict[str, Any]:
            raw = call(request(), _request_timeout=self._timeout, _preload_content=False)
            try:
                body = json.loads(raw.data)
            finally:
                raw.release_conn()
            if not isinstance(body, dict) or "request_id" not in body:
                raise MalformedResponse()
            return body

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, blocking)
        except (
            plaid.ApiException,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,
            MalformedResponse,
        ) as e:
            err = to_upstream_error(e)
            metrics.UPSTREAM_ERRORS.labels("plaid", endpoint, err.error_code or "unknown").inc()
            log.info(
                "plaid.error",
                endpoint=endpoint,
                status=err.status,
                error_code=err.error_code,
                request_id=err.request_id,
            )
            raise err from None
        finally:
            metrics.UPSTREAM_SECONDS.labels("plaid", endpoint).observe(time.perf_counter() - started)

    async def exchange_public_token(self, public_token: str) -> Exchange:
        resp = await self._call(
            "/item/public_token/exchange",
            self._api.item_public_token_exchange,
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

        resp = await self._call("/accounts/get", self._api.accounts_get, request)
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
            self._api.processor_token_create,
            lambda: ProcessorTokenCreateRequest(
                access_token=access_token, account_id=account_id, processor=ATOMIC_PROCESSOR
            ),
        )
        return resp["processor_token"], resp["request_id"]

    async def remove_item(self, access_token: str) -> str:
        resp = await self._call(
            "/item/remove", self._api.item_remove, lambda: ItemRemoveRequest(access_token=access_token)
        )
        return str(resp["request_id"])

    async def item_get(self, access_token: str) -> ItemHealth:
        """``/item/get``: the Item's health now (its ``error``, null when the login works)."""
        resp = await self._call(
            "/item/get", self._api.item_get, lambda: ItemGetRequest(access_token=access_token)
        )
        item = resp.get("item")
        if not isinstance(item, dict):
            raise to_upstream_error(MalformedResponse())
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

        resp = await self._call("/link/token/create", self._api.link_token_create, request)
        return LinkToken(str(resp["link_token"]), str(resp["expiration"]), str(resp["request_id"]))

    async def webhook_verification_key(self, kid: str) -> dict[str, Any]:
        resp = await self._call(
            "/webhook_verification_key/get",
            self._api.webhook_verification_key_get,
            lambda: WebhookVerificationKeyGetRequest(key_id=kid),
        )
        key = resp.get("key")
        if not isinstance(key, dict):
            raise to_upstream_error(MalformedResponse())
        return key
