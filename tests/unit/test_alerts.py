"""Alert rules (``configs/prometheus/welip-alerts.yaml``): promtool's checks and unit tests, and the
PrometheusRule that ships them to the Prometheus operator.

promtool comes from Debian's prometheus package, unpacked into the venv by ``make install``;
without it these tests fail (they do not skip). The Helm chart ships these groups as a
PrometheusRule, read from this file (``kuberay/charts/welip/files/welip-alerts.yaml`` links here;
``tests/unit/test_chart.py`` checks the rendered rule with promtool).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.test_dashboards import KNOWN_METRICS, REPO_ROOT, metric_names, run_promtool

RULES_DIR = REPO_ROOT / "configs" / "prometheus"
RULES_FILE = RULES_DIR / "welip-alerts.yaml"
RULES_TESTS = RULES_DIR / "welip-alerts.test.yaml"
SEVERITIES = {"warning", "critical"}
# Alerts about something other than a model (the audit spool is per gateway replica).
NOT_PER_MODEL = {"WelipAuditSpoolGrowing", "WelipAuditRefusingRequests"}
# The groups the issue asks for; a new group adds its line.
EXPECTED_GROUPS = {"welip-gateway-errors", "welip-latency", "welip-engines", "welip-audit", "welip-kv-cache"}


def load_rules() -> dict[str, Any]:
    data = yaml.safe_load(RULES_FILE.read_text())
    assert isinstance(data, dict)
    return data


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULES_TESTS.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_groups_ship() -> None:
    assert {group["name"] for group in load_rules()["groups"]} == EXPECTED_GROUPS


@pytest.mark.parametrize("rule", alerts(), ids=[rule["alert"] for rule in alerts()])
def test_alert_has_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Welip")
    assert rule["for"], "a pending period, so a blip does not page"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description"}
    if rule["alert"] not in NOT_PER_MODEL:
        assert "{{ $labels.model }}" in annotations["summary"]
        assert "{{ $labels.model }}" in annotations["description"]


@pytest.mark.parametrize("rule", alerts(), ids=[rule["alert"] for rule in alerts()])
def test_alert_names_known_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names and names <= KNOWN_METRICS, sorted(names - KNOWN_METRICS)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """The promtool cases fire each alert at some time, and find it quiet at another."""
    cases = [
        case for test in yaml.safe_load(RULES_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it is quiet"
