"""/sandbox/item/fire_webhook as Plaid's real endpoint behaves, the control levers beyond it, and
Plaid's error objects, all through the unmodified plaid-python SDK with its response models on.

What the real endpoint fires: the codes its request enum shows (OpenAPI ``SandboxItemFireWebhookRequest``);
DEFAULT_UPDATE for the product named by ``webhook_type`` (TRANSACTIONS when none is named); ERROR and
PRODUCT_READY are Assets webhooks. An Item without the product gets SANDBOX_ERROR /
SANDBOX_PRODUCT_NOT_ENABLED, an Item without a webhook SANDBOX_ERROR / SANDBOX_WEBHOOK_INVALID. What
it cannot fire (ITEM PENDING_EXPIRATION, WEBHOOK_UPDATE_ACKNOWLEDGED, AUTH AUTOMATICALLY_VERIFIED, an
ITEM ERROR for a broken login) a test gets from ``/sandbox/control/item/fire_webhook`` or the real
``/sandbox/item/reset_login`` and ``/sandbox/item/set_verification_status``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import plaid
import pytest
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.assets_error_webhook import AssetsErrorWebhook
from plaid.model.assets_product_ready_webhook import AssetsProductReadyWebhook
from plaid.model.auth_default_update_webhook import AuthDefaultUpdateWebhook
from plaid.model.automatically_verified_webhook import AutomaticallyVerifiedWebhook
from plaid.model.default_update_webhook import DefaultUpdateWebhook
from plaid.model.holdings_default_update_webhook import HoldingsDefaultUpdateWebhook
from plaid.model.identity_default_update_webhook import IdentityDefaultUpdateWebhook
from plaid.model.investments_default_update_webhook import InvestmentsDefaultUpdateWebhook
from plaid.model.item_error_webhook import ItemErrorWebhook
from plaid.model.item_login_repaired_webhook import ItemLoginRepairedWebhook
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.item_webhook_update_request import ItemWebhookUpdateRequest
from plaid.model.liabilities_default_update_webhook import LiabilitiesDefaultUpdateWebhook
from plaid.model.new_accounts_available_webhook import NewAccountsAvailableWebhook
from plaid.model.pending_disconnect_webhook import PendingDisconnectWebhook
from plaid.model.pending_expiration_webhook import PendingExpirationWebhook
from plaid.model.plaid_error import PlaidError
from plaid.model.processor_token_create_request import ProcessorTokenCreateRequest
from plaid.model.products import Products
from plaid.model.recurring_transactions_update_webhook import RecurringTransactionsUpdateWebhook
from plaid.model.sandbox_item_fire_webhook_request import SandboxItemFireWebhookRequest
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import SandboxPublicTokenCreateRequestOptions
from plaid.model.sync_updates_available_webhook import SyncUpdatesAvailableWebhook
from plaid.model.user_account_revoked_webhook import UserAccountRevokedWebhook
from plaid.model.user_permission_revoked_webhook import UserPermissionRevokedWebhook
from plaid.model.verification_expired_webhook import VerificationExpiredWebhook
from plaid.model.webhook_type import WebhookType
from plaid.model.webhook_update_acknowledged_webhook import WebhookUpdateAcknowledgedWebhook

from sandbox.receiver import WebhookReceiver
from tests.helpers import Sandbox, call

T = TypeVar("T")


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data


def parsed(client: Any, body: bytes, model: type[T]) -> T:
    """``body`` read by plaid-python's own model (required fields and types)."""
    result: T = client.api_client.deserialize(_Raw(body), (model,), True)
    assert isinstance(result, model)
    return result


async def refused(client: Any, fn: Callable[..., Any], *args: Any) -> tuple[int, dict[str, Any]]:
    """An API error, its body checked against plaid-python's PlaidError."""
    with pytest.raises(plaid.ApiException) as info:
        await call(fn, *args)
    parsed(client, info.value.body, PlaidError)
    body: dict[str, Any] = json.loads(info.value.body)
    assert body["request_id"] and "status" not in body and "causes" not in body  # API shape
    assert body["documentation_url"] == plaid_docs(body["error_type"], body["error_code"])
    return info.value.status, body


