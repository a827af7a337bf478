"""Every "what happens next to an Item", as pure functions over plain values. The handlers, the
pipeline and the reconciler only carry out what these return.

- :func:`on_plaid_webhook` / :func:`on_atomic_status`: what an event does to the Item as locked in
  Postgres (and :func:`follow_ups`: what it leaves to do after the commit);
- :func:`next_step` / :func:`failure_trigger`: where the pipeline goes from a state, and where a
  permanent upstream error leaves the Item;
- :func:`classify`: whether an upstream error is worth retrying;
- :func:`choose_account`: which account funds the Atomic account.

Plaid does not guarantee order and sends duplicates, and a webhook's body says what was true when it
was sent. So a webhook about the login (ITEM ``ERROR``, ``LOGIN_REPAIRED``) decides nothing itself: it
makes the worker ask Plaid (``/item/get``) and :func:`on_item_health` applies what Plaid says now. The
same check runs when the upstream app reports a repair in its own app (``item.repaired``), when
``item.drive`` meets a ``login_required`` Item, and periodically for ``login_required`` Items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from worker.errors import EventTooEarly, UpstreamError
from worker.items.model import Changes, Item
from worker.items.states import LINKED, State, Trigger

PENDING_DISCONNECT_NOTICE = timedelta(days=7)  # Plaid sends PENDING_DISCONNECT 7 days ahead


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: str  # recorded in the inbox: applied, recorded, check, ignored, unknown_item, ...
    trigger: Trigger | None = None
    error_code: str | None = None
    check_login: bool = False  # ask Plaid (/item/get) what the login is now, and apply that
    consent_expires_at: datetime | None = None
    disconnect_at: datetime | None = None
    disconnect_reason: str | None = None
    atomic_refresh: bool = False  # the funding account's numbers changed: Atomic must re-pull them

    def changes(self) -> Changes:
        """The columns the transition sets: an Item that ends failed or revoked, or waits for its
        user, keeps the code why.
        A revoked Item keeps its access token until ``/item/remove`` took it (a follow-up)."""
        return Changes(error_code=self.error_code if self.trigger in ENDING_IN_ERROR else None)

    @property
    def sets_conditions(self) -> bool:
        return bool(self.consent_expires_at or self.disconnect_at)


# Triggers after which the Item keeps the error code that caused them.
ENDING_IN_ERROR = frozenset({Trigger.FAILED, Trigger.REVOKED, Trigger.LOGIN_REQUIRED})
# States in which Atomic holds a funding source worth refreshing.
LIVE_SOURCE = frozenset({State.ATOMIC_PENDING, State.ATOMIC_VERIFIED})


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Webhooks that say something about the Item's login: triggers for asking Plaid, never the answer.
LOGIN_SIGNALS = frozenset({("ITEM", "ERROR"), ("ITEM", "LOGIN_REPAIRED")})
# Where the login matters and Plaid can be asked (the Item has an access token).
LOGIN_CHECKED = LINKED | {State.LOGIN_REQUIRED}


def _login_signal(item: Item) -> Decision:
    if item.state not in LOGIN_CHECKED:
        return Decision("ignored")
    return Decision("check", check_login=True)


def redelivery_worth_checking(item: Item | None, webhook: dict[str, Any]) -> bool:
    """A login webhook whose body the inbox has seen in the last 24 h: a redelivery, or the same
    event again (break, repair, break sends one ITEM ERROR body twice). Asking Plaid is skipped only
    when the Item already shows what the webhook says; otherwise Plaid decides."""
    if item is None or item.state not in LOGIN_CHECKED:
        return False
    if webhook.get("webhook_code") == "LOGIN_REPAIRED":
        return item.state is State.LOGIN_REQUIRED
    error = webhook.get("error")
    code = error.get("error_code") if isinstance(error, dict) else None
    return item.state is not State.LOGIN_REQUIRED or code != item.error_code


def on_item_health(item: Item, error_code: str | None) -> Decision:
    """What Plaid's ``/item/get`` answer (the Item's ``error.error_code`` now, ``None`` when there is
    none) does to the Item: an error update mode fixes puts it in ``login_required`` keeping the
    code; no error takes a ``login_required`` Item back to the state it stopped in. Any other error
    (the institution down, ...) is not the user's to fix and changes nothing."""
    if item.state not in LOGIN_CHECKED:
        return Decision("ignored")
    if error_code is None:
        if item.state is State.LOGIN_REQUIRED:
            return Decision("applied", Trigger.LOGIN_REPAIRED)
        return Decision("healthy")
    if error_code in NEEDS_USER_CODES:
        if item.state is State.LOGIN_REQUIRED:
            return Decision("still_required", error_code=error_code)
        return Decision("applied", Trigger.LOGIN_REQUIRED, error_code=error_code)
    return Decision("recorded", error_code=error_code)


