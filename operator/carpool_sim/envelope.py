"""A recorded trace as the micro-structure of a slow envelope: a day's swing with real bursts.

Contract:
- `Envelope(low, high, period_seconds)` is a rate multiplier that swings smoothly (a raised
  cosine) between `low` at the start of the run and `high` half a period later, back to `low`
  after a full period: a day (`period_seconds` 86400) or a day compressed into fewer seconds.
- `under_envelope(trace, envelope, duration_seconds, period_seconds, rng)` returns requests whose
  rate at time t is `envelope.at(t)` times the trace's own: `ceil(high)` copies of the trace,
  each looped every `period_seconds` (the trace's span) and started at its own phase so their
  bursts do not coincide, copy j keeping each of its requests at t with probability
  `clip(envelope.at(t) - j, 0, 1)`. Every kept request is one of the trace's, at its recorded
  offset within the copy: sub-minute bursts stay bursts, thinned at night and stacked at the
  peak. Deterministic for the generator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from carpool_sim.trace import Request, TraceError, loop_to


@dataclass(frozen=True)
class Envelope:
    low: float
    high: float
    period_seconds: float

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high:
            raise TraceError(f"envelope: need 0 < low <= high, got {self.low} and {self.high}")
        if self.period_seconds <= 0:
            raise TraceError(f"envelope: period must be > 0 s, got {self.period_seconds}")

    def at(self, t: float) -> float:
        phase = (1.0 - math.cos(2.0 * math.pi * t / self.period_seconds)) / 2.0
        return self.low + (self.high - self.low) * phase


def _rotated(trace: list[Request], shift: float, span: float) -> list[Request]:
    """The trace started `shift` seconds into itself: what came after comes first."""
    moved = [replace(r, arrival_seconds=(r.arrival_seconds - shift) % span) for r in trace]
    return sorted(moved, key=lambda r: r.arrival_seconds)


def under_envelope(
    trace: list[Request],
    envelope: Envelope,
    duration_seconds: float,
    period_seconds: float,
    rng: np.random.Generator,
) -> list[Request]:
    copies = max(1, math.ceil(envelope.high - 1e-9))
    kept: list[Request] = []
    for j in range(copies):
        looped = loop_to(_rotated(trace, j * period_seconds / copies, period_seconds),
                         duration_seconds, period_seconds)  # fmt: skip
        if not looped:
            continue
        keep = np.array([min(1.0, max(0.0, envelope.at(r.arrival_seconds) - j)) for r in looped])
        draws = rng.uniform(0.0, 1.0, len(looped))
        kept.extend(r for r, k, u in zip(looped, keep, draws, strict=True) if u < k)
    return sorted(kept, key=lambda r: r.arrival_seconds)
