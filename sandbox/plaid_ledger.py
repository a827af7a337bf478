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
    DATABASE_INSIGHTS_CHECKING,
    PENDING_AUTOMATIC_VERIFICATION,
    PENDING_MANUAL_VERIFICATION,
    PENDING_VERIFICATION,
    SAME_DAY_CHECKING,
    AccountSpec,
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
    item_not_found,
    sandbox_error,
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
DATABASE_INSIGHTS = "DATABASE_INSIGHTS"
# Every verification_status Plaid documents (AccountBase.verification_status), for the emulator-only
# lever that sets one on any account; and those a Database Insights Item can be created with.
VERIFICATION_STATUSES = frozenset(
    {
        "automatically_verified",
        "pending_automatic_verification",
        "pending_manual_verification",
        "manually_verified",
        "verification_expired",
        "verification_failed",
        "unsent",
        "database_matched",
        "database_insights_pending",
        "database_insights_pass",
        "database_insights_pass_with_caution",
        "database_insights_fail",
    }
)
DATABASE_INSIGHTS_STATUSES = frozenset(s for s in VERIFICATION_STATUSES if s.startswith("database_insights"))
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
# The statuses of an account in the automated micro-deposits flow, the one set_verification_status acts on.
AUTOMATED_FLOW = frozenset({PENDING_AUTOMATIC_VERIFICATION, *SETTABLE_VERIFICATION})
# /link/token/create: a link_token for a new Item lasts 4 hours, one for update mode 30 minutes
# (LinkTokenCreateResponse.expiration). ``balance`` is not a valid Link product (INVALID_PRODUCT).
LINK_TOKEN_TTL_S = 4 * 3600
UPDATE_LINK_TOKEN_TTL_S = 30 * 60
LINK_PRODUCTS = PRODUCTS - {"balance"}
# Update mode takes no products, except a credit product to add (assets, statements) or auth/identity
# for Update Mode with Product Validations (plaid.com/docs/link/update-mode).
UPDATE_MODE_PRODUCTS = frozenset({"assets", "auth", "identity", "statements"})
DEFAULT_INSTITUTION = "ins_109508"


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


@dataclasses.dataclass(frozen=True)
class LinkTokenRequest:
    """What /link/token/create keeps for the Link session its token opens."""

    client_user_id: str | None  # None when the request names the user by ``user_id`` instead
    user_id: str | None
    products: tuple[str, ...]
    webhook: str | None
    redirect_uri: str | None
    access_token: str | None  # set: update mode for that Item


@dataclasses.dataclass(frozen=True)
class _LinkToken:
    request: LinkTokenRequest
    expires_at: float