def on_plaid_webhook(item: Item | None, webhook: dict[str, Any], sent_at: int) -> Decision:
    """What a verified Plaid webhook, sent at ``sent_at`` (JWT ``iat``), does to the Item."""
    if item is None:
        return Decision("unknown_item")
    wtype, code = webhook.get("webhook_type"), webhook.get("webhook_code")
    if wtype == "ITEM":
        if (wtype, code) in LOGIN_SIGNALS:  # what Plaid says now decides, not this body
            return _login_signal(item)
        if code == "PENDING_EXPIRATION":
            return Decision("recorded", consent_expires_at=parse_time(webhook.get("consent_expiration_time")))
        if code == "PENDING_DISCONNECT":
            at = parse_time(webhook.get("disconnect_time")) or (
                datetime.fromtimestamp(sent_at, UTC) + PENDING_DISCONNECT_NOTICE
            )
            reason = webhook.get("reason")
            return Decision("recorded", disconnect_at=at, disconnect_reason=str(reason) if reason else None)
        if code == "USER_PERMISSION_REVOKED":
            return _revoke(item, "USER_PERMISSION_REVOKED")
        if code == "USER_ACCOUNT_REVOKED":
            if item.account_id is not None and webhook.get("account_id") == item.account_id:
                return _revoke(item, "USER_ACCOUNT_REVOKED")
            return Decision("recorded")
        if code in ("NEW_ACCOUNTS_AVAILABLE", "WEBHOOK_UPDATE_ACKNOWLEDGED"):
            return Decision("recorded")
        return Decision("unknown_code")
    if wtype == "AUTH":
        if code in ("AUTOMATICALLY_VERIFIED", "VERIFICATION_EXPIRED", "SMS_MICRODEPOSITS_VERIFICATION"):
            if item.state in (State.LINK, State.EXCHANGED):
                # ahead of the Item: it has not recorded which account waits for verification yet
                raise EventTooEarly(f"item {item.id} has not chosen its account yet")
            if item.state is not State.AWAITING_VERIFICATION or webhook.get("account_id") != item.account_id:
                return Decision("ignored")
            verified = code == "AUTOMATICALLY_VERIFIED" or (
                code == "SMS_MICRODEPOSITS_VERIFICATION" and webhook.get("status") == "MANUALLY_VERIFIED"
            )
            if verified:
                return Decision("applied", Trigger.ACCOUNT_VERIFIED)
            why = "VERIFICATION_EXPIRED" if code == "VERIFICATION_EXPIRED" else "VERIFICATION_FAILED"
            return Decision("applied", Trigger.FAILED, error_code=why)
        if code == "PRODUCT_PERMISSIONS_REQUIRED":  # Auth access not granted: update mode fixes it
            # /item/get shows no Item error for it: the body decides, once (a repeat changes nothing)
            if item.state in LINKED:
                return Decision("applied", Trigger.LOGIN_REQUIRED, error_code="PRODUCT_PERMISSIONS_REQUIRED")
            return Decision("recorded")
        if code == "DEFAULT_UPDATE":
            updated = webhook.get("account_ids_with_updated_auth") or {}
            if item.account_id is not None and isinstance(updated, dict) and item.account_id in updated:
                return Decision("numbers_changed", atomic_refresh=item.atomic_funding_source_id is not None)
            return Decision("recorded")
        return Decision("unknown_code")
    return Decision("unknown_type")


