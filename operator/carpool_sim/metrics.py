"""What one run records: every request's fate (ground truth) and the workers' Prometheus series.

Contract:
- `RunRecorder` is the `Recorder` every replica of one run reports to. Per endpoint it keeps
  each request's queue wait and TTFT (NaN until known) for the final report, and the cumulative
  counters and histograms a worker exports (`carpool_requests_total{outcome}` for ok,
  rejected and invalid, `carpool_prompt_tokens_total`, `carpool_generated_tokens_total`,
  `carpool_queue_wait_seconds`, `carpool_time_to_first_token_seconds`,
  `carpool_service_time_seconds`, `carpool_prompt_length_tokens`), summed over the pool's pods,
  for the simulated Prometheus to scrape. A request's queue wait and prompt count when its
  prefill starts, as the worker's do.
- Latency histograms' buckets are `BUCKETS` (upper bounds in seconds, +Inf implied), the
  prompt-length histogram's `PROMPT_TOKEN_BUCKETS`: the worker's.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from carpool_replica.buckets import LATENCY_BUCKETS, PROMPT_TOKEN_BUCKETS
from carpool_sim.trace import Request

BUCKETS = LATENCY_BUCKETS


@dataclass
class Histogram:
    bounds: tuple[float, ...] = BUCKETS
    counts: np.ndarray = None  # type: ignore[assignment]  # one per bound, then +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        return Histogram(self.bounds, self.counts.copy(), self.total)


def _prompt_histogram() -> Histogram:
    return Histogram(PROMPT_TOKEN_BUCKETS)


@dataclass
class EndpointSeries:
    """One endpoint's cumulative worker counters and histograms, summed over pods."""

    requests: dict[str, float] = field(
        default_factory=lambda: {"ok": 0.0, "rejected": 0.0, "invalid": 0.0, "error": 0.0}
    )
    prompt_tokens: float = 0.0
    generated_tokens: float = 0.0
    queue_wait: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    service_time: Histogram = field(default_factory=Histogram)
    prompt_length: Histogram = field(default_factory=_prompt_histogram)

    def copy(self) -> EndpointSeries:
        return EndpointSeries(
            dict(self.requests),
            self.prompt_tokens,
            self.generated_tokens,
            self.queue_wait.copy(),
            self.ttft.copy(),
            self.service_time.copy(),
            self.prompt_length.copy(),
        )


class RunRecorder:
    def __init__(self, requests: list[Request]):
        self.requests = requests
        self.index = {id(r): i for i, r in enumerate(requests)}
        n = len(requests)
        self.queue_wait = np.full(n, np.nan)
        self.ttft = np.full(n, np.nan)
        self.finished_at = np.full(n, np.nan)
        self.was_rejected = np.zeros(n, dtype=bool)
        self.resolved = 0
        self.series: dict[str, EndpointSeries] = {}
        # Completions in time order, for the p95-TTFT-over-time plot: (time, ttft, endpoint).
        self.first_tokens: list[tuple[float, float, str]] = []

    def _series(self, endpoint: str) -> EndpointSeries:
        if endpoint not in self.series:
            self.series[endpoint] = EndpointSeries()
        return self.series[endpoint]

    def started(self, request: Request, now: float) -> None:
        wait = now - request.arrival_seconds
        self.queue_wait[self.index[id(request)]] = wait
        series = self._series(request.endpoint)
        series.queue_wait.observe(wait)
        series.prompt_tokens += request.prompt_tokens
        series.prompt_length.observe(request.prompt_tokens)

    def first_token(self, request: Request, now: float) -> None:
        i = self.index[id(request)]
        ttft = now - request.arrival_seconds
        self.ttft[i] = ttft
        series = self._series(request.endpoint)
        series.ttft.observe(ttft)
        series.service_time.observe(ttft - self.queue_wait[i])
        self.first_tokens.append((now, ttft, request.endpoint))

    def finished(self, request: Request, now: float) -> None:
        self.finished_at[self.index[id(request)]] = now
        series = self._series(request.endpoint)
        series.requests["ok"] += 1
        series.generated_tokens += request.output_tokens
        self.resolved += 1

    def rejected(self, request: Request, now: float, reason: str) -> None:
        self.was_rejected[self.index[id(request)]] = True
        # As the worker counts them: a prompt too long for the context is the client's mistake
        # (400, `invalid`), not load turned away (429, `rejected`), and no replica serves it.
        outcome = "invalid" if reason == "too-long" else "rejected"
        self._series(request.endpoint).requests[outcome] += 1
        self.resolved += 1

    def snapshot(self) -> dict[str, EndpointSeries]:
        return {name: s.copy() for name, s in self.series.items()}
