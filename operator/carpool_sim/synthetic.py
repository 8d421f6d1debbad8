"""Synthetic arrival patterns and the `--trace ENDPOINT=SOURCE` parser.

Contract:
- `parse_pattern("poisson:rate=2,prompt=1024,output=256")` returns a `Pattern`; unknown kinds
  or keys raise `TraceError` naming them.
- `Pattern.generate(endpoint, duration_seconds, rng)` is deterministic for a given
  `numpy.random.Generator` state.
- Kinds (rates in requests per second):
  - `poisson:rate=R` — a homogeneous Poisson process.
  - `diurnal:rate=R,amplitude=A,period=P` — a Poisson process whose rate follows
    `R * (1 + A * sin(2*pi*t/P))` (A in [0, 1]), e.g. a day compressed into P seconds.
  - `bursts:rate=R,burst_rate=B,burst_seconds=S,every=E` — rate R, plus B more for S seconds
    out of every E seconds.
  Every kind takes `prompt=` and `output=` (mean token counts; default 512 and 128) and
  `lengths=` (how lengths spread around their mean; default `uniform`):
  - `uniform` with `jitter=` (0..1: lengths drawn uniformly within ±jitter of the mean;
    default 0);
  - `lognormal` with `sigma=` (the shape: the log-lengths' standard deviation; default 1);
  - `pareto` with `alpha=` (the tail index, > 1 so the mean exists; default 2): heavier tails
    the closer alpha is to 1.
  Each keeps `prompt=` and `output=` as the mean. A spread's parameter given with another
  spread raises `TraceError` (it would be ignored silently).
- `Pattern.scaled(x)` is the same pattern at x times its arrival rates (lengths unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from carpool_sim.trace import Request, TraceError

KINDS = ("poisson", "diurnal", "bursts")
COMMON_KEYS = {"prompt": 512.0, "output": 128.0, "jitter": 0.0, "sigma": 1.0, "alpha": 2.0}
# Each length spread and the one parameter it reads.
SPREADS = {"uniform": "jitter", "lognormal": "sigma", "pareto": "alpha"}
# The parameters that scale with the arrival rate.
RATE_KEYS = ("rate", "burst_rate")
KIND_KEYS = {
    "poisson": {"rate": None},
    "diurnal": {"rate": None, "amplitude": 0.5, "period": 3600.0},
    "bursts": {"rate": None, "burst_rate": None, "burst_seconds": 10.0, "every": 120.0},
}


@dataclass(frozen=True)
class Pattern:
    kind: str
    params: dict[str, float] = field(default_factory=dict)
    lengths: str = "uniform"

    def scaled(self, rate_scale: float) -> Pattern:
        if rate_scale <= 0:
            raise TraceError(f"rate scale must be > 0, got {rate_scale}")
        params = {k: v * rate_scale if k in RATE_KEYS else v for k, v in self.params.items()}
        return Pattern(self.kind, params, self.lengths)

    def rate_at(self, t: float) -> float:
        p = self.params
        if self.kind == "diurnal":
            return p["rate"] * (1.0 + p["amplitude"] * math.sin(2 * math.pi * t / p["period"]))
        if self.kind == "bursts":
            in_burst = (t % p["every"]) < p["burst_seconds"]
            return p["rate"] + (p["burst_rate"] if in_burst else 0.0)
        return p["rate"]

    def peak_rate(self) -> float:
        p = self.params
        if self.kind == "diurnal":
            return p["rate"] * (1.0 + p["amplitude"])
        if self.kind == "bursts":
            return p["rate"] + p["burst_rate"]
        return p["rate"]

    def generate(
        self, endpoint: str, duration_seconds: float, rng: np.random.Generator
    ) -> list[Request]:
        # Thinning (Lewis-Shedler): a Poisson process at the peak rate, each arrival kept with
        # probability rate(t)/peak; exact for any bounded rate function.
        peak = self.peak_rate()
        if peak <= 0:
            return []
        count = rng.poisson(peak * duration_seconds)
        times = np.sort(rng.uniform(0.0, duration_seconds, count))
        keep = rng.uniform(0.0, peak, count) < np.array([self.rate_at(t) for t in times])
        times = times[keep]
        prompts = self._lengths(self.params["prompt"], len(times), rng)
        outputs = self._lengths(self.params["output"], len(times), rng)
        return [
            Request(endpoint, float(t), int(p), int(o))
            for t, p, o in zip(times, prompts, outputs, strict=True)
        ]

    def _lengths(self, mean: float, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.lengths == "lognormal":
            sigma = self.params["sigma"]
            # exp(N(mu, sigma)) has mean exp(mu + sigma^2 / 2): shift mu so the mean is `mean`.
            factors = rng.lognormal(-(sigma**2) / 2.0, sigma, n)
        elif self.lengths == "pareto":
            alpha = self.params["alpha"]
            # numpy draws Lomax (Pareto II); 1 + Lomax is Pareto I with scale 1, mean
            # alpha / (alpha - 1): rescale so the mean is `mean`.
            factors = (1.0 + rng.pareto(alpha, n)) * (alpha - 1.0) / alpha
        else:
            jitter = self.params["jitter"]
            factors = rng.uniform(1.0 - jitter, 1.0 + jitter, n) if jitter > 0 else np.ones(n)
        return np.maximum(1, np.rint(mean * factors)).astype(int)


def parse_pattern(text: str) -> Pattern:
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise TraceError(f"unknown pattern {kind!r}: use one of {', '.join(KINDS)}")
    allowed = {**COMMON_KEYS, **KIND_KEYS[kind]}
    params: dict[str, float] = {}
    lengths = "uniform"
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if key == "lengths" and eq:
            if value not in SPREADS:
                raise TraceError(f"{kind}: lengths={value!r}: use one of {', '.join(SPREADS)}")
            lengths = value
            continue
        if not eq or key not in allowed:
            raise TraceError(
                f"{kind}: unknown parameter {item!r}: use {', '.join(allowed)}, lengths"
            )
        try:
            params[key] = float(value)
        except ValueError as error:
            raise TraceError(f"{kind}: {key}={value!r} is not a number") from error
    given = set(params)
    for key, default in allowed.items():
        if key not in params:
            if default is None:
                raise TraceError(f"{kind}: {key}= is required")
            params[key] = default
    for spread, key in SPREADS.items():
        if spread != lengths and key in given:
            raise TraceError(f"{kind}: {key}= applies to lengths={spread}, not {lengths}")
    if not 0.0 <= params["jitter"] < 1.0:
        raise TraceError(f"{kind}: jitter must be in [0, 1)")
    if params["sigma"] <= 0.0:
        raise TraceError(f"{kind}: sigma must be > 0")
    if params["alpha"] <= 1.0:
        raise TraceError(f"{kind}: alpha must be > 1 (at or below 1 the mean is infinite)")
    if kind == "diurnal" and not 0.0 <= params["amplitude"] <= 1.0:
        raise TraceError("diurnal: amplitude must be in [0, 1]")
    return Pattern(kind, params, lengths)


def is_pattern(source: str) -> bool:
    return source.partition(":")[0] in KINDS
