"""Which account funds the Atomic account: a pure decision over what /accounts/get returned."""

from __future__ import annotations

from dataclasses import dataclass

from worker.items.model import Account

PENDING_VERIFICATION = frozenset({"pending_automatic_verification", "pending_manual_verification"})
UNUSABLE_VERIFICATION = frozenset({"verification_expired", "verification_failed"})


@dataclass(frozen=True)
class Choice:
    account_id: str | None
    awaiting_verification: bool = False
    reason: str | None = None  # why nothing was chosen


def choose_account(accounts: list[Account], requested: str | None) -> Choice:
    """The requested account if it is a usable depository account; else the first checking, then
    the first savings, depository account. An account still awaiting micro-deposit verification is
    chosen but marked ``awaiting_verification``."""
    depository = [a for a in accounts if a.type == "depository"]
    if requested is not None:
        candidates = [a for a in depository if a.account_id == requested]
        if not candidates:
            return Choice(None, reason="requested account is not a depository account of this Item")
    else:
        candidates = [a for a in depository if a.subtype == "checking"] or [
            a for a in depository if a.subtype == "savings"
        ]
        if not candidates:
            return Choice(None, reason="no checking or savings depository account")
    account = candidates[0]
    if account.verification_status in UNUSABLE_VERIFICATION:
        return Choice(None, reason=f"account verification status is {account.verification_status}")
    return Choice(
        account.account_id, awaiting_verification=account.verification_status in PENDING_VERIFICATION
    )
