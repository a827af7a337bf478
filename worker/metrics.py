"""Prometheus metrics: defined once here, served by each process on its admin port (``/metrics``).

Label values are bounded: webhook types and codes are upper-case codes the receiver validated (and
only verified webhooks reach them), states and triggers are enums, reasons are short fixed strings.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

WEBHOOKS_RECEIVED = Counter("paw_webhooks_received_total", "Webhooks received", ["source"])
WEBHOOKS_ACCEPTED = Counter(
    "paw_webhooks_accepted_total", "Webhooks verified and confirmed by the broker", ["source"]
)
WEBHOOKS_REJECTED = Counter(
    "paw_webhooks_rejected_total", "Webhooks refused (4xx/503), by reason", ["source", "reason"]
)
PUBLISH_SECONDS = Histogram(
    "paw_publish_seconds",
    "Time from publish to broker confirm",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_FAILURES = Counter("paw_publish_failures_total", "Publishes the broker did not confirm", ["reason"])

EVENTS_PROCESSED = Counter(
    "paw_events_processed_total", "Messages consumed, by kind and outcome", ["kind", "outcome"]
)
TRANSITIONS = Counter("paw_transitions_total", "Item state transitions", ["from_state", "to_state"])
RETRIES = Counter("paw_retries_total", "Messages sent to a delay queue, by error", ["queue", "reason"])
DEAD_LETTERS = Counter("paw_dead_letters_total", "Messages dead-lettered, by error", ["queue", "reason"])
OPERATOR_ERRORS = Counter(
    "paw_operator_errors_total",
    "Upstream errors in paw's own setup (keys, Dashboard, environment): the message is parked",
    ["error_code"],
)
OUTBOX_PUBLISHED = Counter("paw_outbox_published_total", "Outcome events the broker confirmed (relay)")
OUTBOX_FAILURES = Counter("paw_outbox_failures_total", "Relay batches that failed (broker or database)")
OUTBOX_UNSENT = Gauge("paw_outbox_unsent", "Outcome events written but not yet confirmed by the broker")
OUTBOX_OLDEST_S = Gauge("paw_outbox_oldest_seconds", "Age of the oldest unsent outcome event (0: none)")
ITEMS = Gauge("paw_items", "Items per state (refreshed by each worker every few seconds)", ["state"])
DLQ_DEPTH = Gauge("paw_dlq_depth", "Messages waiting in the dead-letter queue")
QUEUE_DEPTH = Gauge("paw_queue_depth", "Messages waiting in a work queue", ["queue"])
UPSTREAM_SECONDS = Histogram(
    "paw_upstream_seconds",
    "Plaid and Atomic call latency",
    ["service", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_UP = Gauge(
    "paw_upstream_up",
    "1 while an upstream endpoint answers, 0 for 30 s after it failed (the receiver: Plaid's key endpoint)",
    ["service", "endpoint"],
)
UPSTREAM_ERRORS = Counter(
    "paw_upstream_errors_total",
    "Plaid and Atomic errors, by error code",
    ["service", "endpoint", "error_code"],
)


def kind_of(routing_key: str) -> str:
    """``webhook.plaid.ITEM.ERROR`` stays as it is; ``item.link`` too; anything else is ``other``."""
    parts = routing_key.split(".")
    if parts[:2] in (["webhook", "plaid"], ["webhook", "atomic"]) or parts[0] == "item":
        return routing_key[:80]
    return "other"


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
