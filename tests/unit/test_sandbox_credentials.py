"""The Sandbox test credentials (usernames, passwords, institutions) as Plaid documents them, driven
through the unmodified plaid-python SDK with its response models on."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import plaid
import pytest
from plaid.api import plaid_api
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.accounts_get_response import AccountsGetResponse
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.plaid_error import PlaidError
from plaid.model.processor_auth_get_request import ProcessorAuthGetRequest
from plaid.model.processor_token_create_request import ProcessorTokenCreateRequest
from plaid.model.products import Products
from plaid.model.sandbox_item_set_verification_status_request import (
    SandboxItemSetVerificationStatusRequest,
)
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import SandboxPublicTokenCreateRequestOptions

from tests.helpers import Sandbox, call

T = TypeVar("T")
FIRST_PLATYPUS = "ins_109508"
HOUNDSTOOTH = "ins_109512"

# (name, official_name, mask, type, subtype, available, current, limit) of user_good / pass_good.
USER_GOOD = [
    ("Plaid Checking", "Plaid Gold Standard 0% Interest Checking", "0000", "depository", "checking", 100, 110, None),
    ("Plaid Saving", "Plaid Silver Standard 0.1% Interest Saving", "1111", "depository", "savings", 200, 210, None),
    ("Plaid CD", "Plaid Bronze Standard 0.2% Interest CD", "2222", "depository", "cd", None, 1000, None),
    ("Plaid Credit Card", "Plaid Diamond 12.5% APR Interest Credit Card", "3333", "credit", "credit card",
     None, 410, 2000),
    ("Plaid Money Market", "Plaid Platinum Standard 1.85% Interest Money Market", "4444", "depository",
     "money market", 43200, 43200, None),
    ("Plaid IRA", None, "5555", "investment", "ira", None, 320.76, None),
    ("Plaid 401k", None, "6666", "investment", "401k", None, 23631.9805, None),
    ("Plaid Student Loan", None, "7777", "loan", "student", None, 65262, None),
    ("Plaid Mortgage", None, "8888", "loan", "mortgage", None, 56302.06, None),
    ("Plaid HSA", "Plaid Cares Health Savings Account", "9001", "depository", "hsa", 6009, 6009, None),
    ("Plaid Cash Management", "Plaid Growth Cash Management", "9002", "depository", "cash management",
     12060, 12060, None),
    ("Plaid Business Credit Card", "Plaid Platinum Small Business Credit Card", "9999", "credit", "credit card",
     4980, 5020, 10000),
]  # fmt: skip
AUTH_SUBTYPES = {"checking", "savings", "cash management"}


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data


async def api_error(
    client: plaid_api.PlaidApi, fn: Callable[..., Any], *args: Any
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a call that must fail; the body must be a PlaidError."""
    with pytest.raises(plaid.ApiException) as info:
        await call(fn, *args)
    body = info.value.body
    assert isinstance(client.api_client.deserialize(_Raw(body.encode()), (PlaidError,), True), PlaidError)
    return info.value.status, json.loads(body)


def create_request(
    username: str | None = None, password: str | None = None, institution_id: str = FIRST_PLATYPUS
) -> SandboxPublicTokenCreateRequest:
    options: dict[str, Any] = {}
    if username is not None:
        options["override_username"] = username
    if password is not None:
        options["override_password"] = password
    return SandboxPublicTokenCreateRequest(
        institution_id=institution_id,
        initial_products=[Products("auth")],
        options=SandboxPublicTokenCreateRequestOptions(**options),
    )


async def exchange(client: plaid_api.PlaidApi, public_token: str) -> tuple[str, AccountsGetResponse]:
    exchanged = await call(client.item_public_token_exchange, ItemPublicTokenExchangeRequest(public_token))
    accounts = await call(client.accounts_get, AccountsGetRequest(access_token=exchanged.access_token))
    assert isinstance(accounts, AccountsGetResponse)
    return exchanged.access_token, accounts


async def link(
    client: plaid_api.PlaidApi,
    username: str | None = None,
    password: str | None = None,
    institution_id: str = FIRST_PLATYPUS,
) -> tuple[str, AccountsGetResponse]:
    """/sandbox/public_token/create → exchange → /accounts/get."""
    created = await call(
        client.sandbox_public_token_create, create_request(username, password, institution_id)
    )
    return await exchange(client, created.public_token)


