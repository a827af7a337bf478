"""The emulated Plaid: Items, their tokens and accounts, and what each endpoint does to them.

Methods take typed arguments (the routes parse the JSON), return JSON-ready dicts and raise
:class:`~sandbox.plaid_errors.PlaidAPIError`. Webhooks go out through the ``emit`` callback.
Every lookup is a dict lookup: no scans per request.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Callable
from typing import Any

from sandbox import credentials, webhook_bodies
from sandbox.accounts import (
    PENDING_AUTOMATIC_VERIFICATION,
    PENDING_VERIFICATION,
    SAME_DAY_CHECKING,
    SandboxAccount,
    account_number,
    build_accounts,
    plaid_id,
)
from sandbox.plaid_errors import (
    invalid_input,
    invalid_request,
    item_error,
    item_login_required,
    item_login_required_object,
)

PUBLIC_TOKEN_TTL_S = 30 * 60
WebhookEmitter = Callable[[str | None, dict[str, Any]], None]

PRODUCTS = frozenset(
    {
        "assets",
        "auth",
        "balance",
        "identity",
        "investments",
        "liabilities",
        "transactions",
        "signal",
        "statements",
    }
)
# The Sandbox-only institutions of plaid.com/docs/sandbox/institutions/ (all of them; Plaid's Sandbox
# also has every Production institution, which this emulator does not: their ids are INVALID_INSTITUTION
# here). Every one logs in with the test credentials alike; their special behaviours (OAuth, non-US
# numbers, the unhealthy and unsupported banks) are not modelled.
INSTITUTIONS = {
    "ins_109508": "First Platypus Bank",
    "ins_130016": "First Platypus Balance Bank",
    "ins_109509": "First Gingham Credit Union",
    "ins_109510": "Tattersall Federal Credit Union",
    "ins_109511": "Tartan Bank",
    "ins_109512": "Houndstooth Bank",
    "ins_43": "Tartan-Dominion Bank of Canada",
    "ins_116834": "Flexible Platypus Open Banking",
    "ins_117650": "Royal Bank of Plaid",
    "ins_127287": "Platypus OAuth Bank",
    "ins_132241": "First Platypus OAuth App2App Bank",
    "ins_117181": "Flexible Platypus Open Banking",
    "ins_135858": "Windowpane Bank",
    "ins_132363": "Unhealthy Platypus Bank - Degraded",
    "ins_132361": "Unhealthy Platypus Bank - Down",
    "ins_133402": "Unsupported Platypus Bank - Institution Not Supported",
    "ins_133502": "Platypus Bank RUX Auth",
    "ins_133503": "Platypus Bank RUX Match",
}
SAME_DAY_MICRODEPOSITS = "SAME_DAY_MICRODEPOSITS"
PROCESSORS = frozenset(
    "dwolla galileo modern_treasury ocrolus vesta drivewealth vopay achq check checkbook circle sila_money "
    "rize svb_api unit wyre lithic alpaca astra moov treasury_prime marqeta checkout solid highnote gemini "
    "apex_clearing gusto adyen atomic i2c wepay riskified utb adp_roll fortress_trust bond bakkt teal "
    "zero_hash taba_pay knot sardine alloy finix nuvei layer boom seamlessach stake wedbush esusu ansa "
    "scribeup straddle loanpro bloom_credit sfox brale parafin cardless open_ledger valon gainbridge "
    "cardlytics pinwheel thread_bank array fiant oatfi curinos frame interchecks interchange atomicfi pay "
    "natural kanmon kick increase airwallex cybrid bizcap webull kikoff_enterprise adyen_ca bitgo "
    "anchorage".split()
)
SETTABLE_VERIFICATION = frozenset({"automatically_verified", "verification_expired"})


@dataclasses.dataclass
class SandboxItem:
    item_id: str
    institution_id: str | None  # None for an Item without an institution connection (Same-Day)
    institution_name: str | None
    products: list[str]
    webhook: str | None
    accounts: dict[str, SandboxAccount]
    access_token: str | None = None
    login_required: bool = False
    removed: bool = False
    # How the Item's Auth data came; None when no account has Auth data (OpenAPI ItemAuthMethod).
    auth_method: str | None = None

    def to_json(self) -> dict[str, Any]:
        """An Item object."""
        return {
            "item_id": self.item_id,
            "institution_id": self.institution_id,
            "institution_name": self.institution_name,
            "webhook": self.webhook,
            "error": item_login_required_object() if self.login_required else None,
            "available_products": sorted(PRODUCTS - set(self.products)),
            "billed_products": list(self.products),
            "products": list(self.products),
            "consented_products": list(self.products),
            "consent_expiration_time": None,
            "update_type": "background",
            "auth_method": self.auth_method,
        }

    def first_account(self, predicate: Callable[[SandboxAccount], bool]) -> SandboxAccount | None:
        return next((a for a in self.accounts.values() if predicate(a)), None)


def _check_products(products: list[str]) -> None:
    if not products:
        raise invalid_request("INVALID_FIELD", "initial_products must contain at least one product")
    unknown = sorted(set(products) - PRODUCTS)
    if unknown:
        raise invalid_input("INVALID_PRODUCT", f"invalid products provided: {', '.join(unknown)}")


@dataclasses.dataclass
class _PublicToken:
    item_id: str
    created_at: float
    used: bool = False


@dataclasses.dataclass(frozen=True)
class _ProcessorGrant:
    item_id: str
    account_id: str
    processor: str


class PlaidLedger:
    def __init__(self, now: Callable[[], float], rng: random.Random, emit: WebhookEmitter) -> None:
        self._now = now
        self._rng = rng
        self._emit = emit
        self.items: dict[str, SandboxItem] = {}
        self._public: dict[str, _PublicToken] = {}
        self._access: dict[str, SandboxItem] = {}
        self._processor: dict[str, _ProcessorGrant] = {}

    # -- Link ---------------------------------------------------------------------------------

    def create_public_token(
        self,
        institution_id: str,
        products: list[str],
        webhook: str | None,
        username: str | None,
        password: str | None = None,
    ) -> str:
        """``/sandbox/public_token/create``: the test credentials pick the Item (see
        :mod:`sandbox.credentials`); errors they simulate fail this call."""
        if institution_id not in INSTITUTIONS:
            raise invalid_input("INVALID_INSTITUTION", "invalid institution_id provided")
        _check_products(products)
        recipe = credentials.resolve(username, password, institution_id, self._rng)
        accounts = build_accounts(recipe.accounts, self._rng)
        item = SandboxItem(
            item_id=plaid_id(self._rng),
            institution_id=recipe.institution_id,
            institution_name=INSTITUTIONS[recipe.institution_id],
            products=list(dict.fromkeys(products)),
            webhook=webhook,
            accounts={a.account_id: a for a in accounts},
            auth_method=recipe.auth_method if any(a.has_ach_numbers for a in accounts) else None,
        )
        return self._issue_public_token(item)

    def create_same_day_public_token(self, products: list[str], webhook: str | None) -> str:
        """Emulator-only: the public token Link would give after a Same-Day Micro-deposits session
        (one checking account, ``pending_manual_verification``, no institution). Plaid's Sandbox
        makes such Items only through Link, never through /sandbox/public_token/create."""
        _check_products(products)
        if set(products) != {"auth"}:
            # "products array should include only auth or transfer when using same-day manual
            # micro-deposit verification" (plaid.com/docs/auth/coverage/same-day/)
            raise invalid_request("INVALID_FIELD", "Same-Day micro-deposit Items take only the auth product")
        item = SandboxItem(
            item_id=plaid_id(self._rng),
            institution_id=None,
            institution_name=None,
            products=["auth"],
            webhook=webhook,
            accounts={a.account_id: a for a in build_accounts((SAME_DAY_CHECKING,), self._rng)},
            auth_method=SAME_DAY_MICRODEPOSITS,
        )
        return self._issue_public_token(item)

    def _issue_public_token(self, item: SandboxItem) -> str:
        self.items[item.item_id] = item
        token = f"public-sandbox-{uuid.uuid4()}"
        self._public[token] = _PublicToken(item.item_id, self._now())
        return token

    def exchange(self, public_token: str) -> tuple[str, str]:
        record = self._public.get(public_token) if public_token.startswith("public-") else None
        if record is None:
            raise invalid_input("INVALID_PUBLIC_TOKEN", "provided public token is in an invalid format")
        if record.used:
            raise invalid_input("INVALID_PUBLIC_TOKEN", "provided public token has already been exchanged")
        if self._now() - record.created_at > PUBLIC_TOKEN_TTL_S:
            raise invalid_input(
                "INVALID_PUBLIC_TOKEN",
                "provided public token is expired. Public tokens expire 30 minutes after creation at which "
                "point they can no longer be exchanged",
            )
        record.used = True
        item = self.items[record.item_id]
        token = f"access-sandbox-{uuid.uuid4()}"
        item.access_token = token
        self._access[token] = item
        return token, item.item_id

    # -- Items --------------------------------------------------------------------------------

    def item_for(self, access_token: str) -> SandboxItem:
        item = self._access.get(access_token)
        if item is None or item.removed:
            raise invalid_input("INVALID_ACCESS_TOKEN", "provided access token is in an invalid format")
        return item

    def accounts_get(self, access_token: str, account_ids: list[str] | None) -> dict[str, Any]:
        item = self.item_for(access_token)
        if item.login_required:
            raise item_login_required()
        if account_ids is None:
            accounts = list(item.accounts.values())
        else:
            missing = [a for a in account_ids if a not in item.accounts]
            if missing:
                raise invalid_input("INVALID_ACCOUNT_ID", "one or more of the account IDs is invalid")
            accounts = [item.accounts[a] for a in account_ids]
        return {"accounts": [a.to_json() for a in accounts], "item": item.to_json()}

    def webhook_update(self, access_token: str, webhook: str) -> dict[str, Any]:
        item = self.item_for(access_token)
        item.webhook = webhook
        self._emit(webhook, webhook_bodies.webhook_update_acknowledged(item.item_id, webhook))
        return item.to_json()

    def remove(self, access_token: str) -> None:
        """Removes the Item: its access token and every processor token for it stop working."""
        self.item_for(access_token).removed = True

    def _account(self, item: SandboxItem, account_id: str) -> SandboxAccount:
        account = item.accounts.get(account_id)
        if account is None:
            raise invalid_input("INVALID_ACCOUNT_ID", "one or more of the account IDs is invalid")
        return account

    # -- Processor tokens ---------------------------------------------------------------------

    def processor_token_create(self, access_token: str, account_id: str, processor: str) -> str:
        if processor not in PROCESSORS:
            raise invalid_request("INVALID_FIELD", f"processor must be a known processor, got {processor!r}")
        item = self.item_for(access_token)
        account = self._account(item, account_id)
        if account.verification_status in PENDING_VERIFICATION:
            raise item_error(
                "PRODUCT_NOT_READY",
                "the requested product is not yet ready. please provide a webhook or try the request again "
                "later",
            )
        if not account.has_ach_numbers:
            raise item_error("NO_AUTH_ACCOUNTS", "account_id is not a checking or savings account")
        token = f"processor-sandbox-{uuid.uuid4()}"
        self._processor[token] = _ProcessorGrant(item.item_id, account_id, processor)
        return token

    def processor_auth_get(self, processor_token: str) -> dict[str, Any]:
        grant = self._processor.get(processor_token)
        item = self.items[grant.item_id] if grant is not None else None
        if grant is None or item is None or item.removed:
            raise invalid_input("INVALID_PROCESSOR_TOKEN", "provided processor token is in an invalid format")
        if item.login_required:
            raise item_login_required()
        account = item.accounts[grant.account_id]
        if account.verification_status in PENDING_VERIFICATION:
            raise item_error("PRODUCT_NOT_READY", "the requested product is not yet ready")
        if account.verification_status == "verification_expired":
            raise item_error("NO_AUTH_ACCOUNTS", "the account's micro-deposit verification has expired")
        return {
            "account": account.to_json(),
            "numbers": {"ach": account.ach_json(), "eft": None, "international": None, "bacs": None},
        }

    # -- Sandbox controls ---------------------------------------------------------------------

    def reset_login(self, access_token: str) -> None:
        item = self.item_for(access_token)
        item.login_required = True
        self._emit(item.webhook, webhook_bodies.item_error(item.item_id))

    def set_verification_status(self, access_token: str, account_id: str, status: str) -> None:
        item = self.item_for(access_token)
        if status not in SETTABLE_VERIFICATION:
            raise invalid_request(
                "INVALID_FIELD", "verification_status must be automatically_verified or verification_expired"
            )
        account = self._account(item, account_id)
        if account.verification_status is None:
            raise invalid_input(
                "INVALID_ACCOUNT_ID", "the account is not in the automated micro-deposits verification flow"
            )
        account.verification_status = status
        if status == "automatically_verified":
            body = webhook_bodies.automatically_verified(item.item_id, account_id)
        else:
            body = webhook_bodies.verification_expired(item.item_id, account_id)
        self._emit(item.webhook, body)

    def fire_webhook(
        self, access_token: str, code: str, webhook_type: str | None, account_id: str | None
    ) -> None:
        item = self.item_for(access_token)
        expected_type = webhook_bodies.webhook_type_for(code)
        if expected_type is None or (webhook_type is not None and webhook_type != expected_type):
            raise invalid_input(
                "INVALID_FIELD", f"webhook_code {code!r} is not supported for webhook_type {webhook_type!r}"
            )
        if not item.webhook:
            raise invalid_input(
                "INVALID_FIELD", "the Item has no webhook URL; set one with /item/webhook/update"
            )
        if account_id is not None:
            self._account(item, account_id)
        self._emit(item.webhook, self._fired_body(item, code, account_id))

    def _fired_body(self, item: SandboxItem, code: str, account_id: str | None) -> dict[str, Any]:
        """The body for a fired webhook; codes that imply a state change also make it."""
        now = self._now()
        item_id = item.item_id
        if code == "ERROR":
            item.login_required = True
            return webhook_bodies.item_error(item_id)
        if code == "LOGIN_REPAIRED":
            item.login_required = False
            return webhook_bodies.login_repaired(item_id)
        if code == "PENDING_EXPIRATION":
            return webhook_bodies.pending_expiration(item_id, now + webhook_bodies.SEVEN_DAYS_S)
        if code == "PENDING_DISCONNECT":
            return webhook_bodies.pending_disconnect(
                item_id, now + webhook_bodies.SEVEN_DAYS_S, "INSTITUTION_TOKEN_EXPIRATION"
            )
        if code == "USER_PERMISSION_REVOKED":
            return webhook_bodies.user_permission_revoked(item_id)
        if code == "NEW_ACCOUNTS_AVAILABLE":
            return webhook_bodies.new_accounts_available(item_id)
        if code == "WEBHOOK_UPDATE_ACKNOWLEDGED":
            return webhook_bodies.webhook_update_acknowledged(item_id, item.webhook or "")
        account = self._pick_account(item, account_id)
        if code == "USER_ACCOUNT_REVOKED":
            return webhook_bodies.user_account_revoked(item_id, account.account_id)
        if code == "AUTOMATICALLY_VERIFIED":
            if account.verification_status is not None:
                account.verification_status = "automatically_verified"
            return webhook_bodies.automatically_verified(item_id, account.account_id)
        if code == "VERIFICATION_EXPIRED":
            if account.verification_status is not None:
                account.verification_status = "verification_expired"
            return webhook_bodies.verification_expired(item_id, account.account_id)
        # DEFAULT_UPDATE: the bank changed the account number.
        account.account_number = account_number(self._rng, account.mask)
        return webhook_bodies.default_update(item_id, [], {account.account_id: ["ACCOUNT_NUMBER"]})

    def _pick_account(self, item: SandboxItem, account_id: str | None) -> SandboxAccount:
        if account_id is not None:
            return self._account(item, account_id)
        account = (
            item.first_account(lambda a: a.verification_status == PENDING_AUTOMATIC_VERIFICATION)
            or item.first_account(lambda a: a.has_ach_numbers)
            or next(iter(item.accounts.values()))
        )
        return account
