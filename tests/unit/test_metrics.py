"""The cached labelled children count into the same series ``labels()`` reads."""

from __future__ import annotations

from prometheus_client import REGISTRY

from worker import metrics


def test_a_cached_child_is_the_labelled_series_itself() -> None:
    labels = {"source": "test-child"}
    before = REGISTRY.get_sample_value("paw_webhooks_received_total", labels) or 0.0
    first = metrics.child(metrics.WEBHOOKS_RECEIVED, "test-child")
    assert metrics.child(metrics.WEBHOOKS_RECEIVED, "test-child") is first
    assert metrics.WEBHOOKS_RECEIVED.labels("test-child") is first
    first.inc(2)
    metrics.WEBHOOKS_RECEIVED.labels("test-child").inc()
    assert REGISTRY.get_sample_value("paw_webhooks_received_total", labels) == before + 3


def test_one_label_set_is_not_another_metric_s() -> None:
    received = metrics.child(metrics.WEBHOOKS_RECEIVED, "test-other")
    accepted = metrics.child(metrics.WEBHOOKS_ACCEPTED, "test-other")
    assert received is not accepted