def described(response: AccountsGetResponse) -> list[tuple[Any, ...]]:
    return [
        (
            a.name,
            a.official_name,
            a.mask,
            str(a.type),
            str(a.subtype),
            a.balances.available,
            a.balances.current,
            a.balances.limit,
        )
        for a in response.accounts
    ]


def item_field(response: AccountsGetResponse, name: str) -> Any:
    value = response.item.get(name)
    return None if value is None else str(value)


async def processor_token(client: plaid_api.PlaidApi, access_token: str, account_id: str) -> str:
    request = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=account_id, processor="atomic"
    )
    return str((await call(client.processor_token_create, request)).processor_token)


def custom(*accounts: dict[str, Any], **top: Any) -> str:
    return json.dumps({"override_accounts": list(accounts), **top})


# -- user_good -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "password"), [(None, None), ("user_good", None), ("user_good", "pass_good")]
)
async def test_user_good_gets_plaids_twelve_accounts(
    client: plaid_api.PlaidApi, username: str | None, password: str | None
) -> None:
    _, response = await link(client, username, password)
    assert described(response) == USER_GOOD
    assert all(a.balances.iso_currency_code == "USD" for a in response.accounts)
    assert all(a.get("verification_status") is None for a in response.accounts)
    assert item_field(response, "institution_id") == FIRST_PLATYPUS
    assert item_field(response, "institution_name") == "First Platypus Bank"
    assert item_field(response, "auth_method") == "INSTANT_AUTH"


async def test_only_checking_savings_and_cash_management_have_ach_numbers(client: plaid_api.PlaidApi) -> None:
    access_token, response = await link(client)
    for account in response.accounts:
        create = ProcessorTokenCreateRequest(
            access_token=access_token, account_id=account.account_id, processor="atomic"
        )
        if str(account.subtype) in AUTH_SUBTYPES:
            token = await processor_token(client, access_token, account.account_id)
            auth = await call(client.processor_auth_get, ProcessorAuthGetRequest(token))
            assert auth.numbers.ach.account.endswith(account.mask)
            assert (auth.numbers.ach.routing, auth.numbers.ach.wire_routing) == ("011401533", "021000021")
        else:
            status, body = await api_error(client, client.processor_token_create, create)
            assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "NO_AUTH_ACCOUNTS")


@pytest.mark.parametrize(
    "password", ["mfa_device", "mfa_questions_1_2", "mfa_selections", "mfa_selections_1_2_3"]
)
async def test_mfa_passwords_log_in_like_pass_good(client: plaid_api.PlaidApi, password: str) -> None:
    _, response = await link(client, "user_good", password)
    assert described(response) == USER_GOOD


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("user_good", "pass_bad"),
        ("user_good", "PASS_GOOD"),
        ("user_good", "error_NOT_A_PLAID_ERROR"),
        ("user_good", "error_INVALID_LINK_TOKEN"),  # not an Item or institution error
        ("user_good", '{"override_accounts": []}'),  # JSON configures user_custom only
        ("user_bad", "pass_good"),
        ("custom_someone", "pass_good"),
    ],
)
async def test_wrong_credentials_are_invalid_credentials(
    sandbox: Sandbox, client: plaid_api.PlaidApi, username: str, password: str
) -> None:
    status, body = await api_error(
        client, client.sandbox_public_token_create, create_request(username, password)
    )
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "INVALID_CREDENTIALS")
    assert body["error_message"] == "the provided credentials were not correct"
    assert body["display_message"] == "The provided credentials were not correct. Please try again."
    assert body["request_id"]
    assert sandbox.state.plaid.items == {}


