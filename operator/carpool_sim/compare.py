"""Run every requested policy on one scenario, with the same trace, profile and bounds.

Contract:
- `POLICIES` names the policies `carpool sim --policy` accepts.
- `peak_static_replicas(scenario, config, target)` is static peak provisioning: the smallest
  fixed replica count within the pool's bounds at which every endpoint attains `target`
  (found by bisection over simulated runs: attainment grows with replicas), or the maximum
  when none does.
- `resolve(scenario, options)` fills in the static peak count and the autoscalers' initial
  replicas (by default every policy starts the run with the static peak count: a warm pool,
  as after the busy hour before the trace, so no policy pays for a cold start).
- `run_policies(scenario, names, options)` returns one `RunResult` per name, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from carpool_sim.controllers import (
    Bounds,
    Carpool,
    Controller,
    HpaGpuUtilization,
    KedaQueueLength,
    KnativeKpa,
    Static,
)
from carpool_sim.report import attained_mask
from carpool_sim.scenario import Scenario
from carpool_sim.sim import RunResult, SimConfig, simulate

POLICIES = ("carpool", "hpa-gpu", "keda-queue", "kpa", "static")


@dataclass(frozen=True)
class Options:
    config: SimConfig = SimConfig()
    sla_target: float = 0.99
    static_replicas: int | None = None  # None: peak provisioning by search
    # What every autoscaler starts with; None: the static peak count (a warm pool).
    initial_replicas: int | None = None
    keda_queue_threshold: float = 10.0
    rate_window_seconds: float = 60.0


def meets_target(result: RunResult, scenario: Scenario, target: float) -> bool:
    attained = attained_mask(result, scenario.spec)
    names = [r.endpoint for r in scenario.requests]
    for e in scenario.spec.endpoints:
        mine = [a for a, n in zip(attained, names, strict=True) if n == e.name]
        if mine and sum(mine) / len(mine) < target:
            return False
    return True


def peak_static_replicas(scenario: Scenario, config: SimConfig, target: float) -> int:
    low, high = scenario.spec.min_replicas, scenario.spec.max_replicas
    low = max(1, low)

    def good(n: int) -> bool:
        return meets_target(simulate(scenario.requests, scenario.spec, scenario.profile,
                                     Static(n), config), scenario, target)  # fmt: skip

    if not good(high):
        return high
    while low < high:
        mid = (low + high) // 2
        if good(mid):
            high = mid
        else:
            low = mid + 1
    return low


def make_controller(name: str, scenario: Scenario, options: Options) -> Controller:
    spec = scenario.spec
    bounds = Bounds(max(1, spec.min_replicas), spec.max_replicas)
    initial = options.initial_replicas
    if initial is None:
        initial = options.static_replicas
    if initial is None:
        initial = peak_static_replicas(scenario, options.config, options.sla_target)
    bounds.initial = bounds.clamp(initial)
    if name == "carpool":
        return Carpool(spec, scenario.profile, bounds, options.rate_window_seconds)
    if name == "hpa-gpu":
        return HpaGpuUtilization(bounds)
    if name == "keda-queue":
        return KedaQueueLength(bounds, options.keda_queue_threshold)
    if name == "kpa":
        return KnativeKpa(bounds)
    if name == "static":
        replicas = options.static_replicas
        if replicas is None:
            replicas = peak_static_replicas(scenario, options.config, options.sla_target)
        return Static(bounds.clamp(replicas))
    raise ValueError(f"unknown policy {name!r}: use {', '.join(POLICIES)}")


def resolve(scenario: Scenario, options: Options) -> Options:
    """Fill in the static peak count (searched once) and the autoscalers' initial replicas."""
    static = options.static_replicas
    if static is None:
        static = peak_static_replicas(scenario, options.config, options.sla_target)
    initial = static if options.initial_replicas is None else options.initial_replicas
    return replace(options, static_replicas=static, initial_replicas=initial)


def run_policies(
    scenario: Scenario,
    names: list[str],
    options: Options = Options(),
    progress: Callable[[str, float], None] | None = None,
) -> list[RunResult]:
    results = []
    for name in names:
        controller = make_controller(name, scenario, options)

        def tick(now: float, name: str = name) -> None:
            if progress is not None:
                progress(name, now)

        results.append(
            simulate(
                scenario.requests,
                scenario.spec,
                scenario.profile,
                controller,
                options.config,
                tick,
            )  # fmt: skip
        )
    return results
