"""HTTP face of the emulated Plaid: parse and check the JSON, call the ledger, answer Plaid's way."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sandbox.plaid_errors import PlaidAPIError, invalid_input, invalid_request
from sandbox.plaid_ledger import LinkTokenRequest
from sandbox.state import SANDBOX, SandboxState

JsonObject = dict[str, Any]
Handler = Callable[[SandboxState, JsonObject], JsonObject]
CREDENTIAL_FIELDS = ("client_id", "secret")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    path: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    handle: Handler


# -- Field helpers -------------------------------------------------------------------------------


def _str(body: JsonObject, name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise invalid_request("INVALID_FIELD", f"{name} must be a string")
    return value


def _opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_request("INVALID_FIELD", f"{name} must be a string")
    return value


def _opt_obj(body: JsonObject, name: str) -> JsonObject:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_request("INVALID_FIELD", f"{name} must be an object")
    return value


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_request("INVALID_FIELD", f"{name} must be a list of strings")
    return value


def _webhook_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid_request("INVALID_FIELD", "webhook must be a valid http or https URL")
    return value


# -- Endpoint logic ------------------------------------------------------------------------------


def public_token_create(state: SandboxState, body: JsonObject) -> JsonObject:
    options = _opt_obj(body, "options")
    token = state.plaid.create_public_token(
        _str(body, "institution_id"),
        _str_list(body["initial_products"], "initial_products"),
        _webhook_url(_opt_str(options, "webhook")),
        _opt_str(options, "override_username"),
        _opt_str(options, "override_password"),
    )
    return {"public_token": token}


def public_token_exchange(state: SandboxState, body: JsonObject) -> JsonObject:
    access_token, item_id = state.plaid.exchange(_str(body, "public_token"))
    return {"access_token": access_token, "item_id": item_id}


def accounts_get(state: SandboxState, body: JsonObject) -> JsonObject:
    options = _opt_obj(body, "options")
    account_ids = options.get("account_ids")
    ids = None if account_ids is None else _str_list(account_ids, "options.account_ids")
    return state.plaid.accounts_get(_str(body, "access_token"), ids)


def processor_token_create(state: SandboxState, body: JsonObject) -> JsonObject:
    token = state.plaid.processor_token_create(
        _str(body, "access_token"), _str(body, "account_id"), _str(body, "processor")
    )
    return {"processor_token": token}


def processor_auth_get(state: SandboxState, body: JsonObject) -> JsonObject:
    return state.plaid.processor_auth_get(_str(body, "processor_token"))


def webhook_verification_key_get(state: SandboxState, body: JsonObject) -> JsonObject:
    key = state.key(_str(body, "key_id"))
    if key is None:
        raise invalid_input("INVALID_WEBHOOK_VERIFICATION_KEY_ID", "invalid key_id provided")
    return {"key": key.jwk()}


def fire_webhook(state: SandboxState, body: JsonObject) -> JsonObject:
    state.plaid.fire_webhook(
        _str(body, "access_token"), _str(body, "webhook_code"), _opt_str(body, "webhook_type")
    )
    return {"webhook_fired": True}


def reset_login(state: SandboxState, body: JsonObject) -> JsonObject:
    state.plaid.reset_login(_str(body, "access_token"))
    return {"reset_login": True}


def set_verification_status(state: SandboxState, body: JsonObject) -> JsonObject:
    state.plaid.set_verification_status(
        _str(body, "access_token"), _str(body, "account_id"), _str(body, "verification_status")
    )
    return {}


def item_webhook_update(state: SandboxState, body: JsonObject) -> JsonObject:
    webhook = _webhook_url(_opt_str(body, "webhook"))
    access_token = _str(body, "access_token")
    if webhook is None:
        item = state.plaid.item_for(access_token)
        item.webhook = None
        return {"item": item.to_json()}
    return {"item": state.plaid.webhook_update(access_token, webhook)}


def item_remove(state: SandboxState, body: JsonObject) -> JsonObject:
    state.plaid.remove(_str(body, "access_token"))
    return {}


# LinkTokenCreateRequest's properties in the OpenAPI spec (2020-09-14_1.697.4), plus
# ``cra_report_parameter`` that plaid-python 46 also knows. Fields the emulator does not model are
# accepted and ignored.
LINK_TOKEN_CREATE_FIELDS = (
    "client_name", "language", "country_codes", "user", "user_id", "products",
    "required_if_supported_products", "optional_products", "additional_consented_products", "webhook",
    "access_token", "access_tokens", "link_customization_name", "appearance_mode", "redirect_uri",
    "android_package_name", "institution_data", "card_switch", "account_filters", "eu_config",
    "institution_id", "payment_configuration", "payment_initiation", "employment", "income_verification",
    "base_report", "credit_partner_insights", "cra_options", "cra_report_parameter",
    "consumer_report_permissible_purpose", "auth", "transfer", "update", "identity_verification",
    "statements", "third_party_user_token", "investments", "investments_auth", "hosted_link",
    "transactions", "cashflow_report", "cra_enabled", "identity", "financekit_supported",
    "enable_multi_item_link", "user_token",
)  # fmt: skip
LINK_LANGUAGES = frozenset("da nl en et fr de hi it lv lt no pl pt ro es sv vi".split())
COUNTRY_CODES = frozenset("US GB ES NL FR IE CA DE IT PL DK NO SE EE LT LV PT BE AT FI".split())


def _non_empty_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_request("INVALID_FIELD", f"{name} must be a non-empty string")
    return value


def _missing_link_fields(body: JsonObject) -> list[str]:
    """Required: client_name, language, country_codes, and ``user.client_user_id`` unless the user is
    named by ``user_id``. Absent (or null) is MISSING_FIELDS; present but empty is INVALID_FIELD."""
    missing = [name for name in ("client_name", "language", "country_codes") if body.get(name) is None]
    user = body.get("user")
    if isinstance(user, dict) and user.get("client_user_id") is None:
        missing.append("user.client_user_id")
    elif user is None and body.get("user_id") is None:
        missing.append("user")
    return missing


def _country_codes(value: Any) -> list[str]:
    codes = _str_list(value, "country_codes")
    if not codes or not set(codes) <= COUNTRY_CODES:
        raise invalid_request("INVALID_FIELD", "country_codes must be a non-empty list of supported codes")
    return codes


def _client_user_id(user: Any) -> str | None:
    if user is None:
        return None
    if not isinstance(user, dict):
        raise invalid_request("INVALID_FIELD", "user must be an object")
    return _non_empty_str(user["client_user_id"], "user.client_user_id")


def link_token_request(body: JsonObject) -> LinkTokenRequest:
    """Parses and checks a /link/token/create body (the product rules are the ledger's)."""
    missing = _missing_link_fields(body)
    if missing:
        raise invalid_request(
            "MISSING_FIELDS", f"the following required fields are missing: {', '.join(missing)}"
        )
    _non_empty_str(body["client_name"], "client_name")
    if _non_empty_str(body["language"], "language") not in LINK_LANGUAGES:
        raise invalid_request("INVALID_FIELD", f"language must be one of {', '.join(sorted(LINK_LANGUAGES))}")
    _country_codes(body["country_codes"])
    products = body.get("products")
    return LinkTokenRequest(
        client_user_id=_client_user_id(body.get("user")),
        user_id=_opt_str(body, "user_id"),
        products=() if products is None else tuple(_str_list(products, "products")),
        webhook=_webhook_url(_opt_str(body, "webhook")),
        redirect_uri=_opt_str(body, "redirect_uri"),
        access_token=_opt_str(body, "access_token"),
    )


def _iso8601_seconds(epoch_s: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def link_token_create(state: SandboxState, body: JsonObject) -> JsonObject:
    token, expires_at = state.plaid.link_token_create(link_token_request(body))
    return {"link_token": token, "expiration": _iso8601_seconds(expires_at)}


def item_get(state: SandboxState, body: JsonObject) -> JsonObject:
    return state.plaid.item_get(_str(body, "access_token"))


ENDPOINTS = (
    Endpoint(
        "/sandbox/public_token/create",
        ("institution_id", "initial_products"),
        ("options", "user_token", "user_id"),
        public_token_create,
    ),
    Endpoint("/item/public_token/exchange", ("public_token",), (), public_token_exchange),
    Endpoint("/accounts/get", ("access_token",), ("options",), accounts_get),
    Endpoint(
        "/processor/token/create", ("access_token", "account_id", "processor"), (), processor_token_create
    ),
    Endpoint("/processor/auth/get", ("processor_token",), (), processor_auth_get),
    Endpoint("/webhook_verification_key/get", ("key_id",), (), webhook_verification_key_get),
    Endpoint(
        "/sandbox/item/fire_webhook",
        ("access_token", "webhook_code"),
        ("webhook_type",),
        fire_webhook,
    ),
    Endpoint("/sandbox/item/reset_login", ("access_token",), (), reset_login),
    Endpoint(
        "/sandbox/item/set_verification_status",
        ("access_token", "account_id", "verification_status"),
        (),
        set_verification_status,
    ),
    Endpoint("/item/webhook/update", ("access_token",), ("webhook",), item_webhook_update),
    Endpoint("/item/remove", ("access_token",), ("reason_code", "reason_note"), item_remove),
    # Required fields are checked by link_token_request: an empty client_name is INVALID_FIELD there.
    Endpoint("/link/token/create", (), LINK_TOKEN_CREATE_FIELDS, link_token_create),
    Endpoint("/item/get", ("access_token",), (), item_get),
)


# -- HTTP plumbing -------------------------------------------------------------------------------


def new_request_id(state: SandboxState) -> str:
    return f"{state.rng.getrandbits(60):015x}"


def _authenticate(state: SandboxState, headers: Mapping[str, str], body: JsonObject) -> None:
    client_id = headers.get("PLAID-CLIENT-ID") or body.get("client_id")
    secret = headers.get("PLAID-SECRET") or body.get("secret")
    if not client_id or not secret:
        raise invalid_request(
            "MISSING_FIELDS", "client_id and secret must be provided in the body or in the PLAID-* headers"
        )
    config = state.config
    if not (
        isinstance(client_id, str)
        and isinstance(secret, str)
        and hmac.compare_digest(client_id.encode(), config.client_id.encode())
        and hmac.compare_digest(secret.encode(), config.secret.encode())
    ):
        raise invalid_input("INVALID_API_KEYS", "invalid client_id or secret provided")


def _check_fields(endpoint: Endpoint, body: JsonObject) -> None:
    allowed = {*endpoint.required, *endpoint.optional, *CREDENTIAL_FIELDS}
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise invalid_request(
            "UNKNOWN_FIELDS",
            f"the following fields are not recognized by this endpoint: {', '.join(unknown)}",
        )
    missing = [k for k in endpoint.required if body.get(k) in (None, "")]
    if missing:
        raise invalid_request(
            "MISSING_FIELDS", f"the following required fields are missing: {', '.join(missing)}"
        )


async def _read_body(request: web.Request) -> JsonObject:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise invalid_request("INVALID_BODY", "body could not be parsed as a JSON object")
    return body


def plaid_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        state = request.app[SANDBOX]
        request_id = new_request_id(state)
        try:
            body = await _read_body(request)
            _authenticate(state, request.headers, body)
            _check_fields(endpoint, body)
            result = endpoint.handle(state, body)
        except PlaidAPIError as exc:
            return web.json_response(exc.body(request_id), status=exc.status)
        result["request_id"] = request_id
        return web.json_response(result)

    return handle


def add_routes(app: web.Application) -> None:
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, plaid_handler(endpoint))
