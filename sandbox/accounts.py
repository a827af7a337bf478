"""The accounts a sandbox Item holds, and the fixed account sets of Plaid's Sandbox test users.

:class:`AccountSpec` describes an account before it exists (from a fixed set below or from a
``user_custom`` configuration); :func:`build_accounts` makes fresh :class:`SandboxAccount` objects
from specs. Which specs an Item gets is decided in :mod:`sandbox.credentials`.

Account numbers are unique per account and end in the account's mask unless a ``user_custom``
configuration sets one; routing numbers are Plaid Sandbox's unless a spec sets its own.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import Any

ROUTING = "011401533"
WIRE_ROUTING = "021000021"
PENDING_AUTOMATIC_VERIFICATION = "pending_automatic_verification"
PENDING_MANUAL_VERIFICATION = "pending_manual_verification"
PENDING_VERIFICATION = frozenset({PENDING_AUTOMATIC_VERIFICATION, PENDING_MANUAL_VERIFICATION})
# "Only debitable checking, savings, and cash management accounts can be used with Auth"
# (plaid.com/docs/errors/item/#no_auth_accounts).
AUTH_SUBTYPES = frozenset({"checking", "savings", "cash management"})


@dataclasses.dataclass
class SandboxAccount:
    account_id: str
    name: str
    official_name: str | None
    mask: str
    type: str
    subtype: str
    available: float | None
    current: float | None
    limit: float | None
    account_number: str
    verification_status: str | None = None
    routing: str = ROUTING
    wire_routing: str | None = WIRE_ROUTING
    iso_currency_code: str = "USD"

    @property
    def has_ach_numbers(self) -> bool:
        return self.type == "depository" and self.subtype in AUTH_SUBTYPES

    def to_json(self) -> dict[str, Any]:
        """An AccountBase object."""
        account: dict[str, Any] = {
            "account_id": self.account_id,
            "balances": {
                "available": self.available,
                "current": self.current,
                "limit": self.limit,
                "iso_currency_code": self.iso_currency_code,
                "unofficial_currency_code": None,
            },
            "mask": self.mask,
            "name": self.name,
            "official_name": self.official_name,
            "type": self.type,
            "subtype": self.subtype,
            "holder_category": "personal",
        }
        if self.verification_status is not None:
            account["verification_status"] = self.verification_status
        return account

    def ach_json(self) -> dict[str, Any]:
        """A NumbersACH object."""
        return {
            "account_id": self.account_id,
            "account": self.account_number,
            "routing": self.routing,
            "wire_routing": self.wire_routing,
        }


@dataclasses.dataclass(frozen=True)
class AccountSpec:
    """An account to be created. ``account_number`` ``None``: a fresh one ending in the mask."""

    name: str
    official_name: str | None
    mask: str
    type: str
    subtype: str
    available: float | None
    current: float | None
    limit: float | None = None
    verification_status: str | None = None
    account_number: str | None = None
    routing: str = ROUTING
    wire_routing: str | None = WIRE_ROUTING
    iso_currency_code: str = "USD"


# -- user_good / pass_good ---------------------------------------------------------------------
# Names, official names, masks, types/subtypes and balances as Plaid's Sandbox returns them for
# user_good (the /accounts/get example in plaid.com/docs/api/accounts/ and Sandbox responses that
# quote it: checking 0000 … mortgage 8888, then HSA 9001, cash management 9002 and a business credit
# card 9999).


_DEP, _CREDIT, _INVEST, _LOAN = "depository", "credit", "investment", "loan"
# name, official name, mask, type, subtype, available, current, limit
CHECKING = AccountSpec(
    "Plaid Checking", "Plaid Gold Standard 0% Interest Checking", "0000", _DEP, "checking", 100, 110
)
SAVING = AccountSpec(
    "Plaid Saving", "Plaid Silver Standard 0.1% Interest Saving", "1111", _DEP, "savings", 200, 210
)
CD = AccountSpec("Plaid CD", "Plaid Bronze Standard 0.2% Interest CD", "2222", _DEP, "cd", None, 1000)
CREDIT_CARD = AccountSpec(
    "Plaid Credit Card", "Plaid Diamond 12.5% APR Interest Credit Card", "3333", _CREDIT, "credit card",
    None, 410, 2000,
)  # fmt: skip
MONEY_MARKET = AccountSpec(
    "Plaid Money Market", "Plaid Platinum Standard 1.85% Interest Money Market", "4444", _DEP, "money market",
    43200, 43200,
)  # fmt: skip
IRA = AccountSpec("Plaid IRA", None, "5555", _INVEST, "ira", None, 320.76)
RETIREMENT_401K = AccountSpec("Plaid 401k", None, "6666", _INVEST, "401k", None, 23631.9805)
STUDENT_LOAN = AccountSpec("Plaid Student Loan", None, "7777", _LOAN, "student", None, 65262)
MORTGAGE = AccountSpec("Plaid Mortgage", None, "8888", _LOAN, "mortgage", None, 56302.06)
HSA = AccountSpec("Plaid HSA", "Plaid Cares Health Savings Account", "9001", _DEP, "hsa", 6009, 6009)
CASH_MANAGEMENT = AccountSpec(
    "Plaid Cash Management", "Plaid Growth Cash Management", "9002", _DEP, "cash management", 12060, 12060
)
BUSINESS_CREDIT_CARD = AccountSpec(
    "Plaid Business Credit Card", "Plaid Platinum Small Business Credit Card", "9999", _CREDIT,
    "credit card", 4980, 5020, 10000,
)  # fmt: skip

USER_GOOD_ACCOUNTS = (
    CHECKING,
    SAVING,
    CD,
    CREDIT_CARD,
    MONEY_MARKET,
    IRA,
    RETIREMENT_401K,
    STUDENT_LOAN,
    MORTGAGE,
    HSA,
    CASH_MANAGEMENT,
    BUSINESS_CREDIT_CARD,
)

# Automated micro-deposits (Houndstooth Bank, user_good / microdeposits_good): the user selects
# "Plaid Checking (****0000)" and Plaid verifies it about 24 hours later
# (plaid.com/docs/sandbox/institutions/#institution-details-for-auth-testing).
AUTOMATED_MICRODEPOSIT_CHECKING = dataclasses.replace(
    CHECKING, verification_status=PENDING_AUTOMATIC_VERIFICATION
)

# Same-Day micro-deposits (emulator-only lever, see sandbox.control_routes): the user types routing
# 110000000 and an account number ending 0000 into Link (plaid.com/docs/auth/coverage/testing/);
# no institution connection, so no balances and no wire routing number.
SAME_DAY_CHECKING = AccountSpec(
    "Plaid Checking", None, "0000", "depository", "checking", None, None,
    verification_status=PENDING_MANUAL_VERIFICATION, routing="110000000", wire_routing=None,
)  # fmt: skip

# Database Insights (emulator-only lever, see sandbox.control_routes): the user typed routing and
# account numbers into Link and Plaid checked them against its data; no institution connection, so no
# balances. The verification_status (database_insights_pass, ...) is the lever's choice.
DATABASE_INSIGHTS_CHECKING = AccountSpec(
    "Plaid Checking", None, "0000", "depository", "checking", None, None, wire_routing=None,
)  # fmt: skip

_ID_ALPHABET = string.ascii_letters + string.digits


def plaid_id(rng: random.Random) -> str:
    """A 37-character id shaped like Plaid's item and account ids."""
    return "".join(rng.choices(_ID_ALPHABET, k=37))


def account_number(rng: random.Random, mask: str) -> str:
    return "1111" + "".join(rng.choices(string.digits, k=8)) + mask


def build_account(spec: AccountSpec, rng: random.Random) -> SandboxAccount:
    return SandboxAccount(
        account_id=plaid_id(rng),
        name=spec.name,
        official_name=spec.official_name,
        mask=spec.mask,
        type=spec.type,
        subtype=spec.subtype,
        available=spec.available,
        current=spec.current,
        limit=spec.limit,
        account_number=spec.account_number or account_number(rng, spec.mask),
        verification_status=spec.verification_status,
        routing=spec.routing,
        wire_routing=spec.wire_routing,
        iso_currency_code=spec.iso_currency_code,
    )


def build_accounts(specs: tuple[AccountSpec, ...], rng: random.Random) -> list[SandboxAccount]:
    """Fresh accounts, in the order of ``specs``."""
    return [build_account(spec, rng) for spec in specs]
