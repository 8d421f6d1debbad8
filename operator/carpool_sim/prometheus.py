"""A simulated Prometheus: scrapes at a fixed interval, answers what PromQL would.

Contract:
- `scrape(sample)` stores one scrape; `latest(now)` is the newest sample taken at or before
  `now` (a controller never sees anything fresher than the last scrape).
- `window(now, seconds)` is the (older, newer) pair of samples that `rate(x[seconds])` would
  span at `now`; None when there is no older sample yet.
- `histogram_quantile(q, counts)` interpolates linearly inside the bucket as Prometheus does,
  returns the largest finite bound when the quantile falls in +Inf, and None for no samples.
- `observation(...)` builds the policy's `Observation` the way the operator does from PromQL:
  per endpoint, rates over the window, p95s (queue wait, service time, TTFT) from histogram
  increases over the window, the prompt mix over `PROMPT_MIX_WINDOW_SECONDS` (as far back as
  the samples go), the arrival rate again over `BURST_WINDOW_SECONDS`, gauges from the newest
  scrape.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from carpool_policy import BURST_WINDOW_SECONDS, EndpointLimits, EndpointObservation, Observation
from carpool_replica.buckets import (
    PROMPT_MIX_WINDOW_SECONDS,
    PROMPT_TOKEN_BUCKETS,
    histogram_quantile,
)
from carpool_sim.metrics import EndpointSeries


@dataclass
class Sample:
    time: float
    series: dict[str, EndpointSeries]
    waiting: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    # DCGM_FI_DEV_GPU_UTIL averaged over the ready pods (busy fraction since the last scrape).
    gpu_utilization: float | None = None
    ready_replicas: int = 0


class Prometheus:
    def __init__(self, retention_seconds: float = 900.0):
        self.retention_seconds = retention_seconds
        self.samples: deque[Sample] = deque()

    def scrape(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and self.samples[0].time < sample.time - self.retention_seconds:
            self.samples.popleft()

    def latest(self, now: float) -> Sample | None:
        for sample in reversed(self.samples):
            if sample.time <= now:
                return sample
        return None

    def window(self, now: float, seconds: float) -> tuple[Sample, Sample] | None:
        newest = self.latest(now)
        if newest is None:
            return None
        older = None
        for sample in self.samples:
            if sample.time >= newest.time - seconds - 1e-9 and sample.time < newest.time:
                older = sample
                break
        return None if older is None else (older, newest)


def endpoint_observation(
    name: str,
    older: Sample,
    newest: Sample,
    mix_older: Sample,
    burst_older: Sample | None,
    quantile: float = 0.95,
) -> EndpointObservation:
    """Rates and p95s over (older, newest); the prompt mix over (mix_older, newest); the
    burst window's arrival rate over (burst_older, newest), None without a sample in the
    window (as `rate()` over it answers nothing: the policy then reads the minute's rate)."""
    empty = EndpointSeries()
    a, b = older.series.get(name, empty), newest.series.get(name, empty)
    span = newest.time - older.time
    mix_counts = b.prompt_length.counts - mix_older.series.get(name, empty).prompt_length.counts
    mix_span = newest.time - mix_older.time
    started = b.queue_wait.counts.sum() - a.queue_wait.counts.sum()
    rejected = b.requests["rejected"] - a.requests["rejected"]
    ok = b.requests["ok"] - a.requests["ok"]
    return EndpointObservation(
        # As the operator's PromQL: arrivals = prefills started + turned away.
        arrival_rate_per_second=_arrivals(a, b) / span,
        burst_arrival_rate_per_second=None
        if burst_older is None
        else _arrivals(burst_older.series.get(name, empty), b) / (newest.time - burst_older.time),
        mean_prompt_tokens=(b.prompt_tokens - a.prompt_tokens) / started if started else None,
        mean_generated_tokens=(b.generated_tokens - a.generated_tokens) / ok if ok else None,
        queue_wait_p95_seconds=histogram_quantile(
            quantile, b.queue_wait.counts - a.queue_wait.counts
        ),
        ttft_p95_seconds=histogram_quantile(quantile, b.ttft.counts - a.ttft.counts),
        service_time_p95_seconds=histogram_quantile(
            quantile, b.service_time.counts - a.service_time.counts
        ),
        waiting=float(newest.waiting.get(name, 0)),
        running=float(newest.running.get(name, 0)),
        rejected_rate_per_second=rejected / span,
        prompt_length_buckets=tuple(
            zip(
                (*PROMPT_TOKEN_BUCKETS, math.inf),
                (mix_counts / mix_span).tolist(),
                strict=True,
            )
        ),
    )


def observation(
    prometheus: Prometheus,
    now: float,
    rate_window_seconds: float,
    endpoints: list[str],
    desired_replicas: int,
    ready_replicas: int,
    limits: dict[str, EndpointLimits],
) -> Observation:
    pair = prometheus.window(now, rate_window_seconds)
    if pair is None:
        return Observation(
            sampled_at=None,
            available=True,
            desired_replicas=desired_replicas,
            ready_replicas=ready_replicas,
            limits=limits,
        )
    older, newest = pair
    mix_older, _ = prometheus.window(now, PROMPT_MIX_WINDOW_SECONDS) or pair
    burst = prometheus.window(now, BURST_WINDOW_SECONDS)
    burst_older = None if burst is None else burst[0]
    return Observation(
        sampled_at=newest.time,
        available=True,
        desired_replicas=desired_replicas,
        ready_replicas=ready_replicas,
        endpoints={
            name: endpoint_observation(name, older, newest, mix_older, burst_older)
            for name in endpoints
        },
        limits=limits,
    )


def _arrivals(older: EndpointSeries, newer: EndpointSeries) -> float:
    """Requests that arrived between two scrapes: prefills started plus turned away."""
    started = newer.queue_wait.counts.sum() - older.queue_wait.counts.sum()
    return float(started + newer.requests["rejected"] - older.requests["rejected"])
