"""The accounts a sandbox Item gets, chosen by ``options.override_username``.

See the package docstring for the usernames. Account numbers are unique per account and end in the
account's mask; every account shares Plaid sandbox's routing numbers.
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

    @property
    def has_ach_numbers(self) -> bool:
        return self.type == "depository" and self.subtype in ("checking", "savings")

    def to_json(self) -> dict[str, Any]:
        """An AccountBase object."""
        account: dict[str, Any] = {
            "account_id": self.account_id,
            "balances": {
                "available": self.available,
                "current": self.current,
                "limit": self.limit,
                "iso_currency_code": "USD",
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
            "routing": ROUTING,
            "wire_routing": WIRE_ROUTING,
        }


@dataclasses.dataclass(frozen=True)
class _Template:
    name: str
    official_name: str | None
    mask: str
    type: str
    subtype: str
    available: float | None
    current: float | None
    limit: float | None = None
    verification_status: str | None = None


_CHECKING = _Template(
    "Plaid Checking",
    "Plaid Gold Standard 0% Interest Checking",
    "0000",
    "depository",
    "checking",
    100.0,
    110.0,
)
_SAVING = _Template(
    "Plaid Saving",
    "Plaid Silver Standard 0.1% Interest Saving",
    "1111",
    "depository",
    "savings",
    200.0,
    210.0,
)
_CREDIT = _Template(
    "Plaid Credit Card", "Plaid Diamond 12.5% APR Interest Credit Card", "3333", "credit", "credit card",
    None, 410.0, 2000.0,
)  # fmt: skip
_STUDENT = _Template("Plaid Student Loan", None, "7777", "loan", "student", None, 65262.0)
_MORTGAGE = _Template("Plaid Mortgage", None, "8888", "loan", "mortgage", None, 56302.06)
_MICRODEPOSIT_CHECKING = dataclasses.replace(_CHECKING, verification_status=PENDING_AUTOMATIC_VERIFICATION)

ACCOUNTS_BY_USERNAME: dict[str, tuple[_Template, ...]] = {
    "user_good": (_CHECKING, _SAVING, _CREDIT),
    "user_savings_only": (_SAVING,),
    "user_no_depository": (_CREDIT, _STUDENT, _MORTGAGE),
    "user_automated_microdeposits": (_MICRODEPOSIT_CHECKING,),
}
DEFAULT_USERNAME = "user_good"

_ID_ALPHABET = string.ascii_letters + string.digits


def plaid_id(rng: random.Random) -> str:
    """A 37-character id shaped like Plaid's item and account ids."""
    return "".join(rng.choices(_ID_ALPHABET, k=37))


def account_number(rng: random.Random, mask: str) -> str:
    return "1111" + "".join(rng.choices(string.digits, k=8)) + mask


def build_accounts(username: str, rng: random.Random) -> list[SandboxAccount] | None:
    """Fresh accounts for ``username``, or ``None`` if the sandbox does not know the username."""
    templates = ACCOUNTS_BY_USERNAME.get(username)
    if templates is None:
        return None
    return [
        SandboxAccount(
            account_id=plaid_id(rng),
            name=t.name,
            official_name=t.official_name,
            mask=t.mask,
            type=t.type,
            subtype=t.subtype,
            available=t.available,
            current=t.current,
            limit=t.limit,
            account_number=account_number(rng, t.mask),
            verification_status=t.verification_status,
        )
        for t in templates
    ]