def plaid_docs(error_type: str, error_code: str) -> str:
    page = {"ITEM_ERROR": "item", "INVALID_INPUT": "invalid-input", "INVALID_REQUEST": "invalid-request"}
    page |= {"SANDBOX_ERROR": "sandbox", "API_ERROR": "api", "INSTITUTION_ERROR": "institution"}
    return f"https://plaid.com/docs/errors/{page[error_type]}/#{error_code.lower()}"


async def link(client: Any, products: list[str], webhook: str | None) -> tuple[str, str, list[Any]]:
    options = SandboxPublicTokenCreateRequestOptions(**({"webhook": webhook} if webhook else {}))
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508", initial_products=[Products(p) for p in products], options=options
    )
    public_token = (await call(client.sandbox_public_token_create, request)).public_token
    exchanged = await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))
    accounts = await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    return exchanged.access_token, exchanged.item_id, list(accounts.accounts)


def fire(access_token: str, code: str, webhook_type: str | None = None) -> SandboxItemFireWebhookRequest:
    if webhook_type is None:
        return SandboxItemFireWebhookRequest(access_token=access_token, webhook_code=code)
    return SandboxItemFireWebhookRequest(
        access_token=access_token, webhook_code=code, webhook_type=WebhookType(webhook_type)
    )


ALL_PRODUCTS = ["auth", "transactions", "identity", "investments", "liabilities", "assets"]
# (webhook_type given, code) → (the type and model of what arrives)
FIREABLE: list[tuple[str | None, str, str, type[Any]]] = [
    ("AUTH", "DEFAULT_UPDATE", "AUTH", AuthDefaultUpdateWebhook),
    (None, "DEFAULT_UPDATE", "TRANSACTIONS", DefaultUpdateWebhook),
    ("IDENTITY", "DEFAULT_UPDATE", "IDENTITY", IdentityDefaultUpdateWebhook),
    ("HOLDINGS", "DEFAULT_UPDATE", "HOLDINGS", HoldingsDefaultUpdateWebhook),
    (
        "INVESTMENTS_TRANSACTIONS",
        "DEFAULT_UPDATE",
        "INVESTMENTS_TRANSACTIONS",
        InvestmentsDefaultUpdateWebhook,
    ),
    ("LIABILITIES", "DEFAULT_UPDATE", "LIABILITIES", LiabilitiesDefaultUpdateWebhook),
    (None, "NEW_ACCOUNTS_AVAILABLE", "ITEM", NewAccountsAvailableWebhook),
    (None, "USER_PERMISSION_REVOKED", "ITEM", UserPermissionRevokedWebhook),
    (None, "USER_ACCOUNT_REVOKED", "ITEM", UserAccountRevokedWebhook),
    (None, "PENDING_DISCONNECT", "ITEM", PendingDisconnectWebhook),
    (None, "LOGIN_REPAIRED", "ITEM", ItemLoginRepairedWebhook),
    (None, "RECURRING_TRANSACTIONS_UPDATE", "TRANSACTIONS", RecurringTransactionsUpdateWebhook),
    (None, "SYNC_UPDATES_AVAILABLE", "TRANSACTIONS", SyncUpdatesAvailableWebhook),
    (None, "PRODUCT_READY", "ASSETS", AssetsProductReadyWebhook),
    (None, "ERROR", "ASSETS", AssetsErrorWebhook),
]


@pytest.mark.parametrize(("given", "code", "wtype", "model"), FIREABLE)
async def test_every_code_the_real_endpoint_fires_arrives_as_plaid_documents_it(
    client: Any, receiver: WebhookReceiver, given: str | None, code: str, wtype: str, model: type[Any]
) -> None:
    access_token, item_id, _ = await link(client, ALL_PRODUCTS, receiver.base_url + "/plaid")
    assert (await call(client.sandbox_item_fire_webhook, fire(access_token, code, given))).webhook_fired
    received = await receiver.next()
    parsed(client, received.body, model)
    body = json.loads(received.body)
    assert (body["webhook_type"], body["webhook_code"], body["environment"]) == (wtype, code, "sandbox")
    assert body.get("item_id", item_id) == item_id  # Assets webhooks name a report, not an Item
    for error in [body.get("error")] if isinstance(body.get("error"), dict) else []:
        assert "request_id" not in error and error["status"] == 400  # the webhook shape of the error


