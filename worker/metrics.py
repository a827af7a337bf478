"""Prometheus metrics: defined once here, served by each process on its admin port (``/metrics``).

Label values are bounded: webhook types and codes are upper-case codes the receiver validated (and
only verified webhooks reach them), states and triggers are enums, reasons are short fixed strings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

M = TypeVar("M", bound=MetricWrapperBase)


@functools.lru_cache(maxsize=2048)
def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, resolved once per process and label set: ``labels()`` takes a
    lock and checks its arguments on every call, which added up to a few per cent of the receiver's
    CPU when called per webhook. No metric here ever removes a child, so a cached one stays live."""
    return metric.labels(*labels)


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
PARKED = Counter(
    "paw_results_parked_total",
    "Upstream results the database could not take: parked on the broker, applied, or found orphaned "
    "(the Item moved on without them: their access token removed at Plaid)",
    ["outcome"],
)
DEAD_LETTERS_UNINDEXED = Counter(
    "paw_dead_letters_unindexed_total",
    "Dead letters safe on the dead queue but not written to the index (Postgres refused): paw dlq reindex",
)
OPERATOR_ERRORS = Counter(
    "paw_operator_errors_total",
    "Upstream errors in paw's own setup (keys, Dashboard, environment): the message is parked",
    ["error_code"],
)
OUTBOX_PUBLISHED = Counter("paw_outbox_published_total", "Outcome events the broker confirmed (relay)")
OUTBOX_UNROUTED = Counter(
    "paw_outbox_unrouted_total",
    "Outcome events no queue was bound for (no callbacks configured, no subscriber): none to deliver",
)
OUTBOX_FAILURES = Counter("paw_outbox_failures_total", "Relay batches that failed (broker or database)")
PROCESSING_SECONDS = Histogram(
    "paw_processing_seconds",
    "Time a consumed message spent in its handler, by kind (routing key)",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TIME_TO_END = Histogram(
    "paw_item_time_to_end_seconds",
    "From submission to atomic_verified (not a return from login_required), atomic_rejected or failed",
    ["end_state"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400),
)
RESULT_UNRECORDED_SECONDS = Histogram(
    "paw_result_unrecorded_seconds",
    "From an upstream call's answer to its durable record (the commit, or the parked copy's confirm):"
    " a process killed inside this window loses that result",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_BATCH_SIZE = Histogram(
    "paw_db_batch_size",
    "Statements sent in one round trip and committed together (group commit), by statement",
    ["statement"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BUILD_INFO = Gauge("paw_build_info", "1, labelled with the running paw", ["version", "plaid_env", "service"])
HTTP_REQUESTS = Counter(
    "paw_http_requests_total",
    "Requests to the upstream API (/v1/*), by route and status",
    ["route", "status"],
)
HTTP_SECONDS = Histogram(
    "paw_http_seconds",
    "Time to answer an upstream API request (/v1/*), by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


@dataclasses.dataclass(frozen=True)
class GlobalSnapshot:
    """Facts about the whole deployment (the database, the broker), not about one process."""

    items: dict[str, int]
    queues: dict[str, tuple[int, int, int]]  # queue -> (ready, consumers, retrying)
    dead_letters: int
    outbox_unsent: int
    outbox_oldest_s: float
    oldest_stuck_s: float


class GlobalGauges(Collector):
    """The deployment-wide gauges, exported by one process only: the worker holding the gauges'
    Postgres advisory lock sets :attr:`snapshot`; every other process (other workers, receivers)
    exports none of them, so ``sum()`` over all scraped processes is the truth, not N times it."""

    def __init__(self) -> None:
        self.snapshot: GlobalSnapshot | None = None

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from self._families(self.snapshot)

    @staticmethod
    def _families(s: GlobalSnapshot | None) -> Iterator[Metric]:
        items = GaugeMetricFamily("paw_items", "Items per state", labels=["state"])
        depth = GaugeMetricFamily("paw_queue_depth", "Messages ready on a consumed queue", labels=["queue"])
        retrying = GaugeMetricFamily(
            "paw_queue_retrying", "Messages in a consumed queue's delay queues", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "paw_queue_consumers", "Consumers on a consumed queue", labels=["queue"]
        )
        dead = GaugeMetricFamily("paw_dlq_depth", "Messages waiting in the dead-letter queue")
        unsent = GaugeMetricFamily("paw_outbox_unsent", "Outcome events written but not yet confirmed")
        oldest = GaugeMetricFamily(
            "paw_outbox_oldest_seconds", "Age of the oldest unsent outcome event (0: none)"
        )
        stuck = GaugeMetricFamily(
            "paw_oldest_stuck_seconds",
            "How long the longest-waiting Item in link, exchanged, processor_token_issued or "
            "atomic_pending has not moved (0: none)",
        )
        if s is not None:
            for state, n in s.items.items():
                items.add_metric([state], n)
            for queue, (ready, consumer_count, retry) in s.queues.items():
                depth.add_metric([queue], ready)
                consumers.add_metric([queue], consumer_count)
                retrying.add_metric([queue], retry)
            dead.add_metric([], s.dead_letters)
            unsent.add_metric([], s.outbox_unsent)
            oldest.add_metric([], s.outbox_oldest_s)
            stuck.add_metric([], s.oldest_stuck_s)
        yield from (items, depth, retrying, consumers, dead, unsent, oldest, stuck)


GLOBAL = GlobalGauges()
REGISTRY.register(GLOBAL)
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