ERROR_PASSWORDS = [
    ("INSUFFICIENT_CREDENTIALS", "ITEM_ERROR", 400),
    ("INVALID_CREDENTIALS", "ITEM_ERROR", 400),
    ("INVALID_MFA", "ITEM_ERROR", 400),
    ("INVALID_SEND_METHOD", "ITEM_ERROR", 400),
    ("ITEM_LOCKED", "ITEM_ERROR", 400),
    ("ITEM_LOGIN_REQUIRED", "ITEM_ERROR", 400),
    ("ITEM_NOT_SUPPORTED", "ITEM_ERROR", 400),
    ("MFA_NOT_SUPPORTED", "ITEM_ERROR", 400),
    ("NO_ACCOUNTS", "ITEM_ERROR", 400),
    ("USER_INPUT_TIMEOUT", "ITEM_ERROR", 400),
    ("USER_SETUP_REQUIRED", "ITEM_ERROR", 400),
    ("INSTITUTION_DOWN", "INSTITUTION_ERROR", 400),
    ("INSTITUTION_NOT_RESPONDING", "INSTITUTION_ERROR", 400),
    ("INSTITUTION_NOT_AVAILABLE", "INSTITUTION_ERROR", 400),
    ("INSTITUTION_NO_LONGER_SUPPORTED", "INSTITUTION_ERROR", 400),
    ("INTERNAL_SERVER_ERROR", "API_ERROR", 500),
]


@pytest.mark.parametrize(("code", "error_type", "http_status"), ERROR_PASSWORDS)
async def test_error_passwords_fail_the_create_call(
    sandbox: Sandbox, client: plaid_api.PlaidApi, code: str, error_type: str, http_status: int
) -> None:
    request = create_request("user_good", f"error_{code}")
    status, body = await api_error(client, client.sandbox_public_token_create, request)
    assert (status, body["error_type"], body["error_code"]) == (http_status, error_type, code)
    assert body["error_message"]
    assert body["request_id"]
    assert sandbox.state.plaid.items == {}


# -- Automated micro-deposits --------------------------------------------------------------------


async def test_microdeposits_good_at_houndstooth_is_pending_automatic_verification(
    client: plaid_api.PlaidApi,
) -> None:
    access_token, response = await link(client, "user_good", "microdeposits_good", HOUNDSTOOTH)
    (account,) = response.accounts
    assert (account.name, account.mask, str(account.type), str(account.subtype)) == (
        "Plaid Checking",
        "0000",
        "depository",
        "checking",
    )
    assert str(account.verification_status) == "pending_automatic_verification"
    assert item_field(response, "institution_id") == HOUNDSTOOTH
    assert item_field(response, "institution_name") == "Houndstooth Bank"
    assert item_field(response, "auth_method") == "AUTOMATED_MICRODEPOSITS"

    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=account.account_id, processor="atomic"
    )
    status, body = await api_error(client, client.processor_token_create, create)
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "PRODUCT_NOT_READY")
    await call(
        client.sandbox_item_set_verification_status,
        SandboxItemSetVerificationStatusRequest(
            access_token=access_token,
            account_id=account.account_id,
            verification_status="automatically_verified",
        ),
    )
    token = await processor_token(client, access_token, account.account_id)
    assert (
        await call(client.processor_auth_get, ProcessorAuthGetRequest(token))
    ).numbers.ach.account.endswith("0000")


@pytest.mark.parametrize("institution_id", [FIRST_PLATYPUS, "ins_109509", "ins_109511"])
async def test_microdeposits_good_elsewhere_is_an_ordinary_login(
    client: plaid_api.PlaidApi, institution_id: str
) -> None:
    _, response = await link(client, "user_good", "microdeposits_good", institution_id)
    assert described(response) == USER_GOOD
    assert item_field(response, "auth_method") == "INSTANT_AUTH"


# -- user_custom ---------------------------------------------------------------------------------


