"""The baselines' knobs, swept: each autoscaler at its documented default and at its cheapest
setting that reaches the target.

Contract:
- `SWEEPS` names, per baseline, its knob, its documented default and the values swept, in
  order from the one that scales out soonest (more replicas) to the laxest.
- `Sweep.controller(bounds, value)` builds the baseline at that setting.
- `sweep(values, default, run)` runs the default, then bisects the values for the laxest one
  that reaches the target (reaching is taken to hold up to some value and fail past it, as it
  does when a laxer setting keeps fewer replicas); it returns every (value, outcome) it ran,
  the default first. About log2(len(values)) + 1 runs instead of one a value.
- `cheapest(outcomes)` picks, of the outcomes that reach their target, the one with the fewest
  GPU-hours (ties: the first listed); when none reaches it, the one closest to its target (the
  largest worst-endpoint margin, ties: fewer GPU-hours), so a row still shows what the best
  setting got. The tuned setting is `cheapest` of what `sweep` ran, so it is never costlier
  than the default when the default reaches the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from carpool_sim.controllers import (
    Bounds,
    Controller,
    HpaGpuUtilization,
    KedaQueueLength,
    KnativeKpa,
)


@dataclass(frozen=True)
class Sweep:
    knob: str
    default: float
    values: tuple[float, ...]
    unit: Callable[[float], str]
    build: Callable[[Bounds, float], Controller]

    def controller(self, bounds: Bounds, value: float) -> Controller:
        return self.build(bounds, value)

    def label(self, value: float) -> str:
        return f"{self.knob} {self.unit(value)}"


SWEEPS: dict[str, Sweep] = {
    # The HPA's averageUtilization on DCGM GPU utilization; the HPA has no default target, the
    # 70% is the one `carpool sim` has always used for it (docs/simulator.md).
    "hpa-gpu": Sweep(
        "target", 0.70, (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        lambda v: f"{v:.0%}", lambda b, v: HpaGpuUtilization(b, target=v),
    ),
    # KEDA's Prometheus scaler threshold (AverageValue): waiting requests per replica. KEDA has
    # no default; 10 is `carpool sim`'s.
    "keda-queue": Sweep(
        "threshold", 10.0, (0.25, 0.5, 1, 2, 3, 5, 10, 20, 50),
        lambda v: f"{v:g}", lambda b, v: KedaQueueLength(b, threshold=v),
    ),
    # Knative's target in-flight requests per pod: container-concurrency-target-default 100
    # times the 70% target utilization.
    "kpa": Sweep(
        "target", 70.0, (0.5, 1, 2, 4, 8, 16, 32, 70, 100),
        lambda v: f"{v:g}", lambda b, v: KnativeKpa(b, target_per_pod=v),
    ),
}  # fmt: skip


class Outcome(Protocol):
    gpu_hours: float
    reached: bool
    margin: float  # the worst endpoint's attainment minus its target


T = TypeVar("T", bound=Outcome)


def cheapest(outcomes: Sequence[T]) -> T:
    reached = [o for o in outcomes if o.reached]
    if reached:
        return min(reached, key=lambda o: o.gpu_hours)
    return min(outcomes, key=lambda o: (-o.margin, o.gpu_hours))


def sweep(
    values: Sequence[float], default: float, run: Callable[[float], T]
) -> list[tuple[float, T]]:
    ran: dict[float, T] = {default: run(default)}

    def reaches(i: int) -> bool:
        if values[i] not in ran:
            ran[values[i]] = run(values[i])
        return ran[values[i]].reached

    # The laxest reaching value lies in [low, high]; the default's run already halves that.
    d = values.index(default)
    low, high = (d, len(values) - 1) if ran[default].reached else (0, d - 1)
    if high < 0 or not reaches(low):
        return list(ran.items())  # nothing reaches: the soonest to scale out came closest
    while low < high:
        mid = (low + high + 1) // 2
        if reaches(mid):
            low = mid
        else:
            high = mid - 1
    return list(ran.items())