def _revoke(item: Item, code: str) -> Decision:
    if item.state in (State.REVOKED, State.LINK, State.FAILED):
        return Decision("ignored")
    return Decision("applied", Trigger.REVOKED, error_code=code)


# -- What Atomic says -------------------------------------------------------------------------

# Atomic's final answers about a funding source (its webhook, or the reconciler asking).
ATOMIC_OUTCOMES = {"VERIFIED": Trigger.ATOMIC_VERIFIED, "REJECTED": Trigger.ATOMIC_REJECTED}


def on_atomic_status(item: Item | None, status: str, funding_source_id: str) -> Decision:
    """What Atomic's status for a funding source does to the Item. Atomic can answer before the Item
    committed its submission (the webhook overtakes the commit): then the event is ``held`` in the
    inbox, under the Item's row lock, and the transaction that commits the submission applies it
    (:meth:`worker.items.pipeline.Pipeline._submitted`): no redelivery, no second of waiting."""
    trigger = ATOMIC_OUTCOMES.get(status)
    if item is None:
        return Decision("unknown_item")
    if trigger is None or item.atomic_funding_source_id not in (None, funding_source_id):
        return Decision("ignored")
    if item.state is State.PROCESSOR_TOKEN_ISSUED:
        return Decision("held")
    if item.state is not State.ATOMIC_PENDING:
        return Decision("ignored")
    return Decision("applied", trigger)


# -- After an event is committed --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FollowUps:
    """What a committed event leaves to do outside its transaction."""

    refresh_atomic: bool = False  # Atomic must re-pull the account numbers
    drive: bool = False  # the pipeline has a step to take
    remove_at_plaid: bool = False  # revoked: /item/remove, then the tokens go
    remove_funding_source: bool = False  # revoked: Atomic's funding source goes


def follow_ups(item: Item) -> FollowUps:
    revoked = item.state is State.REVOKED
    return FollowUps(
        refresh_atomic=item.atomic_refresh_needed_at is not None
        and bool(item.atomic_funding_source_id)
        and item.state in LIVE_SOURCE,
        drive=item.state in (State.EXCHANGED, State.PROCESSOR_TOKEN_ISSUED),
        remove_at_plaid=revoked and (item.access_token is not None or item.processor_token is not None),
        remove_funding_source=revoked
        and bool(item.atomic_funding_source_id)
        and item.atomic_removed_at is None,
    )


# -- The pipeline's way forward ---------------------------------------------------------------


class Step(StrEnum):
    """The upstream call the pipeline makes next."""

    EXCHANGE = "exchange"  # /item/public_token/exchange
    ISSUE_PROCESSOR_TOKEN = "issue_processor_token"  # noqa: S105 - /accounts/get, /processor/token/create
    SUBMIT_TO_ATOMIC = "submit_to_atomic"  # Atomic's funding source
    CHECK_VERIFICATION = "check_verification"  # /accounts/get: is the waiting account verified now?


_STEPS = {
    State.LINK: Step.EXCHANGE,
    State.EXCHANGED: Step.ISSUE_PROCESSOR_TOKEN,
    State.PROCESSOR_TOKEN_ISSUED: Step.SUBMIT_TO_ATOMIC,
}


# The pipeline steps on from these by itself (``paw item retry`` re-drives them).
STEPPING = frozenset(_STEPS)