async def test_user_custom_builds_the_configured_accounts(client: plaid_api.PlaidApi) -> None:
    config = custom(
        {
            "type": "depository",
            "subtype": "checking",
            "starting_balance": 1234.5,
            "force_available_balance": 1000,
            "currency": "USD",
            "meta": {"name": "Household", "official_name": "Household Checking Plus", "mask": "4321"},
            "numbers": {
                "account": "9900001234567",
                "ach_routing": "322271627",
                "ach_wire_routing": "021000021",
            },
            "transactions": [],
        },
        {
            "type": "credit",
            "subtype": "credit card",
            "starting_balance": 300,
            "has_null_available_balance": True,
            "meta": {"name": "Card", "limit": 5000, "mask": "77"},
        },
        {"type": "depository", "subtype": "savings", "starting_balance": 50, "meta": {"mask": ""}},
        seed="any",
        version="2",
    )
    access_token, response = await link(client, "user_custom", config)
    assert described(response) == [
        ("Household", "Household Checking Plus", "4321", "depository", "checking", 1000, 1234.5, None),
        ("Card", None, "77", "credit", "credit card", None, 300, 5000),
        ("Plaid Savings", None, "", "depository", "savings", 50, 50, None),
    ]
    assert item_field(response, "auth_method") == "INSTANT_AUTH"
    checking = response.accounts[0]
    auth = await call(
        client.processor_auth_get,
        ProcessorAuthGetRequest(await processor_token(client, access_token, checking.account_id)),
    )
    assert (auth.numbers.ach.account, auth.numbers.ach.routing, auth.numbers.ach.wire_routing) == (
        "9900001234567",
        "322271627",
        "021000021",
    )


async def test_user_custom_mask_defaults_to_the_account_number(client: plaid_api.PlaidApi) -> None:
    config = custom({"type": "depository", "subtype": "checking", "numbers": {"account": "1234567890"}})
    _, response = await link(client, "user_custom", config)
    (account,) = response.accounts
    assert account.mask == "7890"
    assert account.balances.current is not None  # random when not configured
    assert account.balances.available == account.balances.current


async def test_user_custom_empty_object_gives_one_random_account(client: plaid_api.PlaidApi) -> None:
    _, response = await link(client, "user_custom", "{}")
    (account,) = response.accounts
    assert (str(account.type), str(account.subtype)) == ("depository", "checking")
    assert account.balances.current is not None


@pytest.mark.parametrize(
    ("force_error", "error_type", "code", "http_status"),
    [
        ("ITEM_LOCKED", "ITEM_ERROR", "ITEM_LOCKED", 400),
        ("ITEM_LOGIN_REQUIRED", "ITEM_ERROR", "ITEM_LOGIN_REQUIRED", 400),
        ("INVALID_CREDENTIALS", "ITEM_ERROR", "INVALID_CREDENTIALS", 400),
        ("NO_ACCOUNTS", "ITEM_ERROR", "NO_ACCOUNTS", 400),
        ("USER_SETUP_REQUIRED", "ITEM_ERROR", "USER_SETUP_REQUIRED", 400),
        ("INSTITUTION_NOT_RESPONDING", "INSTITUTION_ERROR", "INSTITUTION_NOT_RESPONDING", 400),
        ("INSTITUTION_NO_LONGER_SUPPORTED", "INSTITUTION_ERROR", "INSTITUTION_NO_LONGER_SUPPORTED", 400),
        ("INVALID_LINK_TOKEN", "INVALID_INPUT", "INVALID_LINK_TOKEN", 400),
        ("PLAID_ERROR", "API_ERROR", "INTERNAL_SERVER_ERROR", 500),
    ],
)
async def test_user_custom_force_error_fails_the_create_call(
    sandbox: Sandbox,
    client: plaid_api.PlaidApi,
    force_error: str,
    error_type: str,
    code: str,
    http_status: int,
) -> None:
    config = custom({"type": "depository", "subtype": "checking"}, force_error=force_error)
    status, body = await api_error(
        client, client.sandbox_public_token_create, create_request("user_custom", config)
    )
    assert (status, body["error_type"], body["error_code"]) == (http_status, error_type, code)
    assert sandbox.state.plaid.items == {}


CHECKING: dict[str, Any] = {"type": "depository", "subtype": "checking"}