@pytest.mark.parametrize(
    ("code", "wtype"),
    [
        ("ERROR", None),  # an Assets webhook: an auth-only Item has no Assets
        ("PRODUCT_READY", None),
        ("DEFAULT_UPDATE", None),  # Transactions
        ("SYNC_UPDATES_AVAILABLE", None),
        ("DEFAULT_UPDATE", "LIABILITIES"),
    ],
)
async def test_a_product_the_item_lacks_is_sandbox_product_not_enabled(
    client: Any, receiver: WebhookReceiver, code: str, wtype: str | None
) -> None:
    access_token, _, _ = await link(client, ["auth"], receiver.base_url + "/plaid")
    status, body = await refused(client, client.sandbox_item_fire_webhook, fire(access_token, code, wtype))
    assert (status, body["error_type"], body["error_code"]) == (
        400,
        "SANDBOX_ERROR",
        "SANDBOX_PRODUCT_NOT_ENABLED",
    )
    assert receiver.received.empty()


@pytest.mark.parametrize(
    ("code", "wtype"),
    [
        ("PENDING_EXPIRATION", None),  # not in the endpoint's enum: only the control lever fires it
        ("WEBHOOK_UPDATE_ACKNOWLEDGED", None),
        ("AUTOMATICALLY_VERIFIED", None),  # /sandbox/item/set_verification_status is the way
        ("VERIFICATION_EXPIRED", None),
        ("NOT_A_CODE", None),
        ("LOGIN_REPAIRED", "AUTH"),  # a type that does not go with the code
        ("DEFAULT_UPDATE", "ITEM"),
    ],
)
async def test_codes_and_types_the_real_endpoint_does_not_take_are_invalid_field(
    client: Any, receiver: WebhookReceiver, code: str, wtype: str | None
) -> None:
    access_token, _, _ = await link(client, ["auth"], receiver.base_url + "/plaid")
    status, body = await refused(client, client.sandbox_item_fire_webhook, fire(access_token, code, wtype))
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_REQUEST", "INVALID_FIELD")
    assert receiver.received.empty()


async def test_an_item_without_a_webhook_is_sandbox_webhook_invalid(client: Any) -> None:
    access_token, _, _ = await link(client, ["auth"], None)
    status, body = await refused(
        client, client.sandbox_item_fire_webhook, fire(access_token, "NEW_ACCOUNTS_AVAILABLE")
    )
    assert (status, body["error_type"], body["error_code"]) == (
        400,
        "SANDBOX_ERROR",
        "SANDBOX_WEBHOOK_INVALID",
    )


async def test_fields_the_endpoint_does_not_declare_are_unknown_fields(
    sandbox: Sandbox, client: Any, receiver: WebhookReceiver
) -> None:
    access_token, _, accounts = await link(client, ["auth"], receiver.base_url + "/plaid")
    body = {
        "client_id": sandbox.config.client_id,
        "secret": sandbox.config.secret,
        "access_token": access_token,
        "webhook_code": "USER_ACCOUNT_REVOKED",
        "account_id": accounts[0].account_id,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/sandbox/item/fire_webhook", json=body) as resp,
    ):
        answer = await resp.json()
    assert (resp.status, answer["error_type"], answer["error_code"]) == (
        400,
        "INVALID_REQUEST",
        "UNKNOWN_FIELDS",
    )
    assert receiver.received.empty()


async def test_a_removed_item_is_item_not_found_and_an_unknown_token_invalid_access_token(
    client: Any,
) -> None:
    access_token, _, _ = await link(client, ["auth"], None)
    await call(client.item_remove, ItemRemoveRequest(access_token=access_token))
    status, body = await refused(client, client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "ITEM_NOT_FOUND")
    status, body = await refused(
        client, client.accounts_get, AccountsGetRequest(access_token="access-sandbox-not-a-real-one")
    )
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_ACCESS_TOKEN")


