"""Stage 1, estimate: what each endpoint's observation says, in the terms the policy plans in.

Contract (pure): `estimate(endpoint, observed, known_tokens, service_history, now, tuning,
sustained_history, peak_history)` returns one endpoint's `Estimate`:
- `load`, the `EndpointLoad` the model sizes for: the measured arrival rate, plus the queue
  beyond its steady-state length drained over `backlog_drain_seconds`; missing token means fall
  back to the last known, then to defaults;
- the measured service-time p95, None when its series is missing;
- `service_time`: the service time no replica count shortens (the start of a request's
  prefill to its first token), estimated robustly as the median of the service-time p95s
  measured over the last `service_time_memory_seconds` (`service_history` plus this one): a
  minute's p95 swings with its longest prompts, and the median of many minutes does not;
- `queue_delay_p95`, the measured queue delay (what replicas change): the queue-wait p95, the
  arrival to the step that begins the prefill, which counts the prompts' turn-taking for the
  prefill budget inside the batch as well as the wait for a slot;
- the queue budget: `sla.queueWaitP95Milliseconds` when given, else the TTFT budget less
  `service_time` (TTFT = queue delay + service time, and replicas change only the first), at
  least `unreachable_queue_share` of the TTFT budget; None while no service time has been
  measured (the model's own service-time floor then stands in);
- `unreachable`: `service_time` alone reaches the TTFT budget, so no replica count can meet it;
  the policy sizes for the queue part and says so;
- `sustained_history`, an SLA endpoint's (minute start, rate sustained through that minute)
  over `burst_memory_seconds` (`sustained_rates`), and `reserve_rate`, the rate the burst
  reserve plans for: its highest, or the load now where that is higher (the rate the pool may
  have to serve again before a new pod could start);
- `peak_history`, an SLA endpoint's (minute start, the highest rate measured in that minute over
  a burst window or the rate window) over the same memory (`peak_rates`), and `burst_rate`,
  its highest or the load now: the burst the pool must serve as it comes;
- `prompt_mix`, the measured prompt lengths as (tokens, share): each bucket of the prompt-length
  histogram at its middle, scaled so that the mix's mean is the load's mean prompt (the exact
  one, from the token counter); empty when the histogram is missing or holds no requests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carpool_policy.capacity import EndpointLoad
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointObservation, EndpointSpec


@dataclass(frozen=True)
class Estimate:
    load: EndpointLoad
    observed_rate: float  # requests per second measured (0 when the series is missing)
    rate_missing: bool
    service_time_p95: float | None  # measured over the last rate window
    service_time: float | None  # the robust estimate: the median p95 over the memory
    queue_delay_p95: float | None  # the measured queue-wait p95, against `queue_budget`
    queue_budget: float | None
    unreachable: bool
    service_history: tuple[tuple[float, float], ...] = ()  # (time, p95) kept for the next call
    prompt_mix: tuple[tuple[float, float], ...] = ()  # (prompt tokens, share of the requests)
    sustained_history: tuple[tuple[float, float], ...] = ()  # (minute start, sustained rate)
    peak_history: tuple[tuple[float, float], ...] = ()  # (minute start, peak burst rate)

    @property
    def reserve_rate(self) -> float:
        return self._highest(self.sustained_history)

    @property
    def burst_rate(self) -> float:
        return self._highest(self.peak_history)

    def _highest(self, history: tuple[tuple[float, float], ...]) -> float:
        """The highest rate of a by-minute history, or the load now where that is higher."""
        return max([self.load.arrival_rate, *(rate for _, rate in history)])


def estimate(
    endpoint: EndpointSpec,
    observed: EndpointObservation,
    known_tokens: tuple[float, float] | None,
    service_history: tuple[tuple[float, float], ...],
    now: float,
    tuning: Tuning,
    sustained_history: tuple[tuple[float, float], ...] = (),
    peak_history: tuple[tuple[float, float], ...] = (),
) -> Estimate:
    rate = max(0.0, observed.arrival_rate_per_second or 0.0)
    rate_missing = observed.arrival_rate_per_second is None
    history = tuple(
        (t, p) for t, p in service_history if now - tuning.service_time_memory_seconds <= t < now
    )
    if observed.service_time_p95_seconds is not None:
        history += ((now, observed.service_time_p95_seconds),)
    service = statistics.median(p for _, p in history) if history else None
    budget, unreachable = queue_budget(endpoint, service, tuning)
    prompt, generated = known_tokens or (
        tuning.default_prompt_tokens,
        tuning.default_generated_tokens,
    )
    if observed.mean_prompt_tokens is not None and observed.mean_prompt_tokens > 0:
        prompt = observed.mean_prompt_tokens
    if observed.mean_generated_tokens is not None and observed.mean_generated_tokens > 0:
        generated = observed.mean_generated_tokens
    waiting = max(0.0, observed.waiting or 0.0)
    load = EndpointLoad(
        name=endpoint.name,
        priority=endpoint.priority,
        arrival_rate=_planned_rate(endpoint, rate, waiting, budget, tuning),
        prompt_tokens=prompt,
        generated_tokens=max(1.0, generated),
        budget_seconds=endpoint.ttft_p95_seconds,
        queue_budget_seconds=budget,
        backlogged=waiting >= 1.0,
    )
    return Estimate(
        load=load,
        observed_rate=rate,
        rate_missing=rate_missing,
        service_time_p95=observed.service_time_p95_seconds,
        service_time=service,
        queue_delay_p95=observed.queue_wait_p95_seconds,
        queue_budget=budget,
        unreachable=unreachable,
        service_history=history,
        prompt_mix=prompt_mix(observed.prompt_length_buckets or (), prompt),
        sustained_history=(
            sustained_rates(sustained_history, None if rate_missing else rate, now, tuning)
            if endpoint.has_sla
            else ()
        ),
        peak_history=(
            peak_rates(peak_history, peak_rate(observed), now, tuning) if endpoint.has_sla else ()
        ),
    )


SUSTAINED_BUCKET_SECONDS = 60.0


def sustained_rates(
    history: Sequence[tuple[float, float]], rate: float | None, now: float, tuning: Tuning
) -> tuple[tuple[float, float], ...]:
    """(minute start, the lowest arrival rate measured in that minute) over the burst memory,
    oldest first, with `rate` (None: missing, nothing added) counted in the current minute.
    The lowest, not the highest: each measurement is a rate over the rate window (a minute), so
    the lowest of a minute's measurements held through more than a minute, and a shorter burst
    counts only as its share of the window, not as its own rate (`peak_rates` keeps those). A
    minute measured once (a control interval of a minute or more) counts that measurement as
    it is."""
    return _by_minute(history, rate, now, tuning, min)


def peak_rates(
    history: Sequence[tuple[float, float]], rate: float | None, now: float, tuning: Tuning
) -> tuple[tuple[float, float], ...]:
    """(minute start, the highest arrival rate measured in that minute) over the burst memory,
    oldest first, with `rate` (None: missing, nothing added) counted in the current minute."""
    return _by_minute(history, rate, now, tuning, max)


def _by_minute(
    history: Sequence[tuple[float, float]],
    rate: float | None,
    now: float,
    tuning: Tuning,
    keep: Callable[[float, float], float],
) -> tuple[tuple[float, float], ...]:
    minute = math.floor(now / SUSTAINED_BUCKET_SECONDS) * SUSTAINED_BUCKET_SECONDS
    kept = sorted((t, r) for t, r in history if now - tuning.burst_memory_seconds < t <= minute)
    if rate is not None:
        if kept and kept[-1][0] == minute:
            kept[-1] = (minute, keep(kept[-1][1], rate))
        else:
            kept.append((minute, rate))
    return tuple(kept)


def peak_rate(observed: EndpointObservation) -> float | None:
    """The higher of the burst-window and the rate-window arrival rates; None when neither was
    measured. The busiest burst window inside a rate window is at least as busy as the whole
    window, so the rate window's rate is a lower bound where the burst series is missing."""
    rates = [
        max(0.0, r)
        for r in (observed.burst_arrival_rate_per_second, observed.arrival_rate_per_second)
        if r is not None
    ]
    return max(rates, default=None)


