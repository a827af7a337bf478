"""The shipped alert rules (docs/alerts.yaml) are valid Prometheus rules, every alert fires in its
synthetic test (tests/alerts/alerts_test.yaml, run by promtool), and they name only metrics the code
defines. promtool comes from Debian's prometheus package, which `./run test` installs when missing."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import ROOT
from tests.unit.test_dashboard import defined_metric_names

RULES = ROOT / "docs" / "alerts.yaml"
RULE_TESTS = ROOT / "tests" / "alerts" / "alerts_test.yaml"


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `./run test` installs it (apt-get install prometheus)")
    done = subprocess.run(  # noqa: S603 - promtool on our own files
        [tool, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alerts() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid() -> None:
    assert f"SUCCESS: {len(alerts())} rules found" in promtool("check", "rules", str(RULES))


def test_every_alert_fires_in_its_synthetic_test_and_all_pass() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert firing == {str(rule["alert"]) for rule in alerts()}
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


def test_the_rules_name_only_metrics_the_code_defines() -> None:
    defined = {re.sub(r"_total$", "", n) for n in defined_metric_names()}
    for rule in alerts():
        used = {
            re.sub(r"_(bucket|total|count|sum)$", "", m)
            for m in re.findall(r"\bpaw_[a-z_]+", str(rule["expr"]))
        }
        assert used and used <= defined, (rule["alert"], used - defined)
