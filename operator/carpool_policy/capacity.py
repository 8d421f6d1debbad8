"""The capacity model: predicted TTFT of every endpoint for a replica count and batch limits.

Contract: `forecast(loads, limits, replicas, profile, tuning)` is pure arithmetic over the
profile and the queueing formulas in `queueing`. Its picture of one replica (one GPU):

- Requests are spread evenly over the replicas (each sees arrival rate / replicas).
- Admitting a request costs the GPU its prefill plus the decode step it rides with; these
  admissions queue in priority order (priority M/G/1, Kingman's correction for bursty
  arrivals). Prefill is chunked and each step prefills in priority order, so an endpoint waits
  for its own and higher classes' admissions, and a lower class's prompt in progress delays it
  by the rest of one step at most (one prefill chunk), not by its whole prefill.
- Running sequences decode together: the batch is found by Little's law
  (running = throughput * time in the batch) at a fixed point with the step time, which
  grows with the batch and the mean context; prefills interleaved with decode slow it down.
- A request also waits for a free slot of its endpoint's `maxBatchSize` (Erlang C).
- A throughput class (no SLA) with requests waiting fills all its slots.

The p-quantile TTFT is the queue and slot waits and the own prefill, combined, plus one step
and the batch window. The floor is the same without the waits: the service time, which no
number of replicas improves on. An SLA endpoint's target is on the queueing alone
(`queue_target`): the planned-quantile TTFT above the floor, plus the batch window, within
`headroom` of its queue budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from carpool_policy.queueing import (
    combine_quantiles,
    exponential_tail_quantile,
    priority_mean_wait,
    slot_wait_quantile,
)
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointLimits
from carpool_replica.profile import Profile

FIXED_POINT_ITERATIONS = 40


@dataclass(frozen=True)
class EndpointLoad:
    """One endpoint's traffic to plan for, pool-wide."""

    name: str
    priority: int
    arrival_rate: float  # requests per second
    prompt_tokens: float
    generated_tokens: float
    budget_seconds: float | None  # p95 TTFT budget
    # p95 queue-wait budget: given in the spec or the TTFT budget less the measured service
    # time; None (with a TTFT budget) when neither is known, and the model's floor stands in.
    queue_budget_seconds: float | None = None
    backlogged: bool = False  # requests are waiting (only matters for throughput classes)
    # The mean prefill and its squared coefficient of variation over the measured prompt
    # lengths (`prefill_moments`); None: the prefill of the mean prompt, `service_scv`.
    prefill_seconds: float | None = None
    prefill_scv: float | None = None

    @property
    def has_sla(self) -> bool:
        return self.budget_seconds is not None or self.queue_budget_seconds is not None

    @property
    def fills_slots(self) -> bool:
        return not self.has_sla and self.backlogged


@dataclass(frozen=True)
class EndpointForecast:
    ttft_p95_seconds: float  # math.inf when the endpoint's queue would grow without bound
    ttft_planned_seconds: float  # at the planning quantile
    # The same without any queueing: what no number of replicas can improve on.
    floor_p95_seconds: float
    floor_planned_seconds: float
    running_per_replica: float
    throughput_per_second: float  # pool-wide requests per second admitted


@dataclass(frozen=True)
class PoolForecast:
    replicas: int
    admission_utilization: float  # GPU time fraction spent admitting (prefill + its step)
    batch_per_replica: float
    step_seconds: float
    kv_tokens_per_replica: float
    endpoints: Mapping[str, EndpointForecast]


