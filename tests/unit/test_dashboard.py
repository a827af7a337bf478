"""The sample Grafana dashboard only uses metrics the code defines, and shows each of them."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

from tests.helpers import ROOT
from worker import metrics

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def defined_metric_names() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        describe = getattr(value, "describe", None)
        if callable(describe) and value in REGISTRY._collector_to_names:
            for family in describe():
                names.add(family.name)
    return names


def test_dashboard_uses_only_defined_metrics_and_shows_all_of_them() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|total|count|sum)$", "", m) for e in exprs for m in re.findall(r"\bpaw_[a-z_]+", e)
    }
    defined = {re.sub(r"_total$", "", n) for n in defined_metric_names()}
    assert used <= defined, f"dashboard uses undefined metrics: {used - defined}"
    assert defined <= used, f"not on the dashboard: {defined - used}"
