"""The simulator's prediction of a closed loop, beside what the loop measured: the same arrivals,
the same pool and the same profile through `carpool sim`'s carpool controller.

Contract:
- `predict(arrivals, pool_spec, profile, *, startup_seconds, scrape_interval_seconds,
  rate_window_seconds, until_seconds)` simulates the arrivals (an `Arrival` list, the replay's)
  against the pool (its CRD `spec`) and returns `{"endpoints": {name: {"ttft_p95_seconds",
  "requests"}}, "replica_minutes"}`: per-endpoint p95 TTFT of the requests sent before
  `until_seconds`, and the desired replicas integrated over `[0, until_seconds)`.
- `measured(outcomes, replica_samples, until_seconds)` is the same document from the loop's
  clients (`Outcome`s) and its `(seconds, desired replicas)` samples.
- `ratios(predicted, measured)` divides the one by the other, key by key.
- `startup_seconds(samples)` is the loop's pod start-up as it showed: from each rise of the
  desired replicas to the ready replicas reaching it, the median over rises (None without one),
  for `predict`'s `startup_seconds`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from carpool_bench.replay import Arrival, Outcome
from carpool_policy import PoolSpec
from carpool_replica.profile import Profile
from carpool_sim.controllers import Bounds, Carpool
from carpool_sim.sim import SimConfig, simulate
from carpool_sim.trace import Request


def predict(
    arrivals: Sequence[Arrival],
    pool_spec: Mapping[str, Any],
    profile: Profile,
    *,
    startup_seconds: float,
    scrape_interval_seconds: float,
    rate_window_seconds: float,
    until_seconds: float,
) -> dict[str, Any]:
    spec = PoolSpec.from_crd(pool_spec)
    requests = [Request(a.endpoint, a.at_seconds, a.prompt_tokens, a.max_tokens)
                for a in sorted(arrivals, key=lambda a: a.at_seconds)]  # fmt: skip
    bounds = Bounds(spec.min_replicas, spec.max_replicas, initial=spec.min_replicas)
    controller = Carpool(spec, profile, bounds, rate_window_seconds=rate_window_seconds)
    config = SimConfig(
        startup_seconds=startup_seconds,
        scrape_interval_seconds=scrape_interval_seconds,
        timeline_interval_seconds=1.0,
    )
    result = simulate(requests, spec, profile, controller, config)
    ttft = result.recorder.ttft
    endpoints: dict[str, list[float]] = {}
    for i, request in enumerate(requests):
        if request.arrival_seconds < until_seconds and not np.isnan(ttft[i]):
            endpoints.setdefault(request.endpoint, []).append(float(ttft[i]))
    samples = [(t, desired) for t, desired, _ready in result.timeline]
    return _document(endpoints, samples, until_seconds)


def measured(
    outcomes: Iterable[Outcome], replica_samples: Sequence[tuple[float, int]], until_seconds: float
) -> dict[str, Any]:
    endpoints: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.arrival.at_seconds < until_seconds and outcome.ttft_seconds is not None:
            endpoints.setdefault(outcome.arrival.endpoint, []).append(outcome.ttft_seconds)
    return _document(endpoints, replica_samples, until_seconds)


def startup_seconds(samples: Sequence[tuple[float, int, int]]) -> float | None:
    """Median lag from a rise of `desired` to `ready` reaching it, over `(t, desired, ready)`."""
    lags = []
    for i in range(1, len(samples)):
        (_, before, _), (t0, desired, _) = samples[i - 1], samples[i]
        if desired > before:
            reached = next((t for t, _, ready in samples[i:] if ready >= desired), None)
            if reached is not None:
                lags.append(reached - t0)
    return float(np.median(lags)) if lags else None


def ratios(predicted: Mapping[str, Any], real: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": {}}
    for name, figures in predicted["endpoints"].items():
        got = real["endpoints"].get(name, {}).get("ttft_p95_seconds")
        want = figures["ttft_p95_seconds"]
        out["endpoints"][name] = {"ttft_p95": round(want / got, 3) if want and got else None}
    if real["replica_minutes"]:
        out["replica_minutes"] = round(predicted["replica_minutes"] / real["replica_minutes"], 3)
    return out


def _document(
    endpoints: Mapping[str, list[float]], samples: Sequence[tuple[float, int]], until: float
) -> dict[str, Any]:
    return {
        "endpoints": {
            name: {
                "requests": len(values),
                "ttft_p95_seconds": round(float(np.percentile(values, 95)), 4),
            }
            for name, values in endpoints.items()
        },
        "replica_minutes": round(_integrate(samples, until) / 60.0, 2),
    }


def _integrate(samples: Sequence[tuple[float, int]], until: float) -> float:
    """Replica-seconds of a step function sampled at `(time, replicas)` over `[0, until)`."""
    points = sorted((t, n) for t, n in samples if t < until)
    total = 0.0
    for (t, n), (t_next, _) in zip(points, [*points[1:], (until, 0)], strict=True):
        total += n * (t_next - t)
    return total