def forecast(
    loads: Sequence[EndpointLoad],
    limits: Mapping[str, EndpointLimits],
    replicas: int,
    profile: Profile,
    tuning: Tuning,
) -> PoolForecast:
    if replicas <= 0:
        idle = all(load.arrival_rate <= 0 and not load.fills_slots for load in loads)
        wait = 0.0 if idle else math.inf
        return PoolForecast(
            replicas,
            0.0,
            0.0,
            0.0,
            0.0,
            {load.name: EndpointForecast(wait, wait, 0.0, 0.0, 0.0, 0.0) for load in loads},
        )
    ordered = sorted(loads, key=lambda load: -load.priority)
    prefill = {load.name: _mean_prefill(load, profile) for load in loads}
    slots = {load.name: limits[load.name].max_batch_size for load in loads}
    step = profile.step_seconds(1, _mean_context(loads, {})) if loads else 0.0
    running: dict[str, float] = {}
    throughput: dict[str, float] = {}
    utilization: dict[str, float] = {}
    for _ in range(FIXED_POINT_ITERATIONS):
        free = 1.0
        step_in_batch = step / max(0.05, 1.0 - min(0.95, sum(utilization.values())))
        for load in ordered:
            service = prefill[load.name] + step
            if load.fills_slots:
                in_batch = prefill[load.name] + load.generated_tokens * step_in_batch
                rate = min(slots[load.name] / in_batch, free / service)
            else:
                rate = load.arrival_rate / replicas
            throughput[load.name] = rate
            utilization[load.name] = rate * service
            free = max(0.0, free - utilization[load.name])
        step_in_batch = step / max(0.05, 1.0 - min(0.95, sum(utilization.values())))
        for load in loads:
            in_batch = prefill[load.name] + load.generated_tokens * step_in_batch
            running[load.name] = min(throughput[load.name] * in_batch, float(slots[load.name]))
        batch = sum(running.values())
        new_step = profile.step_seconds(max(1.0, batch), _mean_context(loads, running))
        if abs(new_step - step) <= 1e-9:
            break
        step = 0.5 * (step + new_step)  # damped: the step time feeds back into the batch

    total_utilization = sum(utilization.values())
    # Kingman: the queue grows with the variability of arrivals and of each class's admission
    # (its prefill plus a step); a heavy-tailed prompt mix queues others behind its long ones.
    burstiness = {
        load.name: (tuning.arrival_scv + _admission_scv(load, prefill[load.name], step, tuning))
        / 2.0
        for load in loads
    }
    chunk = profile.prefill_seconds(profile.prefill_chunk_tokens) + step
    endpoints: dict[str, EndpointForecast] = {}
    for load in loads:
        higher = sum(utilization[o.name] for o in loads if o.priority > load.priority)
        through_own = higher + sum(
            utilization[o.name] for o in loads if o.priority == load.priority
        )
        # Prefill is chunked and every step prefills in priority order: this endpoint queues
        # behind its own and higher classes' admissions, and a lower class's prompt in progress
        # delays it by the rest of one step at most.
        residual = sum(
            utilization[o.name] * (prefill[o.name] + step) * burstiness[o.name]
            for o in loads
            if o.priority >= load.priority
        )
        mean_wait = priority_mean_wait(residual, higher, through_own)
        lower = min(0.999, total_utilization - through_own)
        in_batch = prefill[load.name] + load.generated_tokens * step / max(
            0.05, 1.0 - min(0.95, total_utilization)
        )
        offered_slots = throughput[load.name] * in_batch

        waits = _Waits(
            mean_queue=mean_wait,
            busy=min(0.999, through_own),
            lower_busy=max(0.0, lower),
            lower_step=min(chunk, max((prefill[o.name] for o in loads), default=0.0) + step),
            slots=slots[load.name],
            offered_slots=offered_slots,
            in_batch=in_batch,
            fixed=step + limits[load.name].batch_window_milliseconds / 1000.0,
        )
        endpoints[load.name] = EndpointForecast(
            ttft_p95_seconds=_ttft(0.95, load, waits, profile, tuning),
            ttft_planned_seconds=_ttft(tuning.planning_quantile, load, waits, profile, tuning),
            floor_p95_seconds=_ttft(0.95, load, waits, profile, tuning, queueing=False),
            floor_planned_seconds=_ttft(
                tuning.planning_quantile, load, waits, profile, tuning, queueing=False
            ),
            running_per_replica=running[load.name],
            throughput_per_second=throughput[load.name] * replicas,
        )
    kv_tokens = sum(
        running[load.name] * (load.prompt_tokens + load.generated_tokens) for load in loads
    )
    return PoolForecast(
        replicas=replicas,
        admission_utilization=total_utilization,
        batch_per_replica=sum(running.values()),
        step_seconds=step,
        kv_tokens_per_replica=kv_tokens,
        endpoints=endpoints,
    )


def meets_targets(
    result: PoolForecast,
    loads: Sequence[EndpointLoad],
    limits: Mapping[str, EndpointLimits],
    profile: Profile,
    tuning: Tuning,
    headroom: float,
) -> bool:
    """True when every SLA endpoint's planned TTFT fits `headroom` of its budget and the
    throughput classes' demand can be served without an ever-growing queue."""
    if result.kv_tokens_per_replica > profile.kv_cache_tokens:
        return False
    if result.admission_utilization > tuning.max_utilization and any(
        load.arrival_rate > 0 and not load.fills_slots for load in loads
    ):
        return False
    for load in loads:
        predicted = result.endpoints[load.name]
        if load.has_sla:
            window = limits[load.name].batch_window_milliseconds / 1000.0
            target = queue_target(load, predicted, headroom, window)
            if planned_queueing(predicted, window) > target:
                return False
        elif not load.fills_slots and load.arrival_rate > 0:
            # Demand must fit under the slot limit with room to spare.
            slots = limits[load.name].max_batch_size
            if predicted.running_per_replica >= tuning.max_utilization * slots:
                return False
    return True


@dataclass(frozen=True)
class _Waits:
    mean_queue: float
    busy: float  # the own and higher classes' GPU share: the chance of queueing behind them
    lower_busy: float  # the lower classes' share: the chance of finding one of their steps
    lower_step: float  # the longest such step (one prefill chunk)
    slots: int
    offered_slots: float
    in_batch: float
    fixed: float  # one step plus the batch window


