"""The reconciler: with Atomic's webhooks lost, Items stuck in atomic_pending still finish."""

from __future__ import annotations

from sandbox.app import SandboxConfig
from tests.helpers import RunningWorker, Sandbox, new_public_token, settled, submit_amqp
from worker.items.states import State
from worker.services import Services


def test_sandbox_sends_no_atomic_webhooks_here(sandbox_config: SandboxConfig) -> None:
    assert sandbox_config.atomic_webhook_url is None


async def test_lost_atomic_webhooks_are_reconciled_by_polling(
    services: Services, worker: RunningWorker, sandbox: Sandbox
) -> None:
    good, rejected = await new_public_token(sandbox), await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": good, "client_user_id": "u-reconcile"})
    await submit_amqp(services, {"public_token": rejected, "client_user_id": "reject-reconcile"})
    verified = await settled(services, good, State.ATOMIC_VERIFIED)
    refused = await settled(services, rejected, State.ATOMIC_REJECTED)
    for item in (verified, refused):
        last = (await services.store.history(item.id))[-1]
        assert last.cause == "reconciler"
        assert last.detail["status"] in ("VERIFIED", "REJECTED")
    assert sandbox.state.webhook_deliveries == []  # nothing was delivered: polling did it