async def test_an_unknown_path_answers_plaids_json_404(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.url}/no/such/endpoint", json={}) as resp:
        body = await resp.json()
    assert (resp.status, body["error_type"], body["error_code"]) == (404, "INVALID_REQUEST", "NOT_FOUND")
    assert body["request_id"]


# -- Beyond the real Sandbox: /sandbox/control/... ---------------------------------------------


async def control(sandbox: Sandbox, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sandbox.url}/sandbox/control/{path}", json=body) as resp,
    ):
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


CONTROL_ONLY: list[tuple[str, str, type[Any]]] = [
    ("ITEM", "ERROR", ItemErrorWebhook),
    ("ITEM", "PENDING_EXPIRATION", PendingExpirationWebhook),
    ("ITEM", "WEBHOOK_UPDATE_ACKNOWLEDGED", WebhookUpdateAcknowledgedWebhook),
    ("AUTH", "AUTOMATICALLY_VERIFIED", AutomaticallyVerifiedWebhook),
    ("AUTH", "VERIFICATION_EXPIRED", VerificationExpiredWebhook),
]


@pytest.mark.parametrize(("wtype", "code", "model"), CONTROL_ONLY)
async def test_the_control_lever_fires_what_the_real_endpoint_cannot(
    sandbox: Sandbox, client: Any, receiver: WebhookReceiver, wtype: str, code: str, model: type[Any]
) -> None:
    _, item_id, accounts = await link(client, ["auth"], receiver.base_url + "/plaid")
    status, _ = await control(
        sandbox,
        "item/fire_webhook",
        {
            "item_id": item_id,
            "webhook_type": wtype,
            "webhook_code": code,
            "account_id": accounts[1].account_id,
        },
    )
    assert status == 200
    received = await receiver.next()
    parsed(client, received.body, model)
    body = json.loads(received.body)
    assert (body["webhook_type"], body["webhook_code"], body["item_id"]) == (wtype, code, item_id)
    if "account_id" in body:
        assert body["account_id"] == accounts[1].account_id  # the account the lever named


async def test_the_control_lever_breaks_the_login_and_repairs_it_in_the_app_or_elsewhere(
    sandbox: Sandbox, client: Any, receiver: WebhookReceiver
) -> None:
    access_token, item_id, _ = await link(client, ["auth"], receiver.base_url + "/plaid")
    lever = {"item_id": item_id, "webhook_type": "ITEM", "webhook_code": "ERROR"}
    assert (await control(sandbox, "item/fire_webhook", lever))[0] == 200
    assert json.loads((await receiver.next()).body)["error"]["error_code"] == "ITEM_LOGIN_REQUIRED"
    _, body = await refused(client, client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert body["error_code"] == "ITEM_LOGIN_REQUIRED"

    # repaired in update mode in your own app: the login works again, and Plaid sends nothing
    assert (await control(sandbox, "item/repair_login", {"item_id": item_id, "elsewhere": False}))[0] == 200
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))
    assert (await control(sandbox, "item/fire_webhook", lever))[0] == 200
    await receiver.next()
    assert receiver.received.empty()

    # repaired elsewhere: Plaid sends LOGIN_REPAIRED
    assert (await control(sandbox, "item/repair_login", {"item_id": item_id, "elsewhere": True}))[0] == 200
    assert json.loads((await receiver.next()).body)["webhook_code"] == "LOGIN_REPAIRED"
    await call(client.accounts_get, AccountsGetRequest(access_token=access_token))


async def test_a_processor_integration_turned_off_is_invalid_product_until_turned_on(
    sandbox: Sandbox, client: Any
) -> None:
    access_token, _, accounts = await link(client, ["auth"], None)
    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=accounts[0].account_id, processor="atomic"
    )
    assert (await control(sandbox, "processors", {"processor": "atomic", "enabled": False}))[0] == 200
    status, body = await refused(client, client.processor_token_create, create)
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_PRODUCT")
    assert (await control(sandbox, "processors", {"processor": "atomic", "enabled": True}))[0] == 200
    assert (await call(client.processor_token_create, create)).processor_token.startswith(
        "processor-sandbox-"
    )


