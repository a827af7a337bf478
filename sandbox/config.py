"""The emulator's settings: one frozen dataclass, built once by the caller."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    client_id: str = "paw-sandbox-client"
    secret: str = "paw-sandbox-secret"  # noqa: S105 - emulator credential
    atomic_api_key: str = "paw-sandbox-atomic-key"
    atomic_webhook_secret: str = "paw-sandbox-atomic-webhook-secret"  # noqa: S105 - emulator credential
    atomic_webhook_url: str | None = None  # where Atomic-side webhooks are POSTed
    atomic_decision_delay_s: float = 0.0  # time from submission to the VERIFIED/REJECTED webhook
    latency_ms: float = 0.0  # added to every Plaid and Atomic call