@pytest.mark.parametrize(
    "password",
    [
        "pass_good",
        "{not json",
        "[]",
        '"a string"',
        json.dumps({"override_accounts": {}}),
        json.dumps({"override_accounts": [42]}),
        custom({"subtype": "checking"}),
        custom({"type": "depository"}),
        custom({"type": "bank", "subtype": "checking"}),
        custom({"type": "depository", "subtype": "chequing"}),
        custom({**CHECKING, "starting_balance": "100"}),
        custom({**CHECKING, "starting_balance": True}),
        custom({**CHECKING, "force_available_balance": 1, "has_null_available_balance": True}),
        custom({**CHECKING, "has_null_available_balance": "yes"}),
        custom({**CHECKING, "currency": "usd"}),
        custom({**CHECKING, "meta": {"mask": "12345"}}),
        custom({**CHECKING, "meta": {"name": 7}}),
        custom({**CHECKING, "meta": []}),
        custom({**CHECKING, "numbers": {"account": "12-34"}}),
        custom({**CHECKING, "numbers": {"ach_routing": "123456789"}}),  # fails the ABA checksum
        custom({**CHECKING, "numbers": {"ach_wire_routing": "02100002"}}),
        custom(*[CHECKING] * 11),
        custom(CHECKING, force_error="NOT_A_FORCEABLE_ERROR"),
        custom(CHECKING, seed=42),
    ],
)
async def test_malformed_user_custom_configuration_is_invalid_credentials(
    sandbox: Sandbox, client: plaid_api.PlaidApi, password: str
) -> None:
    status, body = await api_error(
        client, client.sandbox_public_token_create, create_request("user_custom", password)
    )
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "INVALID_CREDENTIALS")
    assert sandbox.state.plaid.items == {}


async def test_user_custom_takes_ten_accounts(client: plaid_api.PlaidApi) -> None:
    _, response = await link(client, "user_custom", custom(*[CHECKING] * 10))
    assert len(response.accounts) == 10


# -- Institutions --------------------------------------------------------------------------------

SANDBOX_INSTITUTIONS = [
    ("ins_109508", "First Platypus Bank"),
    ("ins_130016", "First Platypus Balance Bank"),
    ("ins_109509", "First Gingham Credit Union"),
    ("ins_109510", "Tattersall Federal Credit Union"),
    ("ins_109511", "Tartan Bank"),
    ("ins_109512", "Houndstooth Bank"),
    ("ins_43", "Tartan-Dominion Bank of Canada"),
    ("ins_116834", "Flexible Platypus Open Banking"),
    ("ins_117650", "Royal Bank of Plaid"),
    ("ins_127287", "Platypus OAuth Bank"),
    ("ins_132241", "First Platypus OAuth App2App Bank"),
    ("ins_117181", "Flexible Platypus Open Banking"),
    ("ins_135858", "Windowpane Bank"),
]


@pytest.mark.parametrize(("institution_id", "name"), SANDBOX_INSTITUTIONS)
async def test_sandbox_institutions_are_known(
    client: plaid_api.PlaidApi, institution_id: str, name: str
) -> None:
    _, response = await link(client, institution_id=institution_id)
    assert (item_field(response, "institution_id"), item_field(response, "institution_name")) == (
        institution_id,
        name,
    )


@pytest.mark.parametrize("institution_id", ["ins_999999", "ins_1", "ins_", "ins_109508 ", "platypus"])
async def test_unknown_institution_is_invalid_institution(
    sandbox: Sandbox, client: plaid_api.PlaidApi, institution_id: str
) -> None:
    request = create_request(institution_id=institution_id)
    status, body = await api_error(client, client.sandbox_public_token_create, request)
    assert (status, body["error_type"], body["error_code"]) == (400, "INVALID_INPUT", "INVALID_INSTITUTION")
    assert body["error_message"] == "invalid institution_id provided"
    assert sandbox.state.plaid.items == {}


async def test_institution_is_checked_before_the_credentials(client: plaid_api.PlaidApi) -> None:
    request = create_request("user_good", "error_ITEM_LOCKED", "ins_999999")
    _, body = await api_error(client, client.sandbox_public_token_create, request)
    assert body["error_code"] == "INVALID_INSTITUTION"


# -- Aliases -------------------------------------------------------------------------------------


def without_ids(response: AccountsGetResponse) -> list[dict[str, Any]]:
    accounts = [a.to_dict() for a in response.accounts]
    for account in accounts:
        account.pop("account_id")
    return accounts