def _ttft(
    quantile: float,
    load: EndpointLoad,
    waits: _Waits,
    profile: Profile,
    tuning: Tuning,
    queueing: bool = True,
) -> float:
    """The `quantile` TTFT: queue and slot waits and the own prefill combined, plus the fixed
    part. Without `queueing`, the floor no scaling beats."""
    if load.fills_slots:
        return math.inf  # a backlog: its wait is the backlog, not a model output
    own_prefill = _mean_prefill(load, profile)
    # The quantile prompt is still an assumed tail on the mean; over a measured heavy mix the
    # mean prefill can exceed that quantile's prefill, and a quantile is never below its mean.
    own_prefill_quantile = max(
        own_prefill,
        profile.prefill_seconds(load.prompt_tokens * _prompt_tail_ratio(quantile, tuning)),
    )
    parts = [(own_prefill, own_prefill_quantile)]
    if queueing:
        queue = exponential_tail_quantile(waits.mean_queue, waits.busy, quantile)
        slot = slot_wait_quantile(waits.slots, waits.offered_slots, waits.in_batch, quantile)
        parts += [(waits.mean_queue, queue), (0.0, slot), _lower_step(waits, quantile)]
    return combine_quantiles(parts) + waits.fixed


def _lower_step(waits: _Waits, quantile: float) -> tuple[float, float]:
    """(mean, quantile) of the rest of a lower class's step found in progress: with
    probability `lower_busy`, uniform up to `lower_step`."""
    p, length = waits.lower_busy, waits.lower_step
    tail = 1.0 - quantile
    return p * length / 2.0, 0.0 if p <= tail else length * (1.0 - tail / p)


def planned_queueing(predicted: EndpointForecast, window_seconds: float) -> float:
    """The planned-quantile queue wait: TTFT above the service-time floor, plus the batch
    window (a request gathering for a batch waits in the queue; the floor holds the window)."""
    return predicted.ttft_planned_seconds - predicted.floor_planned_seconds + window_seconds


def queue_target(
    load: EndpointLoad, predicted: EndpointForecast, headroom: float, window_seconds: float
) -> float:
    """The planned queue wait allowed: `headroom` of the queue budget. Without a known queue
    budget, the TTFT budget less the model's own service-time floor; when that floor alone
    exceeds the budget's headroom, the budget's remaining share, so that scaling bounds the
    queueing instead of chasing an unreachable number."""
    if load.queue_budget_seconds is not None:
        return headroom * load.queue_budget_seconds
    budget = load.budget_seconds or 0.0
    service = predicted.floor_planned_seconds - window_seconds
    return max(headroom * budget - service, (1.0 - headroom) * budget)


def _mean_context(loads: Sequence[EndpointLoad], running: Mapping[str, float]) -> float:
    """Mean context of the running sequences: prompt plus half the output, by occupancy."""
    weights = {load.name: running.get(load.name, 0.0) for load in loads}
    total = sum(weights.values())
    if total <= 0:
        if not loads:
            return 0.0
        return sum(load.prompt_tokens + load.generated_tokens / 2 for load in loads) / len(loads)
    return (
        sum(weights[load.name] * (load.prompt_tokens + load.generated_tokens / 2) for load in loads)
        / total
    )


def prefill_moments(
    profile: Profile, mix: Sequence[tuple[float, float]]
) -> tuple[float, float] | None:
    """The mean prefill time over a prompt mix of (tokens, share), and its squared coefficient
    of variation; None for an empty mix. Prefill time grows faster than the prompt (chunks
    attend to all that came before), so the mean prefill exceeds the mean prompt's prefill."""
    if not mix:
        return None
    times = [(profile.prefill_seconds(tokens), share) for tokens, share in mix]
    mean = sum(t * share for t, share in times)
    variance = sum((t - mean) ** 2 * share for t, share in times)
    return mean, (variance / mean**2 if mean > 0 else 0.0)


def _mean_prefill(load: EndpointLoad, profile: Profile) -> float:
    if load.prefill_seconds is not None:
        return load.prefill_seconds
    return profile.prefill_seconds(load.prompt_tokens)


def _admission_scv(load: EndpointLoad, prefill: float, step: float, tuning: Tuning) -> float:
    """The squared coefficient of variation of one admission (prefill + step): that of the
    measured prompt mix, never below `service_scv`. Prompts of one length vary too: an
    admission's time also depends on what shares its steps, which the mix does not see."""
    if load.prefill_scv is None or prefill + step <= 0:
        return tuning.service_scv
    return max(tuning.service_scv, load.prefill_scv * prefill**2 / (prefill + step) ** 2)


def _prompt_tail_ratio(quantile: float, tuning: Tuning) -> float:
    """Ratio of the `quantile` prompt length to the mean: an exponential tail scaled by the
    coefficient of variation, capped because the context window bounds real prompts."""
    exponential = -math.log(1.0 - quantile)
    ratio = 1.0 + math.sqrt(tuning.service_scv) * (exponential - 1.0)
    return max(1.0, min(tuning.max_prompt_tail_ratio, ratio))
