"""Why a pool's metrics are unavailable, in words that name the fix.

Contract (pure): ``metrics_condition(held, facts, context)`` takes the MetricsAvailable condition
the policy decided (it holds on no samples, stale samples or an unreachable Prometheus, and
knows only that) and returns the condition the pool shows, with a reason and a message that say
what to fix:

- ``PrometheusUnavailable``: the query failed; the message is the failure and its fix (the
  URL's source, credentials, CA) from ``carpool_operator.prometheus``;
- ``MissingScrapeLabels``: Prometheus scrapes the pool's workers (their addresses are known from
  the pods) but without the ``namespace`` and ``pool`` labels, or with other values: which
  labels, and the PodMonitor setting or relabel rules that add them;
- ``ScrapeFailing``: the workers are targets whose scrapes fail (``up == 0``);
- ``NoSamples``: nothing from the workers at all (Prometheus does not scrape them, or no worker
  runs yet), or samples without rates (scraped too rarely for the rate window);
- ``MetricsStale``: the newest sample is older than the policy accepts: the scrape interval and
  the control interval it needs.

Any other condition (True, ``SeriesMissing``) passes through unchanged. The policy's decision
is not touched: it holds whatever the reason. ``facts`` is None when they could not be
gathered (the message then gives the general fix); ``context`` is needed for the reasons that
are diagnosed here (without it the policy's condition is returned).
"""

from __future__ import annotations

import dataclasses

from carpool_operator.conditions import Condition
from carpool_operator.prometheus import POOL_LABELS, ScrapeFacts

HOLDING = "; holding replicas and limits"
RELABEL = (
    "with the Prometheus Operator set prometheus.workers.podMonitor.enabled=true in the carpool "
    "chart (its PodMonitor adds them); in a scrape config add the relabel rules "
    "{source_labels: [__meta_kubernetes_namespace], target_label: namespace} and "
    "{source_labels: [__meta_kubernetes_pod_label_carpool_dev_pool], target_label: pool}"
)
SCRAPE = (
    "enable the chart's PodMonitor (prometheus.workers.podMonitor.enabled=true) or add a "
    "scrape job for pods annotated prometheus.io/scrape=true that labels them with namespace and "
    "pool (docs/install.md)"
)


@dataclasses.dataclass(frozen=True)
class PoolContext:
    """What the operator knows about the pool apart from Prometheus."""

    namespace: str
    pool: str
    url: str
    addresses: tuple[str, ...]  # ip:port of the pool's running worker pods
    sampled_at: float | None  # the newest sample's time (None: none)
    now: float
    stale_after_seconds: float
    interval_seconds: float
    rate_window: str
    endpoints: tuple[str, ...] = ()  # the spec's
    endpoints_seen: tuple[str, ...] = ()  # those Prometheus has series of for this pool


def metrics_condition(
    held: Condition, facts: ScrapeFacts | None, context: PoolContext | None
) -> Condition:
    if held.status == "True" or held.reason == "SeriesMissing":
        return held
    if held.reason == "PrometheusUnavailable":
        return dataclasses.replace(held, message=held.message.removesuffix("; holding") + HOLDING)
    if context is None:
        return held
    if held.reason == "MetricsStale":
        return _stale(context)
    return _no_samples(facts, context)


def _no_samples(facts: ScrapeFacts | None, context: PoolContext) -> Condition:
    where = f"Prometheus at {context.url}"
    if context.sampled_at is not None and not set(context.endpoints) & set(context.endpoints_seen):
        seen = ", ".join(sorted(context.endpoints_seen))
        return _condition(
            "NoSamples",
            f"{where} has series of this pool's workers for the endpoints {seen}, but none for "
            f"the spec's {', '.join(context.endpoints)}: the workers serve an older limits "
            f"document (see the pool's limits ConfigMap and the workers' log), or another "
            f"server answers at their address",
        )
    if context.sampled_at is not None:
        return _condition(
            "NoSamples",
            f"{where} has samples of this pool's workers but no rate over the operator's "
            f"{context.rate_window} window, which needs two samples in it: scrape the workers "
            f"more often (at most every {_half(context.rate_window)})",
        )
    if not context.addresses:
        return _condition(
            "NoSamples", "no worker of this pool runs yet, so there is nothing to measure"
        )
    if facts is None:
        return _condition("NoSamples", f"{where} has no series of this pool's workers: {SCRAPE}")
    wanted = {"namespace": context.namespace, "pool": context.pool}
    mislabelled = {
        address: labels
        for address, labels in facts.labels.items()
        if any(labels.get(k) != wanted[k] for k in POOL_LABELS)
    }
    if mislabelled:
        return _condition("MissingScrapeLabels", _labels_message(where, mislabelled, wanted))
    failing = sorted(a for a, value in facts.up.items() if value == 0)
    if failing:
        return _condition(
            "ScrapeFailing",
            f"{where} scrapes this pool's workers at {', '.join(failing)} but every scrape "
            f"fails: see its targets page (/targets) for the error; a NetworkPolicy that keeps "
            f"Prometheus from the worker port is the usual cause",
        )
    addresses = ", ".join(context.addresses)
    return _condition(
        "NoSamples",
        f"{where} has no series from this pool's workers ({addresses}): it does not scrape "
        f"them: {SCRAPE}",
    )


def _labels_message(
    where: str, mislabelled: dict[str, dict[str, str]], wanted: dict[str, str]
) -> str:
    missing = sorted({k for labels in mislabelled.values() for k in POOL_LABELS if not labels[k]})
    wrong = sorted(
        {
            f"{k}={labels[k]!r} instead of {wanted[k]!r}"
            for labels in mislabelled.values()
            for k in POOL_LABELS
            if labels[k] and labels[k] != wanted[k]
        }
    )
    problems = []
    if missing:
        problems.append(f"without the label{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if wrong:
        problems.append(f"with {', '.join(wrong)}")
    addresses = ", ".join(sorted(mislabelled))
    return (
        f"{where} scrapes this pool's workers ({addresses}) {' and '.join(problems)}; the "
        f"operator's queries group by namespace and pool: add them when scraping: {RELABEL}"
    )


def _stale(context: PoolContext) -> Condition:
    age = "no" if context.sampled_at is None else f"{context.now - context.sampled_at:.0f} s"
    limit = context.stale_after_seconds
    return _condition(
        "MetricsStale",
        f"the newest sample of this pool's workers in Prometheus at {context.url} is {age} old; "
        f"the policy acts only on samples younger than {limit:.0f} s "
        f"({limit / context.interval_seconds:.0f} control intervals of "
        f"{context.interval_seconds:.0f} s): Prometheus scrapes the workers too rarely or has "
        f"stopped: scrape them at least every {context.interval_seconds:.0f} s (the chart's "
        f"prometheus.workers.podMonitor.interval), or raise spec.scaling.intervalSeconds",
    )


def _half(window: str) -> str:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(window[:-1]) * units[window[-1]]
    except (KeyError, ValueError):
        return f"half of {window}"
    return f"{seconds / 2:.0f} s"


def _condition(reason: str, message: str) -> Condition:
    return Condition("MetricsAvailable", "False", reason, message + HOLDING)
