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
    # Plaid webhook retries (sandbox/retry_schedule.py) run on Plaid's schedule times this factor:
    # 1/600 makes the first retry come after 0.05 s instead of 30 s, and the 24 h window 144 s.
    webhook_retry_time_scale: float = 1.0
    webhook_timeout_s: float = 10.0  # how long a webhook POST may take before it counts as failed

    def __post_init__(self) -> None:
        if not self.webhook_retry_time_scale > 0:
            raise ValueError("webhook_retry_time_scale must be > 0")
        if not self.webhook_timeout_s > 0:
            raise ValueError("webhook_timeout_s must be > 0")