async def test_control_levers_refuse_what_they_cannot_do(sandbox: Sandbox, client: Any) -> None:
    _, item_id, _ = await link(client, ["auth"], None)
    status, body = await control(
        sandbox,
        "item/fire_webhook",
        {"item_id": "no-such-item", "webhook_type": "ITEM", "webhook_code": "ERROR"},
    )
    assert status == 400 and body["error_code"] == "INVALID_ITEM_ID"
    status, body = await control(
        sandbox, "item/fire_webhook", {"item_id": item_id, "webhook_type": "ITEM", "webhook_code": "NOPE"}
    )
    assert status == 400 and body["error_code"] == "INVALID_FIELD"
    status, body = await control(
        sandbox, "item/fire_webhook", {"item_id": item_id, "webhook_type": "ITEM", "webhook_code": "ERROR"}
    )
    assert status == 400 and body["error_code"] == "SANDBOX_WEBHOOK_INVALID"  # the Item has no webhook
    assert (await control(sandbox, "item/repair_login", {"item_id": item_id}))[0] == 400


async def test_webhook_update_then_the_new_url_gets_the_webhooks(
    client: Any, receiver: WebhookReceiver
) -> None:
    access_token, _, _ = await link(client, ["auth"], None)
    update = ItemWebhookUpdateRequest(access_token=access_token, webhook=receiver.base_url + "/new")
    await call(client.item_webhook_update, update)
    assert json.loads((await receiver.next()).body)["webhook_code"] == "WEBHOOK_UPDATE_ACKNOWLEDGED"
    await call(client.sandbox_item_fire_webhook, fire(access_token, "NEW_ACCOUNTS_AVAILABLE"))
    assert (await receiver.next()).path == "/new"


async def test_sms_microdeposits_verification_verifies_a_same_day_item_only(
    sandbox: Sandbox, client: Any, receiver: WebhookReceiver
) -> None:
    """SMS_MICRODEPOSITS_VERIFICATION is fired for a Same-Day micro-deposit Item (made by the
    create_same_day lever, since Plaid's Sandbox makes those only through Link); the account is then
    manually verified. For an Item of another kind the endpoint refuses it."""
    from plaid.model.hosted_mmd_verification_webhook import HostedMMDVerificationWebhook
    from plaid.model.sandbox_item_set_verification_status_request import (
        SandboxItemSetVerificationStatusRequest,
    )

    status, answer = await control(
        sandbox, "public_token/create_same_day", {"webhook": receiver.base_url + "/p"}
    )
    assert status == 200
    exchanged = await call(
        client.item_public_token_exchange, ItemPublicTokenExchangeRequest(answer["public_token"])
    )
    accounts = (
        await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    ).accounts
    assert [str(a.verification_status) for a in accounts] == ["pending_manual_verification"]
    # set_verification_status is for automated micro-deposits only
    automatic = SandboxItemSetVerificationStatusRequest(
        access_token=exchanged.access_token,
        account_id=accounts[0].account_id,
        verification_status="automatically_verified",
    )
    _, body = await refused(client, client.sandbox_item_set_verification_status, automatic)
    assert body["error_code"] == "INVALID_ACCOUNT_ID"

    await call(
        client.sandbox_item_fire_webhook, fire(exchanged.access_token, "SMS_MICRODEPOSITS_VERIFICATION")
    )
    received = await receiver.next()
    parsed(client, received.body, HostedMMDVerificationWebhook)
    body = json.loads(received.body)
    assert (body["webhook_type"], body["status"], body["account_id"]) == (
        "AUTH",
        "MANUALLY_VERIFIED",
        accounts[0].account_id,
    )
    after = (
        await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    ).accounts
    assert str(after[0].verification_status) == "manually_verified"

    other, _, _ = await link(client, ["auth"], receiver.base_url + "/p")
    _, body = await refused(
        client, client.sandbox_item_fire_webhook, fire(other, "SMS_MICRODEPOSITS_VERIFICATION")
    )
    assert body["error_code"] == "INVALID_FIELD"
    assert receiver.received.empty()