def prompt_mix(
    buckets: Sequence[tuple[float, float]], mean_prompt: float
) -> tuple[tuple[float, float], ...]:
    """(tokens, share) per histogram bucket with requests, scaled to `mean_prompt`."""
    total = sum(rate for _, rate in buckets)
    if total <= 0:
        return ()
    points, lower = [], 0.0
    for upper, rate in buckets:
        # The open top bucket has no middle: half again its lower bound (the scaling to the
        # measured mean corrects the guess as far as the mean goes).
        middle = 1.5 * lower if math.isinf(upper) else (lower + upper) / 2.0
        if rate > 0:
            points.append((middle, rate / total))
        lower = upper
    scale = mean_prompt / sum(tokens * share for tokens, share in points)
    return tuple((tokens * scale, share) for tokens, share in points)


def queue_budget(
    endpoint: EndpointSpec, service_time: float | None, tuning: Tuning
) -> tuple[float | None, bool]:
    """(queue budget in seconds or None, whether service time alone breaks the TTFT budget)."""
    ttft = endpoint.ttft_p95_seconds
    unreachable = ttft is not None and service_time is not None and service_time >= ttft
    if endpoint.queue_wait_p95_seconds is not None:
        return endpoint.queue_wait_p95_seconds, unreachable
    if ttft is None or service_time is None:
        return None, False
    return max(ttft - service_time, tuning.unreachable_queue_share * ttft), unreachable


def _planned_rate(
    endpoint: EndpointSpec, rate: float, waiting: float, budget: float | None, tuning: Tuning
) -> float:
    # Little's law: a queue within its budget holds about rate * budget requests; beyond that
    # the excess is a burst the current pods are not draining.
    steady_queue = rate * (budget if budget is not None else endpoint.ttft_p95_seconds or 0.0)
    excess = max(0.0, waiting - steady_queue) if endpoint.has_sla else 0.0
    return rate + excess / tuning.backlog_drain_seconds