def next_step(state: State, *, has_public_token: bool, resuming: bool = False) -> Step | None:
    """The pipeline's next call from ``state``; ``None``: the Item waits for someone else. Only the
    ``item.link`` message carries the public token, so only it can exchange. A drive that *starts*
    (``resuming``: ``item.drive``, ``paw item retry``, the verification reconciler) at an Item in
    ``awaiting_verification`` asks Plaid once whether the account is verified now; a drive that
    just put it there does not ask again."""
    if state is State.LINK and not has_public_token:
        return None
    if state is State.AWAITING_VERIFICATION:
        return Step.CHECK_VERIFICATION if resuming else None
    return _STEPS.get(state)


# Why a re-drive (``item.drive``, ``paw item retry``) cannot move an Item in these states, and what would.
_NOT_RETRYABLE = {
    State.LINK: (
        "only its item.link message carries the public token, so only it can exchange: find it with "
        "`paw dlq list --item ID` and replay it, or have the user link again (public tokens live 30 minutes)"
    ),
    State.ATOMIC_PENDING: (
        "it waits for Atomic's decision: Atomic's webhook moves it, and the reconciler asks Atomic after "
        "PAW_ATOMIC_PENDING_RECONCILE_S"
    ),
    State.ATOMIC_VERIFIED: "it is verified: there is nothing left to do",
    State.ATOMIC_REJECTED: "Atomic rejected it: retrying changes nothing; the user needs another account",
    State.FAILED: "it failed for good (see its error): the user must link again through Plaid Link",
    State.REVOKED: "it is revoked and its tokens are destroyed: the user must link again",
}


def retry_refusal(state: State) -> str | None:
    """Why re-driving an Item in ``state`` would change nothing (and what would); ``None``: a drive
    can move it (a ``login_required`` one is checked with Plaid first)."""
    if state is State.LOGIN_REQUIRED or next_step(state, has_public_token=False, resuming=True) is not None:
        return None
    return _NOT_RETRYABLE[state]


def failure_trigger(state: State, err: UpstreamError) -> Trigger:
    """Where a permanent upstream error leaves an Item: waiting for its user where update mode can
    fix it (never removed at Plaid), else failed."""
    return Trigger.LOGIN_REQUIRED if needs_user(err) and state is not State.LINK else Trigger.FAILED


# -- Upstream failures: worth retrying, or not ------------------------------------------------


class Kind(StrEnum):
    TRANSIENT = "transient"  # retry: the bank, Plaid or Atomic will be back
    PERMANENT = "permanent"  # the Item fails (or waits for its user): retrying changes nothing
    OPERATOR = "operator"  # paw's own setup is wrong: never the Item's fault; park the message


TRANSIENT_CODES = frozenset(
    {
        "RATE_LIMIT_EXCEEDED",
        "ADDITION_LIMIT",
        "INSTITUTION_DOWN",
        "INSTITUTION_NOT_RESPONDING",
        "INSTITUTION_NOT_AVAILABLE",
        "PRODUCT_NOT_READY",
        "INTERNAL_SERVER_ERROR",
        "PLANNED_MAINTENANCE",
        "NETWORK_ERROR",
    }
)
TRANSIENT_TYPES = frozenset({"API_ERROR", "RATE_LIMIT_EXCEEDED"})
# Permanent for the Item as it is, but the user can fix it in Link's update mode: the Item waits in
# login_required (keeping the code) and is never removed.
NEEDS_USER_CODES = frozenset(
    {
        "ITEM_LOGIN_REQUIRED",
        "PENDING_EXPIRATION",
        "ACCESS_NOT_GRANTED",
        "ADDITIONAL_CONSENT_REQUIRED",
        "ITEM_LOCKED",
        "USER_SETUP_REQUIRED",
        "PRODUCT_PERMISSIONS_REQUIRED",
    }
)
# Wrong in paw's own setup (keys, Dashboard, environment, API version), never the Item's fault: what
# each one means to whoever runs paw.
OPERATOR_CODES: Mapping[str, str] = {
    "INVALID_API_KEYS": "Plaid refuses PLAID_CLIENT_ID / PLAID_SECRET (wrong keys or wrong environment)",
    "INVALID_PRODUCT": "a Plaid product or the Atomic processor integration is not enabled in the "
    "Plaid Dashboard",
    "UNAUTHORIZED_ENVIRONMENT": "these Plaid keys are not allowed in this Plaid environment",
    "UNAUTHORIZED_ROUTE_ACCESS": "this Plaid account may not call this endpoint (ask Plaid)",
    "DIRECT_INTEGRATION_NOT_ENABLED": "the Plaid account is not enabled for this direct integration",
    "INCOMPATIBLE_API_VERSION": "the Plaid API version paw sends is not accepted for these keys",
}


