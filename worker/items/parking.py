"""A result parked while Postgres is away: what an upstream call did, sealed exactly as the database
would hold it, kept on the broker until the database answers again.

Why: some upstream calls cannot be made twice. ``/item/public_token/exchange`` spends the public
token; its access token exists nowhere but in the worker's memory until the transition commits. If
the commit cannot be made (Postgres restarting, or away for minutes), the result is published with
a confirm to ``<prefix>.parked`` and the message that led to it is acked; the worker applies the
parked result as soon as Postgres answers (:meth:`worker.items.pipeline.Pipeline.apply_parked`),
and drives the Item on. Tokens stay sealed (AES-GCM under the token keys, bound to the Item and
column): the broker never holds one in clear.

This module is pure: the record and its JSON form, no I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

from worker.items.model import Cause, Changes, Sealed
from worker.items.states import State, Trigger

FORMAT = 1


def _sealed(value: Sealed | None) -> dict[str, str] | None:
    if value is None:
        return None
    return {"key_id": value.key_id, "blob": base64.b64encode(value.blob).decode()}


def _unsealed(value: Any) -> Sealed | None:
    if value is None:
        return None
    return Sealed(key_id=str(value["key_id"]), blob=base64.b64decode(value["blob"], validate=True))


@dataclasses.dataclass(frozen=True)
class ParkedResult:
    """A transition that could not be committed: applied later exactly as it would have been."""

    item_id: uuid.UUID
    from_state: State  # the state the Item was in when the call was made: the transition's guard
    trigger: Trigger
    cause: Cause
    detail: dict[str, Any]
    changes: Changes
    owner: uuid.UUID | None  # the drive's lease, released when the result is applied
    answered_at: datetime  # when the upstream answered (the start of the window a kill would lose)
    parked_at: datetime

    def encode(self) -> bytes:
        changes = dataclasses.asdict(self.changes)
        changes["access_token"] = _sealed(self.changes.access_token)
        changes["processor_token"] = _sealed(self.changes.processor_token)
        return json.dumps(
            {
                "format": FORMAT,
                "item_id": str(self.item_id),
                "from_state": self.from_state.value,
                "trigger": self.trigger.value,
                "cause": {"name": self.cause.name, "event_id": self.cause.event_id},
                "detail": self.detail,
                "changes": changes,
                "owner": str(self.owner) if self.owner else None,
                "answered_at": self.answered_at.isoformat(),
                "parked_at": self.parked_at.isoformat(),
            },
            default=str,
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> ParkedResult:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything that is not one."""
        data = json.loads(body)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown parked-result format {data.get('format')!r}")
        raw = dict(data["changes"])
        raw["access_token"] = _unsealed(raw.get("access_token"))
        raw["processor_token"] = _unsealed(raw.get("processor_token"))
        known = {f.name for f in dataclasses.fields(Changes)}
        return cls(
            item_id=uuid.UUID(data["item_id"]),
            from_state=State(data["from_state"]),
            trigger=Trigger(data["trigger"]),
            cause=Cause(str(data["cause"]["name"]), data["cause"].get("event_id")),
            detail=dict(data["detail"]),
            changes=Changes(**{k: v for k, v in raw.items() if k in known}),
            owner=uuid.UUID(data["owner"]) if data.get("owner") else None,
            answered_at=datetime.fromisoformat(data["answered_at"]),
            parked_at=datetime.fromisoformat(data["parked_at"]),
        )

    def orphaned_access_token(self, recorded: Sealed | None) -> Sealed | None:
        """For an Item that is no longer in ``from_state``: the access token this result holds and
        the Item does not record (the Item moved on without it), live at Plaid and kept nowhere else,
        so to be removed there. ``None`` when the Item holds this very token (a second copy of the
        parked message, applied already) or the result carries none."""
        token = self.changes.access_token
        return token if token is not None and token != recorded else None
