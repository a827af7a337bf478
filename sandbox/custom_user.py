"""``user_custom``: the Item's accounts from the JSON configuration object sent as the password.

Plaid documents the object in plaid.com/docs/sandbox/user-custom/ and in the OpenAPI schemas
``UserCustomPassword``, ``OverrideAccounts``, ``Meta`` and ``Numbers``. "All top level fields are
optional"; the objects allow additional properties. What this emulator uses is type-checked strictly
and anything wrong raises :class:`BadConfig` (the caller answers ITEM_ERROR/INVALID_CREDENTIALS, which
is what Plaid's Sandbox answered for a configuration it could not use: plaid/sandbox-custom-users#6).
Transactions, holdings, identity, liability, income and MFA settings are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Mapping
from typing import Any

from sandbox.accounts import ROUTING, WIRE_ROUTING, AccountSpec

# "Using more than ten accounts on a single custom user is not supported and will cause the Link
# attempt to fail." (plaid.com/docs/sandbox/user-custom/)
MAX_ACCOUNTS = 10
OVERRIDE_ACCOUNT_TYPES = frozenset({"investment", "credit", "depository", "loan", "payroll", "other"})
# The AccountSubtype enum of the OpenAPI spec (2020-09-14), comma-separated.
ACCOUNT_SUBTYPES = frozenset(
    "401a,401k,403B,457b,529,auto,brokerage,business,cash isa,cash management,cd,checking,commercial,"
    "construction,consumer,credit card,crypto exchange,ebt,education savings account,fhsa,"
    "fixed annuity,gic,health reimbursement arrangement,home equity,hsa,isa,ira,keogh,lif,"
    "life insurance,limited purpose checking,line of credit,lira,loan,lrif,lrsp,money market,"
    "mortgage,mutual fund,non-custodial wallet,non-taxable brokerage account,other,other insurance,"
    "other annuity,overdraft,paypal,payroll,pension,prepaid,prif,profit sharing plan,qshr,rdsp,resp,"
    "retirement,rlif,roth,roth 401k,roth 403B,roth 457b,roth pension,roth profit sharing plan,"
    "roth thrift savings plan,rrif,rrsp,sarsep,savings,sep ira,simple ira,sipp,stock plan,student,"
    "thrift savings plan,tfsa,trust,ugma,utma,variable annuity".split(",")
)
FORCE_ERRORS = frozenset(
    {
        "INSTITUTION_NOT_RESPONDING",
        "INSTITUTION_NO_LONGER_SUPPORTED",
        "INVALID_CREDENTIALS",
        "INVALID_MFA",
        "ITEM_LOCKED",
        "ITEM_LOGIN_REQUIRED",
        "ITEM_NOT_SUPPORTED",
        "INVALID_LINK_TOKEN",
        "MFA_NOT_SUPPORTED",
        "NO_ACCOUNTS",
        "PLAID_ERROR",
        "USER_INPUT_TIMEOUT",
        "USER_SETUP_REQUIRED",
    }
)
_MASK = re.compile(r"^$|^[A-Za-z0-9]{2,4}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DIGITS = re.compile(r"^[0-9]{4,17}$")


class BadConfig(ValueError):
    """The configuration object cannot be used."""


@dataclasses.dataclass(frozen=True)
class CustomUser:
    accounts: tuple[AccountSpec, ...]
    force_error: str | None


def parse(password: str, rng: random.Random) -> CustomUser:
    """The accounts (and forced error) a ``user_custom`` password describes."""
    try:
        config = json.loads(password)
    except ValueError:
        raise BadConfig("the password is not JSON") from None
    if not isinstance(config, dict):
        raise BadConfig("the configuration must be a JSON object")
    _opt(config, "version", str)
    _opt(config, "seed", str)
    _opt(config, "mfa", dict)
    _opt(config, "recaptcha", str)
    force_error = _opt(config, "force_error", str)
    if force_error is not None and force_error not in FORCE_ERRORS:
        raise BadConfig(f"force_error {force_error!r} is not one Plaid documents")
    overrides = _opt(config, "override_accounts", list) or []
    if len(overrides) > MAX_ACCOUNTS:
        raise BadConfig(f"at most {MAX_ACCOUNTS} override_accounts are supported")
    if not overrides:
        # "Sending an empty object as a configuration will result in an account configured with
        # random balances": the docs name no type for it; a checking account is the closest.
        overrides = [{"type": "depository", "subtype": "checking"}]
    accounts = tuple(_account(o, i, rng) for i, o in enumerate(overrides))
    return CustomUser(accounts, force_error)


def _account(override: Any, index: int, rng: random.Random) -> AccountSpec:
    where = f"override_accounts[{index}]"
    if not isinstance(override, dict):
        raise BadConfig(f"{where} must be an object")
    account_type = _req(override, "type", str, where)
    subtype = _req(override, "subtype", str, where)
    if account_type not in OVERRIDE_ACCOUNT_TYPES:
        raise BadConfig(f"{where}.type {account_type!r} is not an account type")
    if subtype not in ACCOUNT_SUBTYPES:
        raise BadConfig(f"{where}.subtype {subtype!r} is not an account subtype")
    current = _number(override, "starting_balance", where)
    if current is None:  # "randomly generated based on the account type and subtype"
        current = round(rng.uniform(0, 10_000), 2)
    forced = _number(override, "force_available_balance", where)
    null_available = _opt(override, "has_null_available_balance", bool, where) or False
    if forced is not None and null_available:
        raise BadConfig(f"{where}: force_available_balance cannot be set with has_null_available_balance")
    currency = _opt(override, "currency", str, where) or "USD"
    if not _CURRENCY.match(currency):
        raise BadConfig(f"{where}.currency must be an ISO-4217 code")
    _opt(override, "transactions", list, where)
    meta = _opt(override, "meta", dict, where) or {}
    numbers = _opt(override, "numbers", dict, where) or {}
    number = _opt(numbers, "account", str, f"{where}.numbers")
    if number is not None and not _DIGITS.match(number):
        raise BadConfig(f"{where}.numbers.account must be 4 to 17 digits")
    mask = _opt(meta, "mask", str, f"{where}.meta")
    if mask is not None and not _MASK.match(mask):
        raise BadConfig(f"{where}.meta.mask must be empty or 2-4 alphanumeric characters")
    if mask is None:
        mask = number[-4:] if number is not None else "".join(rng.choices("0123456789", k=4))
    return AccountSpec(
        name=_opt(meta, "name", str, f"{where}.meta") or f"Plaid {subtype.title()}",
        official_name=_opt(meta, "official_name", str, f"{where}.meta"),
        mask=mask,
        type=account_type,
        subtype=subtype,
        available=_available(account_type, current, forced, null_available=null_available),
        current=current,
        limit=_number(meta, "limit", f"{where}.meta"),
        account_number=number,
        routing=_routing(numbers, "ach_routing", where) or ROUTING,
        wire_routing=_routing(numbers, "ach_wire_routing", where) or WIRE_ROUTING,
        iso_currency_code=currency,
    )


def _available(
    account_type: str, current: float, forced: float | None, *, null_available: bool
) -> float | None:
    """``force_available_balance`` or ``has_null_available_balance`` as given. Without them Plaid does
    not document the available balance; it says the forced value holds "regardless of current
    balance", so here a depository account's available follows its current balance and other types
    have none (as the credit, loan and investment accounts of user_good mostly do)."""
    if null_available:
        return None
    if forced is not None:
        return forced
    return current if account_type == "depository" else None


def _routing(numbers: Mapping[str, Any], name: str, where: str) -> str | None:
    value: str | None = _opt(numbers, name, str, f"{where}.numbers")
    if value is not None and not valid_aba(value):
        raise BadConfig(f"{where}.numbers.{name} must be a valid ABA routing number")
    return value


def valid_aba(routing: str) -> bool:
    """Nine digits whose ABA checksum (weights 3, 7, 1) is a multiple of 10."""
    if len(routing) != 9 or not routing.isdigit():
        return False
    digits = [int(c) for c in routing]
    return sum(d * w for d, w in zip(digits, (3, 7, 1) * 3, strict=True)) % 10 == 0


def _opt(body: Mapping[str, Any], name: str, kind: type, where: str = "configuration") -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadConfig(f"{where}.{name} must be a {kind.__name__}")
    return value


def _req(body: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = _opt(body, name, kind, where)
    if value is None:
        raise BadConfig(f"{where}.{name} is required")
    return value


def _number(body: Mapping[str, Any], name: str, where: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadConfig(f"{where}.{name} must be a number")
    return float(value)