def classify(err: UpstreamError) -> Kind:
    if err.error_code in OPERATOR_CODES:
        return Kind.OPERATOR
    if err.error_code in TRANSIENT_CODES or err.error_type in TRANSIENT_TYPES:
        return Kind.TRANSIENT
    if err.status is None or err.status == 429 or err.status >= 500:
        return Kind.TRANSIENT
    return Kind.PERMANENT


def needs_user(err: UpstreamError) -> bool:
    return err.error_code in NEEDS_USER_CODES


def operator_hint(error_code: str | None) -> str | None:
    """One line for on-call: what an operator error means (None: not an operator error)."""
    return OPERATOR_CODES.get(error_code or "")


# -- Which account funds the Atomic account --------------------------------------------------


# verification_status values (PLAID_FACTS.md). Waiting: micro-deposits not sent or not verified
# yet, Database Insights still running. Refused: the numbers are known to be bad.
PENDING_VERIFICATION = frozenset(
    {"pending_automatic_verification", "pending_manual_verification", "unsent", "database_insights_pending"}
)
UNUSABLE_VERIFICATION = frozenset({"verification_expired", "verification_failed", "database_insights_fail"})
# Database Insights is unsure: refused unless the operator accepts the risk (PAW_ACCEPT_INSIGHTS_CAUTION).
CAUTION_VERIFICATION = "database_insights_pass_with_caution"
# "Only debitable checking, savings, and cash management accounts can be used with Auth."
FUNDING_SUBTYPES = ("checking", "savings", "cash management")


@dataclasses.dataclass(frozen=True)
class Choice:
    account_id: str | None
    awaiting_verification: bool = False
    reason: str | None = None  # why nothing was chosen
    error_code: str | None = None  # the code an Item refused for this reason keeps


class Account(Protocol):
    """What the choice needs to know of an account from ``/accounts/get``."""

    @property
    def account_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def subtype(self) -> str | None: ...
    @property
    def verification_status(self) -> str | None: ...


def choose_account(
    accounts: Sequence[Account], requested: str | None, *, accept_caution: bool = False
) -> Choice:
    """The requested account if it can fund (a depository checking, savings or cash management
    account); else the first checking, then savings, then cash management account. An account whose
    numbers are still being verified is chosen but marked ``awaiting_verification``; one whose
    numbers failed verification is refused, before any processor token is made."""
    fundable = [a for a in accounts if a.type == "depository" and a.subtype in FUNDING_SUBTYPES]
    if requested is not None:
        asked = [a for a in accounts if a.account_id == requested]
        if not asked:
            return Choice(
                None,
                reason="the requested account is not an account of this Item",
                error_code="NO_USABLE_ACCOUNT",
            )
        if asked[0] not in fundable:
            kind = f"{asked[0].type} {asked[0].subtype or ''}".strip()
            return Choice(
                None,
                reason=f"the requested account is a {kind} account; only depository checking, savings "
                "and cash management accounts can fund",
                error_code="INELIGIBLE_ACCOUNT",
            )
        candidates = asked
    else:
        candidates = [a for subtype in FUNDING_SUBTYPES for a in fundable if a.subtype == subtype]
        if not candidates:
            return Choice(
                None,
                reason="no depository checking, savings or cash management account",
                error_code="NO_USABLE_ACCOUNT",
            )
    account = candidates[0]
    status = account.verification_status
    if status in UNUSABLE_VERIFICATION or (status == CAUTION_VERIFICATION and not accept_caution):
        why = (
            "Database Insights is not sure the numbers are right (refused unless PAW_ACCEPT_INSIGHTS_CAUTION)"
            if status == CAUTION_VERIFICATION
            else f"the account's verification status is {status}"
        )
        return Choice(None, reason=why, error_code="ACCOUNT_NOT_VERIFIED")
    return Choice(account.account_id, awaiting_verification=status in PENDING_VERIFICATION)