async def test_user_savings_only_is_user_custom_with_one_savings_account(client: plaid_api.PlaidApi) -> None:
    _, alias = await link(client, "user_savings_only")
    real_config = custom(
        {
            "type": "depository",
            "subtype": "savings",
            "starting_balance": 210,
            "force_available_balance": 200,
            "meta": {
                "name": "Plaid Saving",
                "official_name": "Plaid Silver Standard 0.1% Interest Saving",
                "mask": "1111",
            },
        }
    )
    _, real = await link(client, "user_custom", real_config)
    assert without_ids(alias) == without_ids(real)
    assert described(alias) == [USER_GOOD[1]]


async def test_user_no_depository_is_user_custom_without_auth_accounts(client: plaid_api.PlaidApi) -> None:
    access_token, alias = await link(client, "user_no_depository")
    assert described(alias) == [USER_GOOD[3], USER_GOOD[7], USER_GOOD[8]]
    assert item_field(alias, "auth_method") is None
    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=alias.accounts[0].account_id, processor="atomic"
    )
    status, body = await api_error(client, client.processor_token_create, create)
    assert (status, body["error_code"]) == (400, "NO_AUTH_ACCOUNTS")


@pytest.mark.parametrize("institution_id", [FIRST_PLATYPUS, HOUNDSTOOTH])
async def test_user_automated_microdeposits_is_microdeposits_good_at_houndstooth(
    client: plaid_api.PlaidApi, institution_id: str
) -> None:
    _, alias = await link(client, "user_automated_microdeposits", None, institution_id)
    _, real = await link(client, "user_good", "microdeposits_good", HOUNDSTOOTH)
    assert without_ids(alias) == without_ids(real)
    assert item_field(alias, "institution_id") == HOUNDSTOOTH
    assert item_field(alias, "auth_method") == "AUTOMATED_MICRODEPOSITS"


# -- Same-Day micro-deposits (emulator-only control) ---------------------------------------------


async def control_same_day(sandbox: Sandbox, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        url = sandbox.url + "/sandbox/control/public_token/create_same_day"
        async with http.post(url, json=body) as response:
            return response.status, await response.json()


async def test_same_day_control_gives_a_pending_manual_verification_item(
    sandbox: Sandbox, client: plaid_api.PlaidApi
) -> None:
    status, created = await control_same_day(sandbox, {"webhook": "http://127.0.0.1:9/hook"})
    assert status == 200 and created["public_token"].startswith("public-sandbox-")
    access_token, response = await exchange(client, created["public_token"])
    (account,) = response.accounts
    assert (account.name, account.mask, str(account.type), str(account.subtype)) == (
        "Plaid Checking",
        "0000",
        "depository",
        "checking",
    )
    assert str(account.verification_status) == "pending_manual_verification"
    assert (account.balances.available, account.balances.current) == (None, None)
    assert item_field(response, "institution_id") is None
    assert item_field(response, "institution_name") is None
    assert item_field(response, "auth_method") == "SAME_DAY_MICRODEPOSITS"
    assert item_field(response, "webhook") == "http://127.0.0.1:9/hook"
    assert [str(p) for p in response.item.products] == ["auth"]

    create = ProcessorTokenCreateRequest(
        access_token=access_token, account_id=account.account_id, processor="atomic"
    )
    status, body = await api_error(client, client.processor_token_create, create)
    assert (status, body["error_type"], body["error_code"]) == (400, "ITEM_ERROR", "PRODUCT_NOT_READY")
    # the public token is one-time like any other
    _, body = await api_error(
        client, client.item_public_token_exchange, ItemPublicTokenExchangeRequest(created["public_token"])
    )
    assert body["error_code"] == "INVALID_PUBLIC_TOKEN"


@pytest.mark.parametrize(
    "body",
    [
        {"initial_products": ["transactions"]},
        {"initial_products": ["auth", "transactions"]},
        {"initial_products": []},
        {"initial_products": "auth"},
        {"initial_products": [1]},
        {"webhook": "ftp://example.com/hook"},
        {"webhook": 5},
    ],
)
async def test_same_day_control_refuses_bad_bodies(sandbox: Sandbox, body: dict[str, Any]) -> None:
    status, answer = await control_same_day(sandbox, body)
    assert status == 400 and answer["error"]
    assert sandbox.state.plaid.items == {}
