"""carpool's alerting rules, extracted from the chart's PrometheusRule: Prometheus accepts them
and each behaves as alerts_test.yaml specifies (promtool, no cluster)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).parent


def test_prometheus_accepts_the_rules_file(promtool: Path, rules_file: Path) -> None:
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_behaves_as_its_unit_tests_say(promtool: Path, rules_file: Path) -> None:
    tests = shutil.copy(HERE / "alerts_test.yaml", rules_file.parent / "alerts_test.yaml")
    result = subprocess.run(
        [str(promtool), "test", "rules", str(tests)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test(rules_file: Path) -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(rules_file.read_text())["groups"]
        for rule in group["rules"]
    }
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert alerts - tested == set()