# -- An account waiting for verification, asked again -----------------------------------------

# "Plaid was unable to automatically verify the deposit within 7 calendar days and will no longer
# attempt to validate the Item" (verification_status verification_expired, OpenAPI AccountBase).
AUTOMATED_MICRODEPOSITS_EXPIRY = timedelta(days=7)
# Numbers known good: micro-deposits verified, Database Insights passed (or matched, deprecated), or
# no verification flow at all (null or empty).
VERIFIED = frozenset(
    {"automatically_verified", "manually_verified", "database_insights_pass", "database_matched"}
)
# The code a refused account leaves on the Item.
REFUSED_CODES: Mapping[str, str] = {
    "verification_expired": "VERIFICATION_EXPIRED",
    "verification_failed": "VERIFICATION_FAILED",
    "database_insights_fail": "ACCOUNT_NOT_VERIFIED",
    CAUTION_VERIFICATION: "ACCOUNT_NOT_VERIFIED",
}


@dataclasses.dataclass(frozen=True)
class Verification:
    """What Plaid's ``verification_status`` of the waiting account, read again, means for the Item:
    ``trigger`` ACCOUNT_VERIFIED (go on: a processor token, then Atomic), FAILED (``error_code`` and
    ``reason`` say why), or ``None`` (still pending: ask again later)."""

    trigger: Trigger | None
    error_code: str | None = None
    reason: str | None = None


def on_verification_status(
    status: str | None,
    *,
    waiting_since: datetime,
    now: datetime,
    accept_caution: bool = False,
    automated_expiry: timedelta = AUTOMATED_MICRODEPOSITS_EXPIRY,
) -> Verification:
    """What the account's ``verification_status`` as Plaid gives it now does to an Item in
    ``awaiting_verification`` since ``waiting_since`` (when it *first* entered that state: Plaid's 7
    days run from the micro-deposits, sent before paw ever saw the Item, and neither a broken login
    nor a check that found it still pending restarts them).

    An automated micro-deposit account Plaid still reports pending ``automated_expiry`` after that is
    failed with ``VERIFICATION_EXPIRED``: Plaid gives up after 7 days, so its own
    ``verification_expired`` (or the webhook) is late or lost. Same-Day (``pending_manual_
    verification``), ``unsent`` and ``database_insights_pending`` wait for Plaid's answer however long
    it takes: Plaid itself moves them to ``verification_expired`` / ``verification_failed``."""
    if not status or status in VERIFIED or (status == CAUTION_VERIFICATION and accept_caution):
        return Verification(Trigger.ACCOUNT_VERIFIED)
    if status in REFUSED_CODES:
        reason = (
            "Database Insights is not sure the numbers are right (refused unless PAW_ACCEPT_INSIGHTS_CAUTION)"
            if status == CAUTION_VERIFICATION
            else f"the account's verification status is {status}"
        )
        return Verification(Trigger.FAILED, REFUSED_CODES[status], reason)
    if status == "pending_automatic_verification" and now - waiting_since >= automated_expiry:
        days = automated_expiry / timedelta(days=1)
        return Verification(
            Trigger.FAILED,
            "VERIFICATION_EXPIRED",
            f"automated micro-deposits still pending {days:g} days after the Item began waiting",
        )
    if status in PENDING_VERIFICATION:
        return Verification(None)
    # a status Plaid added after this code was written: not known good, so not funded; keep waiting
    return Verification(None, reason=f"unknown verification status {status!r}")
