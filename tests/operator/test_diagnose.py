"""MetricsAvailable=False names what to fix: the policy's reason, refined by what Prometheus holds
of the pool's worker addresses."""

from __future__ import annotations

import dataclasses

from carpool_operator.conditions import Condition
from carpool_operator.diagnose import PoolContext, metrics_condition
from carpool_operator.prometheus import ScrapeFacts

CONTEXT = PoolContext(
    namespace="ns",
    pool="p",
    url="http://prom:9090",
    addresses=("10.0.0.5:8000",),
    sampled_at=None,
    now=1000.0,
    stale_after_seconds=15.0,
    interval_seconds=5.0,
    rate_window="1m",
)
NO_SAMPLES = Condition("MetricsAvailable", "False", "NoSamples", "no samples; holding")


def test_workers_scraped_without_pool_labels_name_the_labels_and_the_relabel_fix() -> None:
    facts = ScrapeFacts({"10.0.0.5:8000": {"namespace": "", "pool": ""}}, {"10.0.0.5:8000": 1.0})
    shown = metrics_condition(NO_SAMPLES, facts, CONTEXT)
    assert (shown.status, shown.reason) == ("False", "MissingScrapeLabels")
    assert "without the labels namespace, pool" in shown.message
    assert "prometheus.workers.podMonitor.enabled=true" in shown.message
    assert "target_label: pool" in shown.message


def test_one_missing_label_is_named_alone() -> None:
    facts = ScrapeFacts({"10.0.0.5:8000": {"namespace": "ns", "pool": ""}}, {})
    shown = metrics_condition(NO_SAMPLES, facts, CONTEXT)
    assert "without the label pool;" in shown.message


def test_a_pool_label_with_another_value_is_named() -> None:
    facts = ScrapeFacts({"10.0.0.5:8000": {"namespace": "ns", "pool": "assistant-worker"}}, {})
    shown = metrics_condition(NO_SAMPLES, facts, CONTEXT)
    assert shown.reason == "MissingScrapeLabels"
    assert "pool='assistant-worker' instead of 'p'" in shown.message


def test_workers_prometheus_does_not_scrape_get_the_scrape_fix() -> None:
    shown = metrics_condition(NO_SAMPLES, ScrapeFacts({}, {}), CONTEXT)
    assert shown.reason == "NoSamples"
    assert "does not scrape them" in shown.message and "10.0.0.5:8000" in shown.message


def test_failing_scrapes_are_told_apart_from_no_scrape() -> None:
    shown = metrics_condition(NO_SAMPLES, ScrapeFacts({}, {"10.0.0.5:8000": 0.0}), CONTEXT)
    assert shown.reason == "ScrapeFailing"


def test_no_running_worker_is_nothing_to_fix_in_prometheus() -> None:
    context = dataclasses.replace(CONTEXT, addresses=())
    shown = metrics_condition(NO_SAMPLES, ScrapeFacts({}, {}), context)
    assert "no worker of this pool runs yet" in shown.message


def test_samples_without_rates_ask_for_a_shorter_scrape_interval() -> None:
    context = dataclasses.replace(
        CONTEXT, sampled_at=995.0, endpoints=("chat",), endpoints_seen=("chat",)
    )
    shown = metrics_condition(NO_SAMPLES, ScrapeFacts({}, {}), context)
    assert "at most every 30 s" in shown.message


def test_stale_samples_give_the_age_the_limit_and_the_interval_to_scrape_at() -> None:
    stale = Condition("MetricsAvailable", "False", "MetricsStale", "old")
    shown = metrics_condition(stale, None, dataclasses.replace(CONTEXT, sampled_at=940.0))
    assert shown.reason == "MetricsStale"
    assert "is 60 s old" in shown.message and "younger than 15 s" in shown.message
    assert "scrape them at least every 5 s" in shown.message
    assert "spec.scaling.intervalSeconds" in shown.message


def test_fresh_metrics_and_missing_series_pass_through() -> None:
    fresh = Condition("MetricsAvailable", "True", "MetricsFresh", "all series present")
    missing = Condition("MetricsAvailable", "False", "SeriesMissing", "no arrival rate for a")
    assert metrics_condition(fresh, None, CONTEXT) == fresh
    assert metrics_condition(missing, None, CONTEXT) == missing


def test_every_refined_reason_says_the_pool_holds() -> None:
    facts = ScrapeFacts({"10.0.0.5:8000": {"namespace": "", "pool": ""}}, {})
    assert metrics_condition(NO_SAMPLES, facts, CONTEXT).message.endswith(
        "holding replicas and limits"
    )


def test_series_only_for_other_endpoints_point_at_the_workers_limits() -> None:
    context = dataclasses.replace(
        CONTEXT, sampled_at=995.0, endpoints=("chat",), endpoints_seen=("old-name",)
    )
    shown = metrics_condition(NO_SAMPLES, ScrapeFacts({}, {}), context)
    assert "for the endpoints old-name, but none for the spec's chat" in shown.message
