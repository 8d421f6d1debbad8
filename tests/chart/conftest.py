"""Helpers for the chart's checks that need no cluster: helm and promtool from the pinned
builds (``carpool_cluster.binaries``), the chart rendered with given values, and carpool's
alerting rules extracted from the rendered PrometheusRule into a plain rules file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from carpool_cluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "carpool"
MONITORING_APIS = [
    "monitoring.coreos.com/v1/PrometheusRule",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/ServiceMonitor",
]


def tool(name: str) -> Path:
    path = Path(getattr(binaries.expected(), name))
    if not path.exists():
        path = Path(getattr(binaries.ensure_binaries(), name))
    return path


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tool("helm")), "template", "carpool", str(CHART), "--namespace", "carpool", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def render(*args: str) -> list[dict]:
    """The chart's objects rendered with ``helm template`` and these extra arguments."""
    return [doc for doc in yaml.safe_load_all(helm_template(*args).stdout) if doc]


def alert_groups(*args: str) -> list[dict]:
    """The rule groups of the chart's PrometheusRule (rendered with the monitoring APIs)."""
    apis = [a for api in MONITORING_APIS for a in ("--api-versions", api)]
    docs = render("--set", "prometheus.rules.enabled=true", *apis, *args)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


@pytest.fixture
def rendered() -> Callable[..., list[dict]]:
    return render


@pytest.fixture
def template() -> Callable[..., subprocess.CompletedProcess]:
    """``helm template`` of the chart with extra arguments (``check=False`` to see failures)."""
    return helm_template


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    """carpool's alerts as a plain Prometheus rules file, named as alerts_test.yaml expects."""
    path = tmp_path / "carpool-alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": alert_groups()}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def promtool() -> Path:
    return tool("promtool")


@pytest.fixture(scope="session")
def helm() -> Path:
    return tool("helm")
