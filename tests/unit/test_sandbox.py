"""The Plaid emulator, driven through the real plaid-python SDK."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import jwt
import plaid
import pytest
from jwt.algorithms import ECAlgorithm
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.accounts_get_request_options import AccountsGetRequestOptions
from plaid.model.accounts_get_response import AccountsGetResponse
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.item_webhook_update_request import ItemWebhookUpdateRequest
from plaid.model.processor_auth_get_request import ProcessorAuthGetRequest
from plaid.model.processor_auth_get_response import ProcessorAuthGetResponse
from plaid.model.processor_token_create_request import ProcessorTokenCreateRequest
from plaid.model.products import Products
from plaid.model.sandbox_item_fire_webhook_request import SandboxItemFireWebhookRequest
from plaid.model.sandbox_item_reset_login_request import SandboxItemResetLoginRequest
from plaid.model.sandbox_item_set_verification_status_request import (
    SandboxItemSetVerificationStatusRequest,
)
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import SandboxPublicTokenCreateRequestOptions
from plaid.model.webhook_type import WebhookType
from plaid.model.webhook_verification_key_get_request import WebhookVerificationKeyGetRequest
from plaid.model.webhook_verification_key_get_response import WebhookVerificationKeyGetResponse

from sandbox.receiver import ReceivedWebhook, WebhookReceiver
from tests.helpers import Sandbox, call, plaid_api_for

T = TypeVar("T")


async def api_error(fn: Callable[..., Any], *args: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(plaid.ApiException) as info:
        await call(fn, *args)
    return info.value.status, json.loads(info.value.body)


async def link(
    client: Any, *, username: str | None = None, webhook: str | None = None
) -> tuple[str, str, list[Any]]:
    """public token → access token; returns (access_token, item_id, accounts)."""
    options: dict[str, Any] = {}
    if username is not None:
        options["override_username"] = username
    if webhook is not None:
        options["webhook"] = webhook
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508",
        initial_products=[Products("auth")],
        options=SandboxPublicTokenCreateRequestOptions(**options),
    )
    public_token = (await call(client.sandbox_public_token_create, request)).public_token
    exchanged = await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))
    accounts = await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    return exchanged.access_token, exchanged.item_id, list(accounts.accounts)


def verify_plaid_webhook(received: ReceivedWebhook, jwk: dict[str, Any]) -> dict[str, Any]:
    """Verifies as a receiver must: ES256 with the fetched key, then the body hash."""
    token = received.headers["plaid-verification"]
    key = ECAlgorithm.from_jwk(json.dumps(jwk))
    claims: dict[str, Any] = jwt.decode(token, key=key, algorithms=["ES256"])  # type: ignore[arg-type]
    expected = hashlib.sha256(received.body).hexdigest()
    assert hmac.compare_digest(claims["request_body_sha256"], expected)
    return claims


async def fetch_jwk(client: Any, kid: str) -> dict[str, Any]:
    response = await call(client.webhook_verification_key_get, WebhookVerificationKeyGetRequest(key_id=kid))
    assert isinstance(response, WebhookVerificationKeyGetResponse)
    return dict(response.key.to_dict())


# -- Link, exchange, accounts, processor ---------------------------------------------------------


async def test_happy_path_deserializes_in_plaid_python(sandbox: Sandbox, client: Any) -> None:
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508", initial_products=[Products("auth")]
    )
    public_token = (await call(client.sandbox_public_token_create, request)).public_token
    assert public_token.startswith("public-sandbox-")

    exchanged = await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))
    assert exchanged.access_token.startswith("access-sandbox-")

    accounts = await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    assert isinstance(accounts, AccountsGetResponse)
    assert accounts.item.item_id == exchanged.item_id
    assert [(a.name, str(a.subtype), a.mask) for a in accounts.accounts] == [
        ("Plaid Checking", "checking", "0000"),
        ("Plaid Saving", "savings", "1111"),
        ("Plaid CD", "cd", "2222"),
        ("Plaid Credit Card", "credit card", "3333"),
        ("Plaid Money Market", "money market", "4444"),
        ("Plaid IRA", "ira", "5555"),
        ("Plaid 401k", "401k", "6666"),
        ("Plaid Student Loan", "student", "7777"),
        ("Plaid Mortgage", "mortgage", "8888"),
        ("Plaid HSA", "hsa", "9001"),
        ("Plaid Cash Management", "cash management", "9002"),
        ("Plaid Business Credit Card", "credit card", "9999"),
    ]
    checking = accounts.accounts[0]
    assert checking.balances.available == 100.0
    assert checking.balances.iso_currency_code == "USD"

    created = await call(
        client.processor_token_create,
        ProcessorTokenCreateRequest(
            access_token=exchanged.access_token, account_id=checking.account_id, processor="atomic"
        ),
    )
    assert created.processor_token.startswith("processor-sandbox-")

    auth = await call(client.processor_auth_get, ProcessorAuthGetRequest(created.processor_token))
    assert isinstance(auth, ProcessorAuthGetResponse)
    assert auth.account.account_id == checking.account_id
    assert auth.numbers.ach.account_id == checking.account_id
    assert auth.numbers.ach.routing == "011401533"
    assert auth.numbers.ach.account.endswith("0000")
    assert auth.request_id
    assert sandbox.state.calls["/processor/auth/get"] == 1


async def test_accounts_get_filters_by_account_id(client: Any) -> None:
    access_token, _, accounts = await link(client)
    wanted = accounts[1].account_id
    options = AccountsGetRequestOptions(account_ids=[wanted])
    response = await call(client.accounts_get, AccountsGetRequest(access_token=access_token, options=options))
    assert [a.account_id for a in response.accounts] == [wanted]

    bad = AccountsGetRequestOptions(account_ids=["nope"])
    status, body = await api_error(
        client.accounts_get, AccountsGetRequest(access_token=access_token, options=bad)
    )
    assert (status, body["error_code"]) == (400, "INVALID_ACCOUNT_ID")


async def test_public_token_is_one_time(client: Any) -> None:
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508", initial_products=[Products("auth")]
    )
    public_token = (await call(client.sandbox_public_token_create, request)).public_token
    await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))

    status, body = await api_error(
        client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token)
    )
    assert status == 400
    assert (body["error_type"], body["error_code"]) == ("INVALID_INPUT", "INVALID_PUBLIC_TOKEN")
    assert body["request_id"]


async def test_public_token_expires_after_30_minutes(sandbox: Sandbox, client: Any) -> None:
    now = [1_700_000_000.0]
    sandbox.state.clock = lambda: now[0]
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508", initial_products=[Products("auth")]
    )
    fresh = (await call(client.sandbox_public_token_create, request)).public_token
    stale = (await call(client.sandbox_public_token_create, request)).public_token

    now[0] += 29 * 60
    await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(fresh))
    now[0] += 2 * 60
    status, body = await api_error(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(stale))
    assert (status, body["error_code"]) == (400, "INVALID_PUBLIC_TOKEN")
    assert "expired" in body["error_message"]


@pytest.mark.parametrize("token", ["public-sandbox-00000000-0000-4000-8000-000000000000", "access-sandbox-x"])
async def test_unknown_or_malformed_public_token(client: Any, token: str) -> None:
    status, body = await api_error(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(token))
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_PUBLIC_TOKEN")


async def test_wrong_api_keys(sandbox: Sandbox) -> None:
    wrong = plaid_api_for(
        dataclasses.replace(sandbox, config=dataclasses.replace(sandbox.config, secret="nope"))
    )
    try:
        request = SandboxPublicTokenCreateRequest(
            institution_id="ins_109508", initial_products=[Products("auth")]
        )
        status, body = await api_error(wrong.sandbox_public_token_create, request)
    finally:
        wrong.api_client.rest_client.pool_manager.clear()
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_API_KEYS")
    assert sandbox.state.plaid.items == {}


async def test_credentials_in_body_and_field_checks(sandbox: Sandbox) -> None:
    url = sandbox.url + "/sandbox/public_token/create"
    good = {
        "client_id": sandbox.config.client_id,
        "secret": sandbox.config.secret,
        "initial_products": ["auth"],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={**good, "institution_id": "ins_109508"}) as response:
            assert response.status == 200
            assert (await response.json())["public_token"].startswith("public-sandbox-")
        async with http.post(url, json=good) as response:
            body = await response.json()
            assert (response.status, body["error_code"]) == (400, "MISSING_FIELDS")
            assert "institution_id" in body["error_message"]
        async with http.post(url, json={**good, "institution_id": "ins_109508", "color": "red"}) as response:
            assert (response.status, (await response.json())["error_code"]) == (400, "UNKNOWN_FIELDS")
        async with http.post(url, data=b"{not json") as response:
            assert (response.status, (await response.json())["error_code"]) == (400, "INVALID_BODY")


async def test_removed_item_invalidates_access_and_processor_tokens(client: Any) -> None:
    access_token, _, accounts = await link(client)
    tokens = [
        (
            await call(
                client.processor_token_create,
                ProcessorTokenCreateRequest(
                    access_token=access_token, account_id=accounts[0].account_id, processor=processor
                ),
            )
        ).processor_token
        for processor in ("atomic", "dwolla")
    ]
    for token in tokens:  # several processor tokens per Item, all valid
        await call(client.processor_auth_get, ProcessorAuthGetRequest(token))

    await call(client.item_remove, ItemRemoveRequest(access_token=access_token))

    status, body = await api_error(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "ITEM_NOT_FOUND")
    for token in tokens:
        status, body = await api_error(client.processor_auth_get, ProcessorAuthGetRequest(token))
        assert (status, body["error_code"]) == (400, "INVALID_PROCESSOR_TOKEN")


async def test_processor_token_create_validates(client: Any) -> None:
    access_token, _, accounts = await link(client)
    checking = accounts[0]
    credit = next(a for a in accounts if str(a.subtype) == "credit card")

    def request(account_id: str, processor: str = "atomic") -> ProcessorTokenCreateRequest:
        return ProcessorTokenCreateRequest(
            access_token=access_token, account_id=account_id, processor=processor
        )

    status, body = await api_error(
        client.processor_token_create, request(checking.account_id, "not-a-partner")
    )
    assert (status, body["error_code"]) == (400, "INVALID_FIELD")
    status, body = await api_error(client.processor_token_create, request("unknown-account"))
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_ACCOUNT_ID")
    status, body = await api_error(client.processor_token_create, request(credit.account_id))
    assert (status, body["error_code"]) == (400, "NO_AUTH_ACCOUNTS")
    for processor in ("atomic", "atomicfi", "dwolla", "alpaca", "drivewealth"):
        await call(client.processor_token_create, request(checking.account_id, processor))


USER_GOOD_SUBTYPES = [
    "checking", "savings", "cd", "credit card", "money market", "ira", "401k", "student", "mortgage", "hsa",
    "cash management", "credit card",
]  # fmt: skip


@pytest.mark.parametrize(
    ("username", "subtypes"),
    [
        (None, USER_GOOD_SUBTYPES),
        ("user_good", USER_GOOD_SUBTYPES),
        ("user_savings_only", ["savings"]),
        ("user_no_depository", ["credit card", "student", "mortgage"]),
        ("user_automated_microdeposits", ["checking"]),
    ],
)
async def test_username_conventions(client: Any, username: str | None, subtypes: list[str]) -> None:
    _, _, accounts = await link(client, username=username)
    assert [str(a.subtype) for a in accounts] == subtypes
    if username == "user_no_depository":
        assert all(str(a.type) != "depository" for a in accounts)
    for account in accounts:
        assert account.balances.current is not None


async def test_unknown_username_is_invalid_credentials(client: Any) -> None:
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508",
        initial_products=[Products("auth")],
        options=SandboxPublicTokenCreateRequestOptions(override_username="user_nobody"),
    )
    status, body = await api_error(client.sandbox_public_token_create, request)
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "INVALID_CREDENTIALS")


async def test_automated_microdeposits_flow(client: Any, receiver: WebhookReceiver) -> None:
    access_token, item_id, accounts = await link(
        client, username="user_automated_microdeposits", webhook=receiver.base_url + "/plaid"
    )
    (account,) = accounts
    assert account.verification_status == "pending_automatic_verification"
    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=account.account_id, processor="atomic"
    )
    status, body = await api_error(client.processor_token_create, create)
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "PRODUCT_NOT_READY")

    await call(
        client.sandbox_item_set_verification_status,
        SandboxItemSetVerificationStatusRequest(
            access_token=access_token,
            account_id=account.account_id,
            verification_status="automatically_verified",
        ),
    )
    webhook = json.loads((await receiver.next()).body)
    assert webhook == {
        "webhook_type": "AUTH",
        "webhook_code": "AUTOMATICALLY_VERIFIED",
        "item_id": item_id,
        "account_id": account.account_id,
        "environment": "sandbox",
    }
    refreshed = await call(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert refreshed.accounts[0].verification_status == "automatically_verified"
    await call(client.processor_token_create, create)


async def test_reset_login_blocks_accounts_get_and_sends_error_webhook(
    client: Any, receiver: WebhookReceiver
) -> None:
    access_token, item_id, _ = await link(client, webhook=receiver.base_url + "/plaid")
    response = await call(
        client.sandbox_item_reset_login, SandboxItemResetLoginRequest(access_token=access_token)
    )
    assert response.reset_login is True

    status, body = await api_error(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "ITEM_LOGIN_REQUIRED")
    webhook = json.loads((await receiver.next()).body)
    assert (webhook["webhook_type"], webhook["webhook_code"], webhook["item_id"]) == (
        "ITEM",
        "ERROR",
        item_id,
    )
    assert webhook["error"]["error_code"] == "ITEM_LOGIN_REQUIRED"

    fire = SandboxItemFireWebhookRequest(access_token=access_token, webhook_code="LOGIN_REPAIRED")
    await call(client.sandbox_item_fire_webhook, fire)
    assert json.loads((await receiver.next()).body)["webhook_code"] == "LOGIN_REPAIRED"
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))


# -- Webhooks ------------------------------------------------------------------------------------


async def test_webhook_signature_verifies_with_fetched_key(
    sandbox: Sandbox, client: Any, receiver: WebhookReceiver
) -> None:
    access_token, item_id, _ = await link(client, webhook=receiver.base_url + "/plaid")
    fire = SandboxItemFireWebhookRequest(
        access_token=access_token, webhook_code="NEW_ACCOUNTS_AVAILABLE", webhook_type=WebhookType("ITEM")
    )
    before = int(time.time())
    assert (await call(client.sandbox_item_fire_webhook, fire)).webhook_fired is True
    received = await receiver.next()

    header = jwt.get_unverified_header(received.headers["plaid-verification"])
    assert header == {"alg": "ES256", "kid": sandbox.state.current_kid, "typ": "JWT"}
    jwk = await fetch_jwk(client, header["kid"])
    assert (jwk["alg"], jwk["crv"], jwk["kty"], jwk["use"], jwk["expired_at"]) == (
        "ES256",
        "P-256",
        "EC",
        "sig",
        None,
    )
    claims = verify_plaid_webhook(received, jwk)
    assert before <= claims["iat"] <= int(time.time())
    assert received.body == json.dumps(json.loads(received.body), indent=2).encode()
    assert json.loads(received.body)["item_id"] == item_id

    tampered = ReceivedWebhook(received.path, received.headers, received.body.replace(b"ITEM", b"AUTH"))
    with pytest.raises(AssertionError):
        verify_plaid_webhook(tampered, jwk)
    (delivery,) = sandbox.state.webhook_deliveries
    assert (delivery.url, delivery.status, delivery.body) == (
        receiver.base_url + "/plaid",
        200,
        received.body,
    )


async def test_sign_matches_what_is_sent(sandbox: Sandbox, client: Any) -> None:
    body = b'{\n  "webhook_type": "ITEM"\n}'
    token = sandbox.state.sign(body, iat=1_700_000_000)
    jwk = await fetch_jwk(client, sandbox.state.current_kid)
    key = ECAlgorithm.from_jwk(json.dumps(jwk))
    claims = jwt.decode(token, key=key, algorithms=["ES256"], options={"verify_iat": False})  # type: ignore[arg-type]
    assert claims == {"iat": 1_700_000_000, "request_body_sha256": hashlib.sha256(body).hexdigest()}


async def test_rotate_key_expires_old_kid(sandbox: Sandbox, client: Any, receiver: WebhookReceiver) -> None:
    old_kid = sandbox.state.current_kid
    new_kid = sandbox.state.rotate_key()
    assert new_kid != old_kid and sandbox.state.current_kid == new_kid

    old = await fetch_jwk(client, old_kid)
    new = await fetch_jwk(client, new_kid)
    assert isinstance(old["expired_at"], int) and old["expired_at"] >= old["created_at"]
    assert new["expired_at"] is None
    assert (old["x"], old["y"]) != (new["x"], new["y"])

    access_token, _, _ = await link(client, webhook=receiver.base_url + "/plaid")
    fire = SandboxItemFireWebhookRequest(access_token=access_token, webhook_code="NEW_ACCOUNTS_AVAILABLE")
    await call(client.sandbox_item_fire_webhook, fire)
    received = await receiver.next()
    assert jwt.get_unverified_header(received.headers["plaid-verification"])["kid"] == new_kid
    verify_plaid_webhook(received, new)
    with pytest.raises(jwt.InvalidSignatureError):
        verify_plaid_webhook(received, old)


async def test_unknown_kid_is_invalid_input(client: Any) -> None:
    status, body = await api_error(
        client.webhook_verification_key_get, WebhookVerificationKeyGetRequest(key_id="no-such-kid")
    )
    assert (status, body["error_type"], body["error_code"]) == (
        400,
        "INVALID_INPUT",
        "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
    )


async def test_default_update_changes_account_number(client: Any, receiver: WebhookReceiver) -> None:
    access_token, _, accounts = await link(client, webhook=receiver.base_url + "/plaid")
    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=accounts[0].account_id, processor="atomic"
    )
    token = (await call(client.processor_token_create, create)).processor_token
    before = (await call(client.processor_auth_get, ProcessorAuthGetRequest(token))).numbers.ach.account
    fire = SandboxItemFireWebhookRequest(
        access_token=access_token, webhook_code="DEFAULT_UPDATE", webhook_type=WebhookType("AUTH")
    )
    await call(client.sandbox_item_fire_webhook, fire)
    body = json.loads((await receiver.next()).body)
    assert body["account_ids_with_updated_auth"] == {accounts[0].account_id: ["ACCOUNT_NUMBER"]}
    after = (await call(client.processor_auth_get, ProcessorAuthGetRequest(token))).numbers.ach.account
    assert after != before and after.endswith(accounts[0].mask)


async def test_webhook_update_acknowledges_to_new_url(client: Any, receiver: WebhookReceiver) -> None:
    access_token, item_id, _ = await link(client, webhook=receiver.base_url + "/old")
    new_url = receiver.base_url + "/new"
    response = await call(
        client.item_webhook_update, ItemWebhookUpdateRequest(access_token=access_token, webhook=new_url)
    )
    assert response.item.webhook == new_url
    received = await receiver.next()
    assert received.path == "/new"
    assert json.loads(received.body) == {
        "webhook_type": "ITEM",
        "webhook_code": "WEBHOOK_UPDATE_ACKNOWLEDGED",
        "item_id": item_id,
        "new_webhook_url": new_url,
        "error": None,
        "environment": "sandbox",
    }


# -- Faults, latency, controls -------------------------------------------------------------------


async def test_fault_fails_n_times_then_succeeds(sandbox: Sandbox, client: Any) -> None:
    access_token, _, _ = await link(client)
    sandbox.state.set_fault(
        "/accounts/get", status=500, error_code="INTERNAL_SERVER_ERROR", error_type="API_ERROR", times=2
    )
    for _ in range(2):
        status, body = await api_error(client.accounts_get, AccountsGetRequest(access_token=access_token))
        assert (status, body["error_type"], body["error_code"]) == (500, "API_ERROR", "INTERNAL_SERVER_ERROR")
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert sandbox.state.calls["/accounts/get"] == 4  # link() + two faults + success


async def test_rate_limit_fault_sends_retry_after(sandbox: Sandbox, client: Any) -> None:
    access_token, _, _ = await link(client)
    sandbox.state.set_fault(
        "/accounts/get",
        status=429,
        error_code="RATE_LIMIT_EXCEEDED",
        error_type="RATE_LIMIT_EXCEEDED",
        rate=1.0,
        retry_after=7,
    )
    with pytest.raises(plaid.ApiException) as info:
        await call(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "7"
    sandbox.state.clear_faults()
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))


async def test_fault_rate_zero_never_fails(sandbox: Sandbox, client: Any) -> None:
    access_token, _, _ = await link(client)
    sandbox.state.set_fault("/accounts/get", status=500, error_code="X", error_type="API_ERROR", rate=0.0)
    for _ in range(5):
        await call(client.accounts_get, AccountsGetRequest(access_token=access_token))


async def test_latency_is_added(sandbox: Sandbox, client: Any) -> None:
    access_token, _, _ = await link(client)
    sandbox.state.set_latency("/accounts/get", 150)
    started = time.monotonic()
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert time.monotonic() - started >= 0.15


async def test_http_controls(sandbox: Sandbox) -> None:
    control = sandbox.url + "/sandbox/control"
    fault = {
        "path": "/webhook_verification_key/get",
        "status": 503,
        "error_code": "PLANNED_MAINTENANCE",
        "error_type": "API_ERROR",
        "times": 1,
        "retry_after": 2,
    }
    key_url = sandbox.url + "/webhook_verification_key/get"
    auth = {"client_id": sandbox.config.client_id, "secret": sandbox.config.secret}
    async with aiohttp.ClientSession() as http:
        async with http.post(control + "/faults", json=fault) as response:
            assert response.status == 200
        async with http.post(control + "/faults", json={**fault, "status": "x"}) as response:
            assert response.status == 400
        async with http.post(control + "/rotate_key") as response:
            new_kid = (await response.json())["kid"]
        assert new_kid == sandbox.state.current_kid
        async with http.post(key_url, json={**auth, "key_id": new_kid}) as response:
            assert (response.status, response.headers["Retry-After"]) == (503, "2")
            assert (await response.json())["error_code"] == "PLANNED_MAINTENANCE"
        async with http.post(key_url, json={**auth, "key_id": new_kid}) as response:
            assert (await response.json())["key"]["kid"] == new_kid
        async with http.post(control + "/faults", json={**fault, "times": None}) as response:
            assert response.status == 200
        async with http.post(control + "/faults/clear") as response:
            assert response.status == 200
        async with http.post(control + "/latency", json={"path": None, "ms": 0}) as response:
            assert response.status == 200
        async with http.post(key_url, json={**auth, "key_id": new_kid}) as response:
            assert response.status == 200
        async with http.get(control + "/stats") as response:
            stats = await response.json()
    assert stats["calls"]["/webhook_verification_key/get"] == 3
    assert stats["current_kid"] == new_kid
    assert not any(path.startswith("/sandbox/control") for path in stats["calls"])


async def test_processor_auth_numbers_are_objects_on_the_wire(sandbox: Sandbox, client: Any) -> None:
    # plaid-python coerces a one-element list too, so check the raw JSON shape Plaid documents:
    # /processor/auth/get gives numbers.ach as one nullable object (unlike /auth/get's arrays).
    access_token, _, accounts = await link(client)
    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=accounts[1].account_id, processor="alpaca"
    )
    token = (await call(client.processor_token_create, create)).processor_token
    payload = {
        "client_id": sandbox.config.client_id,
        "secret": sandbox.config.secret,
        "processor_token": token,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(sandbox.url + "/processor/auth/get", json=payload) as response:
            body = await response.json()
    assert body["numbers"] == {
        "ach": {
            "account_id": accounts[1].account_id,
            "account": body["numbers"]["ach"]["account"],
            "routing": "011401533",
            "wire_routing": "021000021",
        },
        "eft": None,
        "international": None,
        "bacs": None,
    }
    assert body["numbers"]["ach"]["account"].endswith("1111")
