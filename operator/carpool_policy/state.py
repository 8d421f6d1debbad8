"""`PolicyState`: what one `decide()` call hands to the next, as a plain JSON-able dict.

Contract: `PolicyState.from_dict(state.to_dict()) == state`, and `from_dict` of anything it
cannot read (None, a foreign dict, a field of the wrong type) yields the empty state rather than
raising, because the operator stores it in an annotation that a person may have edited. An empty
state is always safe in that the policy then behaves as on its first call: it waits a whole
stabilization window before any scale-down, but it has forgotten the peaks that the burst
reserve holds replicas for, and sizes that reserve from the rates it measures from then on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATE_SCHEMA = "carpool.dev/policy-state/v1"


@dataclass(frozen=True)
class OperatingPoint:
    """A replica count measured to serve within every queue budget (`operating_points`)."""

    at: float  # when it was measured (Unix seconds)
    replicas: int  # every one of them ready
    rates: Mapping[str, float]  # SLA endpoint: its busiest arrival rate then (req/s)


@dataclass(frozen=True)
class PolicyState:
    # (time, replicas) the model recommended, oldest first, kept for one stabilization window.
    recommendations: tuple[tuple[float, int], ...] = ()
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    # The previous fresh observation's time.
    last_observed_at: float | None = None
    # Per endpoint, the (time, service-time p95) measured over the service-time memory.
    service_times: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Per endpoint, the last known (mean prompt tokens, mean generated tokens).
    token_means: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Per SLA endpoint, (minute start, the rate sustained through that minute) over the burst
    # memory (`estimate.sustained_rates`).
    sustained_rates: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Per SLA endpoint, (minute start, the highest rate measured over a burst window in that
    # minute) over the burst memory (`estimate.peak_rates`).
    peak_rates: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # The operating points measured over their memory, oldest first (`operating_points`), and
    # since when the pool has held its count with every pod ready (None while pods start).
    operating_points: tuple[OperatingPoint, ...] = ()
    settled_since: float | None = None
    # Per SLA endpoint, (time, budget scale) of the model's anchor the last time every pod was
    # ready (`planner.anchor`): what a step up plans with while the pods it asked for start.
    anchor_scales: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "recommendations": [[t, r] for t, r in self.recommendations],
            "lastScaleUpAt": self.last_scale_up_at,
            "lastScaleDownAt": self.last_scale_down_at,
            "lastObservedAt": self.last_observed_at,
            "serviceTimes": {k: [[t, p] for t, p in v] for k, v in self.service_times.items()},
            "tokenMeans": {k: [p, g] for k, (p, g) in self.token_means.items()},
            "sustainedRates": _minute_rates_dict(self.sustained_rates),
            "peakRates": _minute_rates_dict(self.peak_rates),
            "settledSince": self.settled_since,
            "operatingPoints": [
                {"at": p.at, "replicas": p.replicas, "rates": dict(p.rates)}
                for p in self.operating_points
            ],
            "anchorScales": {k: [t, v] for k, (t, v) in self.anchor_scales.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> PolicyState:
        if not isinstance(data, Mapping) or data.get("schema") != STATE_SCHEMA:
            return cls()
        try:
            return cls(
                recommendations=tuple(
                    (float(t), int(r)) for t, r in data.get("recommendations") or ()
                ),
                last_scale_up_at=_optional_float(data.get("lastScaleUpAt")),
                last_scale_down_at=_optional_float(data.get("lastScaleDownAt")),
                last_observed_at=_optional_float(data.get("lastObservedAt")),
                service_times={
                    str(k): tuple((float(t), float(p)) for t, p in v)
                    for k, v in (data.get("serviceTimes") or {}).items()
                },
                token_means={
                    str(k): (float(v[0]), float(v[1]))
                    for k, v in (data.get("tokenMeans") or {}).items()
                },
                sustained_rates=_minute_rates(data.get("sustainedRates")),
                peak_rates=_minute_rates(data.get("peakRates")),
                anchor_scales=_anchor_scales(data.get("anchorScales")),
                operating_points=_operating_points(data.get("operatingPoints")),
                settled_since=_optional_float(data.get("settledSince")),
            )
        except (TypeError, ValueError, IndexError, AttributeError, KeyError):
            return cls()


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _minute_rates_dict(rates: Mapping[str, tuple[tuple[float, float], ...]]) -> dict[str, Any]:
    return {k: [[t, r] for t, r in v] for k, v in rates.items()}


def _minute_rates(data: Any) -> dict[str, tuple[tuple[float, float], ...]]:
    # An edited infinite rate would make the reserve plan for it: dropped.
    return {
        str(k): tuple((float(t), float(r)) for t, r in v if math.isfinite(float(r)))
        for k, v in (data or {}).items()
    }


def _anchor_scales(data: Any) -> dict[str, tuple[float, float]]:
    # A scale is a ratio of two positive delays; anything else (an edit) would plan for nonsense.
    scales = {str(k): (float(t), float(v)) for k, (t, v) in (data or {}).items()}
    return {k: (t, v) for k, (t, v) in scales.items() if math.isfinite(v) and v > 0}


def _operating_points(data: Any) -> tuple[OperatingPoint, ...]:
    points = (
        OperatingPoint(
            float(p["at"]),
            int(p["replicas"]),
            {str(k): float(v) for k, v in p["rates"].items()},
        )
        for p in data or ()
    )
    # An edited rate that is not a finite, non-negative number would scale a bound to nonsense.
    return tuple(
        p
        for p in points
        if p.replicas > 0 and all(math.isfinite(r) and r >= 0 for r in p.rates.values())
    )
