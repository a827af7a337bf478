"""/link/token/create, /item/get and the emulator's Link lever, through the unmodified plaid-python SDK
(response models on) and, for the lever and the bodies the SDK refuses to build, plain aiohttp."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import plaid
import pytest
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.country_code import CountryCode
from plaid.model.item_get_request import ItemGetRequest
from plaid.model.item_get_response import ItemGetResponse
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.link_token_create_request import LinkTokenCreateRequest
from plaid.model.link_token_create_request_user import LinkTokenCreateRequestUser
from plaid.model.link_token_create_response import LinkTokenCreateResponse
from plaid.model.products import Products

from sandbox.receiver import WebhookReceiver
from tests.helpers import Sandbox, call, plaid_api_for

T = TypeVar("T")
LINK_TOKEN = re.compile(r"link-sandbox-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOW = 1_700_000_000.0


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[Any]:
    client = plaid_api_for(sandbox)
    yield client
    client.api_client.rest_client.pool_manager.clear()


@pytest.fixture
def clock(sandbox: Sandbox) -> list[float]:
    now = [NOW]
    sandbox.state.clock = lambda: now[0]
    return now


async def api_error(fn: Callable[..., Any], *args: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(plaid.ApiException) as info:
        await call(fn, *args)
    return info.value.status, json.loads(info.value.body)


def link_request(**overrides: Any) -> LinkTokenCreateRequest:
    fields: dict[str, Any] = {
        "client_name": "paw",
        "language": "en",
        "country_codes": [CountryCode("US")],
        "user": LinkTokenCreateRequestUser(client_user_id="user-1"),
        "products": [Products("auth")],
        **overrides,
    }
    return LinkTokenCreateRequest(**{k: v for k, v in fields.items() if v is not None})


async def post(sandbox: Sandbox, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(sandbox.url + path, json=body) as response:
            return response.status, await response.json()


async def complete(sandbox: Sandbox, link_token: str, **fields: str) -> tuple[int, dict[str, Any]]:
    return await post(sandbox, "/sandbox/control/link/complete", {"link_token": link_token, **fields})


async def new_item(sandbox: Sandbox, api: Any, webhook: str | None = None) -> tuple[str, str]:
    """link token → Link → public token → exchange; returns (access_token, item_id)."""
    created = await call(api.link_token_create, link_request(webhook=webhook))
    status, body = await complete(sandbox, created.link_token)
    assert status == 200, body
    exchanged = await call(
        api.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token=body["public_token"])
    )
    return exchanged.access_token, exchanged.item_id


def raw_link_body(sandbox: Sandbox, **overrides: Any) -> dict[str, Any]:
    body = {
        "client_id": sandbox.config.client_id,
        "secret": sandbox.config.secret,
        "client_name": "paw",
        "language": "en",
        "country_codes": ["US"],
        "user": {"client_user_id": "user-1"},
        "products": ["auth"],
        **overrides,
    }
    return {k: v for k, v in body.items() if v is not None}


# -- /link/token/create --------------------------------------------------------------------------


async def test_link_token_format_and_expiration(sandbox: Sandbox, api: Any, clock: list[float]) -> None:
    created = await call(api.link_token_create, link_request())
    assert isinstance(created, LinkTokenCreateResponse)
    assert LINK_TOKEN.fullmatch(created.link_token)
    assert created.expiration == dt.datetime.fromtimestamp(NOW + 4 * 3600, dt.UTC)
    assert created.request_id
    assert "hosted_link_url" not in created  # only with a hosted_link request

    status, raw = await post(sandbox, "/link/token/create", raw_link_body(sandbox))
    assert status == 200
    assert set(raw) == {"link_token", "expiration", "request_id"}
    assert raw["expiration"] == "2023-11-15T02:13:20Z"  # NOW + 4 h, ISO 8601


async def test_update_mode_link_token_lasts_30_minutes(
    sandbox: Sandbox, api: Any, clock: list[float]
) -> None:
    access_token, _ = await new_item(sandbox, api)
    created = await call(api.link_token_create, link_request(products=None, access_token=access_token))
    assert LINK_TOKEN.fullmatch(created.link_token)
    assert created.expiration == dt.datetime.fromtimestamp(NOW + 30 * 60, dt.UTC)

    clock[0] += 30 * 60
    status, body = await complete(sandbox, created.link_token)
    assert (status, body["error_code"]) == (400, "INVALID_LINK_TOKEN")


# -- New Item through Link -----------------------------------------------------------------------


async def test_new_item_gets_the_link_tokens_webhook(
    sandbox: Sandbox, api: Any, receiver: WebhookReceiver
) -> None:
    hook = receiver.base_url + "/plaid/from-link-token"
    access_token, item_id = await new_item(sandbox, api, webhook=hook)

    response = await call(api.item_get, ItemGetRequest(access_token=access_token))
    assert isinstance(response, ItemGetResponse)
    item = response.item
    assert (item.item_id, item.webhook, item.institution_id) == (item_id, hook, "ins_109508")
    assert item.error is None
    assert [str(p) for p in item.products] == ["auth"]
    assert [str(p) for p in item.billed_products] == ["auth"]
    assert "auth" not in [str(p) for p in item.available_products]
    assert item.consent_expiration_time is None
    assert item.update_type == "background"
    assert response.status is None
    assert sandbox.state.plaid.items[item_id].webhook == hook


async def test_link_lever_uses_the_public_token_create_path(sandbox: Sandbox, api: Any) -> None:
    created = await call(api.link_token_create, link_request())
    status, body = await complete(
        sandbox, created.link_token, username="user_savings_only", institution_id="ins_109511"
    )
    assert status == 200 and body["public_token"].startswith("public-sandbox-")
    exchanged = await call(
        api.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token=body["public_token"])
    )
    accounts = await call(api.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    assert [str(a.subtype) for a in accounts.accounts] == ["savings"]
    assert accounts.item.institution_id == "ins_109511"

    status, body = await complete(sandbox, created.link_token, username="user_nobody")
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "INVALID_CREDENTIALS")


async def test_link_token_may_be_reused_in_the_sandbox(sandbox: Sandbox, api: Any) -> None:
    # INVALID_LINK_TOKEN docs: "A link_token can only be used once, except when working in the Sandbox".
    created = await call(api.link_token_create, link_request())
    first = await complete(sandbox, created.link_token)
    second = await complete(sandbox, created.link_token)
    assert first[0] == second[0] == 200
    assert first[1]["public_token"] != second[1]["public_token"]
    assert len(sandbox.state.plaid.items) == 2


async def test_link_lever_refuses_unknown_or_expired_tokens(
    sandbox: Sandbox, api: Any, clock: list[float]
) -> None:
    status, body = await complete(sandbox, "link-sandbox-00000000-0000-4000-8000-000000000000")
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_LINK_TOKEN")
    assert body["error"]

    created = await call(api.link_token_create, link_request())
    clock[0] += 4 * 3600 - 1
    assert (await complete(sandbox, created.link_token))[0] == 200
    clock[0] += 1
    status, body = await complete(sandbox, created.link_token)
    assert (status, body["error_code"]) == (400, "INVALID_LINK_TOKEN")
    assert "expired" in body["error"]

    status, body = await post(sandbox, "/sandbox/control/link/complete", {"username": "user_good"})
    assert (status, body) == (400, {"error": "link_token is required"})


# -- Update mode ---------------------------------------------------------------------------------


async def test_update_mode_repairs_the_login_without_a_webhook(
    sandbox: Sandbox, api: Any, receiver: WebhookReceiver
) -> None:
    access_token, item_id = await new_item(sandbox, api, webhook=receiver.base_url + "/plaid")
    sandbox.state.plaid.reset_login(access_token)
    assert json.loads((await receiver.next()).body)["webhook_code"] == "ERROR"

    broken = await call(api.item_get, ItemGetRequest(access_token=access_token))
    error = broken.item.error
    assert (str(error.error_type), error.error_code) == ("ITEM_ERROR", "ITEM_LOGIN_REQUIRED")
    status, body = await api_error(api.accounts_get, AccountsGetRequest(access_token=access_token))
    assert (status, body["error_code"]) == (400, "ITEM_LOGIN_REQUIRED")

    update = await call(api.link_token_create, link_request(products=None, access_token=access_token))
    deliveries = len(sandbox.state.webhook_deliveries)
    status, body = await complete(sandbox, update.link_token)
    assert (status, body) == (200, {"public_token": None})  # the access token does not change

    repaired = await call(api.item_get, ItemGetRequest(access_token=access_token))
    assert repaired.item.error is None and repaired.item.item_id == item_id
    await call(api.accounts_get, AccountsGetRequest(access_token=access_token))
    await sandbox.state.drain()
    assert len(sandbox.state.webhook_deliveries) == deliveries
    assert receiver.received.empty()  # no LOGIN_REPAIRED for a repair through your own app


async def test_item_get_error_has_no_http_status(sandbox: Sandbox, api: Any) -> None:
    # PlaidError.status "will only be returned in the response body when the error information is
    # provided via a webhook".
    access_token, _ = await new_item(sandbox, api)
    sandbox.state.plaid.reset_login(access_token)
    payload = {"client_id": sandbox.config.client_id, "secret": sandbox.config.secret}
    status, body = await post(sandbox, "/item/get", {**payload, "access_token": access_token})
    assert status == 200
    assert body["item"]["error"]["error_code"] == "ITEM_LOGIN_REQUIRED"
    assert body["item"]["error"]["status"] is None
    assert body["status"] is None


async def test_update_mode_webhook_field_has_no_effect(sandbox: Sandbox, api: Any) -> None:
    access_token, item_id = await new_item(sandbox, api, webhook="http://127.0.0.1:9/old")
    update = await call(
        api.link_token_create,
        link_request(products=None, access_token=access_token, webhook="http://127.0.0.1:9/new"),
    )
    assert (await complete(sandbox, update.link_token))[0] == 200
    assert sandbox.state.plaid.items[item_id].webhook == "http://127.0.0.1:9/old"


async def test_removed_item_answers_item_get_as_every_item_endpoint(sandbox: Sandbox, api: Any) -> None:
    access_token, _ = await new_item(sandbox, api)
    await call(api.item_remove, ItemRemoveRequest(access_token=access_token))
    item_status, item_body = await api_error(api.item_get, ItemGetRequest(access_token=access_token))
    accounts_status, accounts_body = await api_error(
        api.accounts_get, AccountsGetRequest(access_token=access_token)
    )
    assert item_status == accounts_status == 400
    assert (item_body["error_type"], item_body["error_code"]) == (
        accounts_body["error_type"],
        accounts_body["error_code"],
    )
    status, body = await api_error(
        api.link_token_create, link_request(products=None, access_token=access_token)
    )
    assert (status, body["error_code"]) == (400, accounts_body["error_code"])


# -- Validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error_type", "error_code", "mentions"),
    [
        ({"client_name": None}, "INVALID_REQUEST", "MISSING_FIELDS", "client_name"),
        (
            {"language": None, "country_codes": None},
            "INVALID_REQUEST",
            "MISSING_FIELDS",
            "language, country_codes",
        ),
        ({"user": {}}, "INVALID_REQUEST", "MISSING_FIELDS", "user.client_user_id"),
        ({"user": None}, "INVALID_REQUEST", "MISSING_FIELDS", "user"),
        ({"client_name": ""}, "INVALID_REQUEST", "INVALID_FIELD", "client_name must be a non-empty string"),
        ({"user": {"client_user_id": ""}}, "INVALID_REQUEST", "INVALID_FIELD", "user.client_user_id"),
        ({"language": "xx"}, "INVALID_REQUEST", "INVALID_FIELD", "language"),
        ({"country_codes": ["ZZ"]}, "INVALID_REQUEST", "INVALID_FIELD", "country_codes"),
        ({"country_codes": []}, "INVALID_REQUEST", "INVALID_FIELD", "country_codes"),
        ({"products": None}, "INVALID_REQUEST", "INVALID_FIELD", "must provide at least one product"),
        ({"products": []}, "INVALID_REQUEST", "INVALID_FIELD", "must provide at least one product"),
        ({"products": ["balance"]}, "INVALID_INPUT", "INVALID_PRODUCT", "balance"),
        ({"products": ["not_a_product"]}, "INVALID_INPUT", "INVALID_PRODUCT", "not_a_product"),
        ({"webhook": "not a url"}, "INVALID_REQUEST", "INVALID_FIELD", "webhook"),
        (
            {"access_token": "access-sandbox-nope", "products": None},
            "INVALID_INPUT",
            "INVALID_ACCESS_TOKEN",
            "",
        ),
        ({"color": "red"}, "INVALID_REQUEST", "UNKNOWN_FIELDS", "color"),
    ],
)
async def test_link_token_create_validates_on_the_wire(
    sandbox: Sandbox, overrides: dict[str, Any], error_type: str, error_code: str, mentions: str
) -> None:
    body = raw_link_body(sandbox, **{k: v for k, v in overrides.items() if v is not None})
    for name in [k for k, v in overrides.items() if v is None]:
        body.pop(name, None)
    status, answer = await post(sandbox, "/link/token/create", body)
    assert (status, answer["error_type"], answer["error_code"]) == (400, error_type, error_code)
    assert mentions in answer["error_message"]
    assert answer["request_id"]
    assert sandbox.state.plaid._link_tokens == {}


async def test_link_token_create_validates_through_the_sdk(sandbox: Sandbox, api: Any) -> None:
    # plaid-python refuses to build some of these (an empty client_name), but sends a null one.
    no_name = LinkTokenCreateRequest(
        client_name=None,
        language="en",
        country_codes=[CountryCode("US")],
        user=LinkTokenCreateRequestUser(client_user_id="user-1"),
        products=[Products("auth")],
        _check_type=False,
    )
    status, body = await api_error(api.link_token_create, no_name)
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_REQUEST", "MISSING_FIELDS")
    assert body["error_message"] == "the following required fields are missing: client_name"

    no_user_id = link_request(user=LinkTokenCreateRequestUser(client_user_id=None, _check_type=False))
    status, body = await api_error(api.link_token_create, no_user_id)
    assert (status, body["error_code"]) == (400, "MISSING_FIELDS")
    assert body["error_message"].endswith("user.client_user_id")

    status, body = await api_error(api.link_token_create, link_request(products=None))
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_REQUEST", "INVALID_FIELD")
    assert body["error_message"] == "must provide at least one product"


async def test_update_mode_products(sandbox: Sandbox, api: Any) -> None:
    access_token, _ = await new_item(sandbox, api)
    # "No products should be added to the products array ... when creating a link_token for update
    # mode, unless" adding a credit product, or auth/identity for Update Mode with Product Validations.
    status, body = await api_error(
        api.link_token_create, link_request(products=[Products("transactions")], access_token=access_token)
    )
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_REQUEST", "INVALID_FIELD")
    assert "update mode" in body["error_message"]
    for allowed in ("auth", "assets"):
        created = await call(
            api.link_token_create, link_request(products=[Products(allowed)], access_token=access_token)
        )
        assert LINK_TOKEN.fullmatch(created.link_token)


async def test_user_id_may_replace_user(sandbox: Sandbox) -> None:
    body = raw_link_body(sandbox, user_id="usr_123")
    body.pop("user")
    status, answer = await post(sandbox, "/link/token/create", body)
    assert status == 200 and LINK_TOKEN.fullmatch(answer["link_token"])
