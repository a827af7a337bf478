"""Every Plaid endpoint the emulator serves, called through the unmodified plaid-python SDK with its
response models on (the default ``_preload_content=True``): the 2xx answer deserializes into the
endpoint's response model, and a refusal's body deserializes as plaid-python's ``PlaidError`` with
the HTTP status Plaid gives its error type. A new endpoint without a case here fails the suite."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import plaid
import pytest
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.accounts_get_response import AccountsGetResponse
from plaid.model.country_code import CountryCode
from plaid.model.item_get_request import ItemGetRequest
from plaid.model.item_get_response import ItemGetResponse
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_public_token_exchange_response import ItemPublicTokenExchangeResponse
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.item_remove_response import ItemRemoveResponse
from plaid.model.item_webhook_update_request import ItemWebhookUpdateRequest
from plaid.model.item_webhook_update_response import ItemWebhookUpdateResponse
from plaid.model.link_token_create_request import LinkTokenCreateRequest
from plaid.model.link_token_create_request_user import LinkTokenCreateRequestUser
from plaid.model.link_token_create_response import LinkTokenCreateResponse
from plaid.model.plaid_error import PlaidError
from plaid.model.processor_auth_get_request import ProcessorAuthGetRequest
from plaid.model.processor_auth_get_response import ProcessorAuthGetResponse
from plaid.model.processor_token_create_request import ProcessorTokenCreateRequest
from plaid.model.processor_token_create_response import ProcessorTokenCreateResponse
from plaid.model.products import Products
from plaid.model.sandbox_item_fire_webhook_request import SandboxItemFireWebhookRequest
from plaid.model.sandbox_item_fire_webhook_response import SandboxItemFireWebhookResponse
from plaid.model.sandbox_item_reset_login_request import SandboxItemResetLoginRequest
from plaid.model.sandbox_item_reset_login_response import SandboxItemResetLoginResponse
from plaid.model.sandbox_item_set_verification_status_request import SandboxItemSetVerificationStatusRequest
from plaid.model.sandbox_item_set_verification_status_response import SandboxItemSetVerificationStatusResponse
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import SandboxPublicTokenCreateRequestOptions
from plaid.model.sandbox_public_token_create_response import SandboxPublicTokenCreateResponse
from plaid.model.webhook_verification_key_get_request import WebhookVerificationKeyGetRequest
from plaid.model.webhook_verification_key_get_response import WebhookVerificationKeyGetResponse

from sandbox.plaid_errors import STATUS_BY_TYPE
from sandbox.plaid_routes import ENDPOINTS
from tests.helpers import Sandbox, call, plaid_api_for

NOWHERE = "http://127.0.0.1:9/webhooks"  # fire_webhook answers before any delivery is tried


@dataclass
class Linked:
    access_token: str
    item_id: str
    account_id: str


async def linked(api: Any, username: str = "user_good") -> Linked:
    options = SandboxPublicTokenCreateRequestOptions(webhook=NOWHERE, override_username=username)
    request = SandboxPublicTokenCreateRequest(
        institution_id="ins_109512" if username == "user_automated_microdeposits" else "ins_109508",
        initial_products=[Products("auth")],
        options=options,
    )
    public_token = (await call(api.sandbox_public_token_create, request)).public_token
    exchanged = await call(api.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))
    accounts = (
        await call(api.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    ).accounts
    return Linked(exchanged.access_token, exchanged.item_id, accounts[0].account_id)


# Each case: (make the successful call → its result, the response model; make a refused call, the
# error_code Plaid answers it with).
Case = Callable[[Any], Awaitable[tuple[Any, type[Any], Callable[[], Any], str]]]


async def public_token_create(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    ok = SandboxPublicTokenCreateRequest(institution_id="ins_109508", initial_products=[Products("auth")])
    bad = SandboxPublicTokenCreateRequest(
        institution_id="ins_109508", initial_products=[Products("not_a_product")]
    )
    return (
        await call(api.sandbox_public_token_create, ok),
        SandboxPublicTokenCreateResponse,
        lambda: api.sandbox_public_token_create(bad),
        "INVALID_PRODUCT",
    )


async def exchange(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    ok = SandboxPublicTokenCreateRequest(institution_id="ins_109508", initial_products=[Products("auth")])
    public_token = (await call(api.sandbox_public_token_create, ok)).public_token
    return (
        await call(api.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token)),
        ItemPublicTokenExchangeResponse,
        lambda: api.item_public_token_exchange(ItemPublicTokenExchangeRequest(public_token)),  # spent
        "INVALID_PUBLIC_TOKEN",
    )


async def accounts_get(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    return (
        await call(api.accounts_get, AccountsGetRequest(access_token=item.access_token)),
        AccountsGetResponse,
        lambda: api.accounts_get(AccountsGetRequest(access_token="access-sandbox-unknown")),
        "INVALID_ACCESS_TOKEN",
    )


async def processor_token_create(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    ok = ProcessorTokenCreateRequest(
        access_token=item.access_token, account_id=item.account_id, processor="atomic"
    )
    bad = ProcessorTokenCreateRequest(
        access_token=item.access_token, account_id="no-such-account", processor="atomic"
    )
    return (
        await call(api.processor_token_create, ok),
        ProcessorTokenCreateResponse,
        lambda: api.processor_token_create(bad),
        "INVALID_ACCOUNT_ID",
    )


async def processor_auth_get(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    create = ProcessorTokenCreateRequest(
        access_token=item.access_token, account_id=item.account_id, processor="atomic"
    )
    token = (await call(api.processor_token_create, create)).processor_token
    return (
        await call(api.processor_auth_get, ProcessorAuthGetRequest(processor_token=token)),
        ProcessorAuthGetResponse,
        lambda: api.processor_auth_get(ProcessorAuthGetRequest(processor_token="processor-sandbox-unknown")),
        "INVALID_PROCESSOR_TOKEN",
    )


async def verification_key_get(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    return (
        None,  # filled in by the test from the emulator's current kid
        WebhookVerificationKeyGetResponse,
        lambda: api.webhook_verification_key_get(WebhookVerificationKeyGetRequest(key_id="no-such-kid")),
        "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
    )


async def fire_webhook(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    ok = SandboxItemFireWebhookRequest(access_token=item.access_token, webhook_code="NEW_ACCOUNTS_AVAILABLE")
    no_hook = await linked(api)
    await call(
        api.item_webhook_update, ItemWebhookUpdateRequest(access_token=no_hook.access_token, webhook=None)
    )
    bad = SandboxItemFireWebhookRequest(
        access_token=no_hook.access_token, webhook_code="NEW_ACCOUNTS_AVAILABLE"
    )
    return (
        await call(api.sandbox_item_fire_webhook, ok),
        SandboxItemFireWebhookResponse,
        lambda: api.sandbox_item_fire_webhook(bad),
        "SANDBOX_WEBHOOK_INVALID",
    )


async def reset_login(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    return (
        await call(
            api.sandbox_item_reset_login, SandboxItemResetLoginRequest(access_token=item.access_token)
        ),
        SandboxItemResetLoginResponse,
        lambda: api.sandbox_item_reset_login(
            SandboxItemResetLoginRequest(access_token="access-sandbox-unknown")
        ),
        "INVALID_ACCESS_TOKEN",
    )


async def set_verification_status(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api, "user_automated_microdeposits")
    ok = SandboxItemSetVerificationStatusRequest(
        access_token=item.access_token,
        account_id=item.account_id,
        verification_status="automatically_verified",
    )
    bad = SandboxItemSetVerificationStatusRequest(
        access_token=item.access_token,
        account_id="no-such-account",
        verification_status="automatically_verified",
    )
    return (
        await call(api.sandbox_item_set_verification_status, ok),
        SandboxItemSetVerificationStatusResponse,
        lambda: api.sandbox_item_set_verification_status(bad),
        "INVALID_ACCOUNT_ID",
    )


async def webhook_update(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    ok = ItemWebhookUpdateRequest(access_token=item.access_token, webhook=NOWHERE + "/new")
    bad = ItemWebhookUpdateRequest(access_token="access-sandbox-unknown", webhook=NOWHERE)
    return (
        await call(api.item_webhook_update, ok),
        ItemWebhookUpdateResponse,
        lambda: api.item_webhook_update(bad),
        "INVALID_ACCESS_TOKEN",
    )


async def item_remove(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    return (
        await call(api.item_remove, ItemRemoveRequest(access_token=item.access_token)),
        ItemRemoveResponse,
        lambda: api.item_remove(ItemRemoveRequest(access_token=item.access_token)),  # removed already
        "ITEM_NOT_FOUND",
    )


async def link_token_create(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    def request(**fields: Any) -> LinkTokenCreateRequest:
        return LinkTokenCreateRequest(
            client_name="paw",
            language="en",
            country_codes=[CountryCode("US")],
            user=LinkTokenCreateRequestUser(client_user_id="u-1"),
            webhook=NOWHERE,
            **fields,
        )

    return (
        await call(api.link_token_create, request(products=[Products("auth")])),
        LinkTokenCreateResponse,
        lambda: api.link_token_create(request()),  # no products, and not update mode
        "INVALID_FIELD",
    )


async def item_get(api: Any) -> tuple[Any, type[Any], Callable[[], Any], str]:
    item = await linked(api)
    return (
        await call(api.item_get, ItemGetRequest(access_token=item.access_token)),
        ItemGetResponse,
        lambda: api.item_get(ItemGetRequest(access_token="access-sandbox-unknown")),
        "INVALID_ACCESS_TOKEN",
    )


CASES: dict[str, Case] = {
    "/sandbox/public_token/create": public_token_create,
    "/item/public_token/exchange": exchange,
    "/accounts/get": accounts_get,
    "/processor/token/create": processor_token_create,
    "/processor/auth/get": processor_auth_get,
    "/webhook_verification_key/get": verification_key_get,
    "/sandbox/item/fire_webhook": fire_webhook,
    "/sandbox/item/reset_login": reset_login,
    "/sandbox/item/set_verification_status": set_verification_status,
    "/item/webhook/update": webhook_update,
    "/item/remove": item_remove,
    "/link/token/create": link_token_create,
    "/item/get": item_get,
}


def test_every_emulated_endpoint_has_a_conformance_case() -> None:
    assert set(CASES) == {e.path for e in ENDPOINTS}


@pytest.mark.parametrize("path", sorted(CASES))
async def test_answers_deserialize_in_plaid_python_and_refusals_are_plaid_errors(
    sandbox: Sandbox, path: str
) -> None:
    api = plaid_api_for(sandbox)
    try:
        answer, model, refused_call, error_code = await CASES[path](api)
        if answer is None:  # the key endpoint: ask for the key that signs now
            answer = await call(
                api.webhook_verification_key_get,
                WebhookVerificationKeyGetRequest(key_id=sandbox.state.current_kid),
            )
        assert isinstance(answer, model) and answer.request_id
        with pytest.raises(plaid.ApiException) as info:
            await call(refused_call)
        error = api.api_client.deserialize(_Raw(info.value.body), (PlaidError,), True)
        assert isinstance(error, PlaidError)
        body = json.loads(info.value.body)
        assert body["error_code"] == error_code
        assert info.value.status == STATUS_BY_TYPE[body["error_type"]]
        assert body["request_id"] and "status" not in body
    finally:
        api.api_client.rest_client.pool_manager.clear()


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data
