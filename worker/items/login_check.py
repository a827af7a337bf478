"""The periodic check of ``login_required`` Items: a user may repair the login in Link update mode
without the upstream app reporting it (``item.repaired``), and Plaid sends no webhook for a repair in
your own app. So, every so often, Plaid is asked (``/item/get``) about the Items that have waited a
while, a bounded number per run; a repaired one resumes from where it stopped."""

from __future__ import annotations

from datetime import timedelta

import structlog

from worker.errors import Deferred, UpstreamError
from worker.items.model import Cause
from worker.items.pipeline import Pipeline
from worker.items.states import State

log = structlog.get_logger(__name__)


async def check_logins_once(pipeline: Pipeline, *, older_than_s: float, limit: int = 100) -> int:
    """Asks Plaid about each ``login_required`` Item not looked at for ``older_than_s``; returns how
    many left ``login_required``. One Item's failure (Plaid down, the Item busy) skips it this time."""
    resumed = 0
    for item_id in await pipeline.store.logins_to_check(timedelta(seconds=older_than_s), limit):
        try:
            item = await pipeline.drive(
                item_id, public_token=None, cause=Cause("login_check", None), check_login=True
            )
        except Deferred:
            continue  # being driven right now: whoever holds it looks at it
        except UpstreamError as e:
            log.warning("login_check.failed", item_id=str(item_id), error_code=e.error_code)
            continue
        if item is not None and item.state is not State.LOGIN_REQUIRED:
            resumed += 1
            log.info("login_check.repaired", item_id=str(item_id), state=item.state.value)
    return resumed


def interval_for(older_than_s: float) -> float:
    """How often to look: a quarter of the wait, between 0.2 s and five minutes."""
    return min(max(older_than_s / 4, 0.2), 300.0)
