"""What ``/sandbox/public_token/create`` makes of ``options.override_username`` / ``override_password``.

:func:`resolve` turns (username, password, institution) into a :class:`Recipe`, the Item's accounts
and Auth method, or raises the error Plaid documents. The recipes are listed in the package
docstring; the evidence for each is beside it below.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re

import structlog

from sandbox import custom_user
from sandbox.accounts import (
    AUTOMATED_MICRODEPOSIT_CHECKING,
    CREDIT_CARD,
    MORTGAGE,
    SAVING,
    STUDENT_LOAN,
    USER_GOOD_ACCOUNTS,
    AccountSpec,
)
from sandbox.plaid_errors import CREATION_ERRORS, creation_error, invalid_credentials

log = structlog.get_logger("sandbox")

USER_GOOD = "user_good"
USER_CUSTOM = "user_custom"
PASS_GOOD = "pass_good"  # noqa: S105 - Plaid's public test password, the default (OpenAPI)
MICRODEPOSITS_GOOD = "microdeposits_good"
HOUNDSTOOTH = "ins_109512"
INSTANT_AUTH = "INSTANT_AUTH"
AUTOMATED_MICRODEPOSITS = "AUTOMATED_MICRODEPOSITS"

# "You can trigger any multi-factor authentication (MFA) flow ... by using username user_good and
# modifying the password" (plaid.com/docs/sandbox/test-credentials/). /sandbox/public_token/create
# has no MFA step to answer, so these passwords log in like pass_good.
_MFA_PASSWORD = re.compile(r"^mfa_(device|selections|questions_\d_\d|selections_\d_\d_\d)$")
_ERROR_PREFIX = "error_"
# The codes an error_<CODE> password simulates: "several ITEM_ERROR or INSTITUTION_ERROR errors"
# (plaid.com/docs/sandbox/test-credentials/). The full list is not in the docs we have; a partner's
# copy of it (docs.synctera.com, sandbox external account test cases) also has error_INTERNAL_SERVER_ERROR.
ERROR_PASSWORD_CODES = frozenset(
    code
    for code, (error_type, _, _) in CREATION_ERRORS.items()
    if error_type in ("ITEM_ERROR", "INSTITUTION_ERROR") or code == "INTERNAL_SERVER_ERROR"
)
# force_error values of a user_custom configuration that are no Plaid error code themselves.
_FORCE_ERROR_CODES = {"PLAID_ERROR": "INTERNAL_SERVER_ERROR"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    accounts: tuple[AccountSpec, ...]
    auth_method: str
    institution_id: str  # the Item's institution (an alias may pin its own)


@dataclasses.dataclass(frozen=True)
class Alias:
    """An emulator-only username standing for a real recipe."""

    username: str
    password: str
    institution_id: str | None = None  # None: the requested institution


def _custom_json(*accounts: AccountSpec) -> str:
    """A user_custom configuration object describing ``accounts``."""
    overrides = [
        {
            "type": a.type,
            "subtype": a.subtype,
            "starting_balance": a.current,
            **({"force_available_balance": a.available} if a.available is not None else {}),
            **({"has_null_available_balance": True} if a.available is None else {}),
            "meta": {
                "name": a.name,
                **({"official_name": a.official_name} if a.official_name is not None else {}),
                **({"limit": a.limit} if a.limit is not None else {}),
                "mask": a.mask,
            },
        }
        for a in accounts
    ]
    return json.dumps({"override_accounts": overrides})


# The emulator's own usernames from before it modelled Plaid's test users, kept as aliases.
ALIASES = {
    "user_savings_only": Alias(USER_CUSTOM, _custom_json(SAVING)),
    "user_no_depository": Alias(USER_CUSTOM, _custom_json(CREDIT_CARD, STUDENT_LOAN, MORTGAGE)),
    "user_automated_microdeposits": Alias(USER_GOOD, MICRODEPOSITS_GOOD, HOUNDSTOOTH),
}


def resolve(username: str | None, password: str | None, institution_id: str, rng: random.Random) -> Recipe:
    """The Item that logging in as ``username`` / ``password`` at ``institution_id`` creates.
    Raises :class:`PlaidAPIError` where Plaid's Sandbox refuses the login."""
    username = username or USER_GOOD
    alias = ALIASES.get(username)
    if alias is not None:
        username, password = alias.username, alias.password
        institution_id = alias.institution_id or institution_id
    password = password or PASS_GOOD
    if username == USER_GOOD:
        return _user_good(password, institution_id)
    if username == USER_CUSTOM:
        return _user_custom(password, institution_id, rng)
    raise invalid_credentials()


def _user_good(password: str, institution_id: str) -> Recipe:
    if password == MICRODEPOSITS_GOOD and institution_id == HOUNDSTOOTH:
        return Recipe((AUTOMATED_MICRODEPOSIT_CHECKING,), AUTOMATED_MICRODEPOSITS, institution_id)
    # microdeposits_good elsewhere: Plaid names Houndstooth Bank as the institution for Automated
    # Micro-deposits (plaid.com/docs/sandbox/institutions/) and uses that flow only "where Instant Auth
    # is not available" (plaid.com/docs/auth/coverage/automated/); the other test institutions offer
    # Instant Auth, so the login is an ordinary one. (The docs state no other outcome.)
    if password in (PASS_GOOD, MICRODEPOSITS_GOOD) or _MFA_PASSWORD.match(password):
        return Recipe(USER_GOOD_ACCOUNTS, INSTANT_AUTH, institution_id)
    if password.startswith(_ERROR_PREFIX):
        # "error_ITEM_LOCKED allows you to simulate an ITEM_LOCKED error" when creating the Item
        # (plaid.com/docs/sandbox/test-credentials/): the create call itself fails.
        code = password.removeprefix(_ERROR_PREFIX)
        if code in ERROR_PASSWORD_CODES:
            raise creation_error(code)
    raise invalid_credentials()  # a wrong password, or an error_<CODE> the Sandbox does not simulate


def _user_custom(password: str, institution_id: str, rng: random.Random) -> Recipe:
    try:
        config = custom_user.parse(password, rng)
    except custom_user.BadConfig as exc:
        # Plaid answers only INVALID_CREDENTIALS; the reason goes to the emulator's log.
        log.info("sandbox.user_custom_refused", reason=str(exc))
        raise invalid_credentials() from None
    if config.force_error is not None:
        # "An error code to force on Item creation" (OpenAPI UserCustomPassword.force_error).
        raise creation_error(_FORCE_ERROR_CODES.get(config.force_error, config.force_error))
    return Recipe(config.accounts, INSTANT_AUTH, institution_id)