class PlaidLedger:
    def __init__(self, now: Callable[[], float], rng: random.Random, emit: WebhookEmitter) -> None:
        self._now = now
        self._rng = rng
        self._emit = emit
        self.items: dict[str, SandboxItem] = {}
        self._public: dict[str, _PublicToken] = {}
        self._access: dict[str, SandboxItem] = {}
        self._processor: dict[str, _ProcessorGrant] = {}
        # Processor integrations turned off in this client's Dashboard (a control lever).
        self.disabled_processors: set[str] = set()
        self._link_tokens: dict[str, _LinkToken] = {}

    def live_exchanged_items(self) -> set[str]:
        """The item_ids of Items whose access token was issued and that are not removed: what a
        client still holds access to, as far as Plaid knows."""
        return {item.item_id for item in self._access.values() if not item.removed}

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
        return self._linkless_public_token(SAME_DAY_CHECKING, SAME_DAY_MICRODEPOSITS, webhook)

    def create_database_insights_public_token(self, verification_status: str, webhook: str | None) -> str:
        """Emulator-only: the public token Link would give after a Database Insights (Database Auth)
        session: one checking account whose ``verification_status`` is the one asked for
        (``database_insights_pass``, ``_pass_with_caution``, ``_fail`` or ``_pending``), no
        institution. Plaid's Sandbox makes such Items only through Link."""
        if verification_status not in DATABASE_INSIGHTS_STATUSES:
            raise invalid_request(
                "INVALID_FIELD", f"verification_status must be one of {sorted(DATABASE_INSIGHTS_STATUSES)}"
            )
        spec = dataclasses.replace(DATABASE_INSIGHTS_CHECKING, verification_status=verification_status)
        return self._linkless_public_token(spec, DATABASE_INSIGHTS, webhook)

    def _linkless_public_token(self, spec: AccountSpec, auth_method: str, webhook: str | None) -> str:
        """An Item Link makes from account numbers alone (no institution, one checking account of
        ``spec``, Auth only), and its public token."""
        item = SandboxItem(
            item_id=plaid_id(self._rng),
            institution_id=None,
            institution_name=None,
            products=["auth"],
            webhook=webhook,
            accounts={a.account_id: a for a in build_accounts((spec,), self._rng)},
            auth_method=auth_method,
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
        if item is None:
            raise invalid_input(
                "INVALID_ACCESS_TOKEN",
                "provided access token is in an invalid format. "
                "expected format: access-<environment>-<identifier>",
            )
        if item.removed:
            raise item_not_found()
        return item

    def access_token_for(self, item_id: str) -> str:
        """The access token of an exchanged Item (for the controls, which name Items by item_id)."""
        item = self.items.get(item_id)
        if item is None or item.access_token is None:
            raise invalid_input("INVALID_ITEM_ID", f"no exchanged Item {item_id!r}")
        return item.access_token

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

    # -- Link tokens, /item/get -----------------------------------------------------------------

    def link_token_create(self, request: LinkTokenRequest) -> tuple[str, float]:
        """Stores the request under a new ``link-sandbox-<uuid>``; returns it and its expiry (epoch s)."""
        unknown = sorted(set(request.products) - LINK_PRODUCTS)
        if unknown:
            raise invalid_input(
                "INVALID_PRODUCT", f"client is not authorized to access the following products: {unknown}"
            )
        if request.access_token is not None:
            self.item_for(request.access_token)
            misplaced = sorted(set(request.products) - UPDATE_MODE_PRODUCTS)
            if misplaced:
                raise invalid_request(
                    "INVALID_FIELD",
                    f"products must be omitted in update mode (access_token given): {', '.join(misplaced)}",
                )
            ttl = UPDATE_LINK_TOKEN_TTL_S
        else:
            if not request.products:
                raise invalid_request("INVALID_FIELD", "must provide at least one product")
            ttl = LINK_TOKEN_TTL_S
        token = f"link-sandbox-{uuid.uuid4()}"
        expires_at = float(int(self._now()) + ttl)  # whole seconds, as the ISO 8601 answer shows it
        self._link_tokens[token] = _LinkToken(request, expires_at)
        return token, expires_at

    def link_session(self, link_token: str) -> LinkTokenRequest:
        """The request behind a live link token. In the Sandbox a link token may be used more than once."""
        record = self._link_tokens.get(link_token)
        if record is None:
            raise invalid_input("INVALID_LINK_TOKEN", "invalid link_token provided")
        if self._now() >= record.expires_at:
            raise invalid_input("INVALID_LINK_TOKEN", "link_token has expired; create a new one")
        return record.request

    def link_complete(
        self, link_token: str, username: str | None, password: str | None, institution_id: str | None
    ) -> str | None:
        """Plays the user's Link session to success (emulator only; the real Sandbox runs Link in a
        browser). A new-Item token creates the Item as /sandbox/public_token/create does, with the
        token's products and webhook, and returns its public token. An update-mode token repairs the
        Item's login and returns ``None``: the access token does not change, there is nothing to
        exchange, and no webhook is sent (LOGIN_REPAIRED is only for repairs outside your app).

        ``password`` is accepted for the real Link form's sake but, as ``override_password`` in
        /sandbox/public_token/create, does not pick anything yet; update mode checks no credentials."""
        del password
        request = self.link_session(link_token)
        if request.access_token is not None:
            self.item_for(request.access_token).login_required = False
            return None
        return self.create_public_token(
            institution_id or DEFAULT_INSTITUTION, list(request.products), request.webhook, username
        )

    def item_get(self, access_token: str) -> dict[str, Any]:
        """/item/get: the Item's state, ``error`` set while its login is broken; ``status`` is null
        (no Transactions or Investments updates here)."""
        item = self.item_for(access_token)
        body = item.to_json()
        if body["error"] is not None:
            # PlaidError.status is only returned when the error comes in a webhook.
            body["error"] = {**body["error"], "status": None}
        return {"item": body, "status": None}

    # -- Processor tokens ---------------------------------------------------------------------

    def processor_token_create(self, access_token: str, account_id: str, processor: str) -> str:
        if processor not in PROCESSORS:
            raise invalid_request("INVALID_FIELD", f"processor must be a known processor, got {processor!r}")
        if processor in self.disabled_processors:
            raise invalid_input(
                "INVALID_PRODUCT",
                f'client is not authorized to access the following products: ["processor_{processor}"]',
            )
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

    # -- Sandbox endpoints (real) ----------------------------------------------------------------

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
        if account.verification_status not in AUTOMATED_FLOW:  # not Same-Day, not Instant Auth
            raise invalid_input(
                "INVALID_ACCOUNT_ID", "the account is not in the automated micro-deposits verification flow"
            )
        account.verification_status = status
        if status == "automatically_verified":
            body = webhook_bodies.automatically_verified(item.item_id, account_id)
        else:
            body = webhook_bodies.verification_expired(item.item_id, account_id)
        self._emit(item.webhook, body)

    def fire_webhook(self, access_token: str, code: str, webhook_type: str | None) -> None:
        """``/sandbox/item/fire_webhook``: only the codes Plaid's endpoint fires, with its errors."""
        wtype = webhook_bodies.fireable_type(code, webhook_type)
        item = self.item_for(access_token)
        product = webhook_bodies.PRODUCT_FOR_TYPE.get(wtype)
        if product is not None and product not in item.products:
            raise sandbox_error(
                "SANDBOX_PRODUCT_NOT_ENABLED",
                f"the Item does not support {product}; create it with {product} in initial_products",
            )
        if not item.webhook:
            raise sandbox_error(
                "SANDBOX_WEBHOOK_INVALID", "the Item has no webhook URL; set one with /item/webhook/update"
            )
        if code == "SMS_MICRODEPOSITS_VERIFICATION":
            account = item.first_account(lambda a: a.verification_status == PENDING_MANUAL_VERIFICATION)
            if account is None:
                raise invalid_input(
                    "INVALID_FIELD", "SMS_MICRODEPOSITS_VERIFICATION needs a Same-Day Micro-deposit Item"
                )
        self._emit(item.webhook, self._fired_body(item, wtype, code, None))

    # -- Sandbox controls (beyond the real Sandbox: /sandbox/control/...) -----------------------

    def emit_webhook(
        self,
        access_token: str,
        webhook_type: str,
        code: str,
        account_id: str | None,
        status: str | None = None,
    ) -> None:
        """Sends any webhook the emulator can build (also those Plaid's Sandbox cannot fire, such as
        ITEM PENDING_EXPIRATION or AUTH DEFAULT_UPDATE for a chosen account), with its side effects.
        ``status``: only for AUTH SMS_MICRODEPOSITS_VERIFICATION, ``MANUALLY_VERIFIED`` (the default)
        or ``VERIFICATION_FAILED`` (the user got the code wrong 3 times: the account becomes
        ``verification_failed``), which Plaid's fire_webhook cannot send."""
        if code not in webhook_bodies.CODES_BY_TYPE.get(webhook_type, ()):
            raise invalid_request("INVALID_FIELD", f"the emulator cannot build {webhook_type} {code}")
        if status is not None and (
            code != "SMS_MICRODEPOSITS_VERIFICATION"
            or status not in ("MANUALLY_VERIFIED", "VERIFICATION_FAILED")
        ):
            raise invalid_request(
                "INVALID_FIELD",
                "status is for SMS_MICRODEPOSITS_VERIFICATION: MANUALLY_VERIFIED or VERIFICATION_FAILED",
            )
        item = self.item_for(access_token)
        if not item.webhook:
            raise sandbox_error("SANDBOX_WEBHOOK_INVALID", "the Item has no webhook URL")
        if account_id is not None:
            self._account(item, account_id)
        self._emit(item.webhook, self._fired_body(item, webhook_type, code, account_id, status))

    def set_any_verification_status(self, access_token: str, account_id: str | None, status: str) -> None:
        """Emulator-only: the account (the Item's first Auth account if none is named) gets any
        documented ``verification_status``, silently (no webhook: Plaid sends none for Database
        Insights, nor for a Same-Day account verified in Link). The real
        ``/sandbox/item/set_verification_status`` takes only the automated micro-deposit outcomes."""
        if status not in VERIFICATION_STATUSES:
            raise invalid_request(
                "INVALID_FIELD", f"verification_status must be one of {sorted(VERIFICATION_STATUSES)}"
            )
        item = self.item_for(access_token)
        self._pick_account(item, account_id).verification_status = status

    def repair_login(self, access_token: str, *, elsewhere: bool) -> None:
        """The user repaired the bank login: in update mode in your app (Plaid sends no webhook), or
        elsewhere (Plaid sends ITEM LOGIN_REPAIRED)."""
        item = self.item_for(access_token)
        item.login_required = False
        if elsewhere:
            self._emit(item.webhook, webhook_bodies.login_repaired(item.item_id))

    def _fired_body(
        self,
        item: SandboxItem,
        webhook_type: str,
        code: str,
        account_id: str | None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """The body for a fired webhook; codes that imply a state change also make it."""
        now = self._now()
        item_id = item.item_id
        if webhook_type == "ITEM":
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
            return webhook_bodies.user_account_revoked(
                item_id, self._pick_account(item, account_id).account_id
            )
        if webhook_type == "AUTH":
            account = self._pick_account(item, account_id)
            if code == "AUTOMATICALLY_VERIFIED":
                if account.verification_status in AUTOMATED_FLOW:
                    account.verification_status = "automatically_verified"
                return webhook_bodies.automatically_verified(item_id, account.account_id)
            if code == "VERIFICATION_EXPIRED":
                if account.verification_status in AUTOMATED_FLOW:
                    account.verification_status = "verification_expired"
                return webhook_bodies.verification_expired(item_id, account.account_id)
            if code == "SMS_MICRODEPOSITS_VERIFICATION":
                failed = status == "VERIFICATION_FAILED"
                account.verification_status = "verification_failed" if failed else "manually_verified"
                return webhook_bodies.sms_microdeposits_verification(
                    item_id, account.account_id, status or "MANUALLY_VERIFIED"
                )
            # DEFAULT_UPDATE: the bank changed the account number.
            account.account_number = account_number(self._rng, account.mask)
            return webhook_bodies.default_update(item_id, [], {account.account_id: ["ACCOUNT_NUMBER"]})
        return webhook_bodies.product_webhook(item_id, webhook_type, code, list(item.accounts), self._rng)

    def _pick_account(self, item: SandboxItem, account_id: str | None) -> SandboxAccount:
        if account_id is not None:
            return self._account(item, account_id)
        account = (
            item.first_account(lambda a: a.verification_status == PENDING_MANUAL_VERIFICATION)
            or item.first_account(lambda a: a.verification_status == PENDING_AUTOMATIC_VERIFICATION)
            or item.first_account(lambda a: a.has_ach_numbers)
            or next(iter(item.accounts.values()))
        )
        return account
