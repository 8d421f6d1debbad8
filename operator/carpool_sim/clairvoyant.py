"""The clairvoyant bound: the fewest replicas per minute, on arrivals known in advance, that keep
each endpoint's misses within its budget, with pod start-up respected.

Contract:
- `reachable(scenario)` marks the requests that no replica count can serve within their
  endpoint's SLA: too long for the context, or whose prefill alone, on an idle replica (the
  worker's own scheduler and the profile), outlasts the TTFT budget.
- `minute_misses(result, scenario, minutes)` counts each endpoint's misses by arrival minute.
- `plan(levels, misses_at, allowed, start)` is the search: every minute starts at the static
  count `start` (which reaches the targets); minutes step down the replica `levels` one at a
  time, cheapest first (fewest misses added per replica saved, each endpoint's misses weighed
  by its budget), while every endpoint's misses stay within `allowed`. A minute's misses at n
  replicas are those of a static run at n (`misses_at(n)`, an endpoints x minutes array).
- `search(scenario, config, misses_at, static_replicas, static_gpu_seconds, targets, ...)`
  plans within a share (`margin`) of each endpoint's slack, then checks the plan by simulating
  it with the `Scripted` controller (each minute's pods asked for one start-up ahead), and
  repairs it where the check misses (the minutes that missed most step up a level) for up to
  `rounds` checks. It returns the first schedule whose simulation reaches every target and
  costs less than static, with that run; or, when none does, the static count held all run
  and no run (`Bound.planned` is False: a constant schedule is a schedule too, and the caller
  has its run), so the bound never costs more than static sized in hindsight.
The search is a heuristic, not a proof of optimality: a minute's misses are measured with its
neighbours at the same count, and the look-ahead keeps a minute's pods through the start-up
before it. It is deterministic.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from carpool_sim.controllers import Scripted
from carpool_sim.replica import Replica
from carpool_sim.report import attained_mask
from carpool_sim.scenario import Scenario
from carpool_sim.sim import RunResult, SimConfig, initial_limits, simulate, worker_limits
from carpool_sim.trace import Request

MINUTE = 60.0


class _FirstToken:
    """A recorder that keeps the one time that matters here."""

    def __init__(self) -> None:
        self.at: float | None = None

    def started(self, request: Request, now: float) -> None:
        pass

    def first_token(self, request: Request, now: float) -> None:
        self.at = now

    def finished(self, request: Request, now: float) -> None:
        pass

    def rejected(self, request: Request, now: float, reason: str) -> None:
        pass


def _alone_ttft(scenario: Scenario, endpoint: str, prompt_tokens: int) -> float:
    """TTFT of one request on an idle replica (inf when the replica refuses it)."""
    profile, spec = scenario.profile, scenario.spec
    recorder = _FirstToken()
    replica = Replica.of_profile(profile, worker_limits(spec, initial_limits(spec)), recorder)
    replica.submit(Request(endpoint, 0.0, prompt_tokens, 1), 0.0)
    while recorder.at is None and replica.next_event is not None:
        replica.run_until(replica.next_event)
    return math.inf if recorder.at is None else recorder.at


def longest_reachable_prompt(scenario: Scenario, endpoint: str, budget: float) -> int:
    """The longest prompt whose TTFT alone fits `budget` (0 when none does); TTFT alone grows
    with the prompt, so bisection finds it."""
    low, high = 0, scenario.profile.max_seq_len - 1
    while low < high:
        mid = (low + high + 1) // 2
        if _alone_ttft(scenario, endpoint, mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def reachable(scenario: Scenario) -> np.ndarray:
    profile = scenario.profile
    context = min(profile.max_seq_len, profile.kv_cache_tokens)
    longest: dict[str, int] = {}
    for e in scenario.spec.endpoints:
        budget = e.ttft_p95_seconds
        longest[e.name] = (
            context if budget is None else longest_reachable_prompt(scenario, e.name, budget)
        )
    return np.array(
        [
            r.prompt_tokens + r.output_tokens <= context and r.prompt_tokens <= longest[r.endpoint]
            for r in scenario.requests
        ],
        dtype=bool,
    )


def minute_misses(result: RunResult, scenario: Scenario, minutes: int) -> np.ndarray:
    missed = ~attained_mask(result, scenario.spec)
    names = [e.name for e in scenario.spec.endpoints]
    out = np.zeros((len(names), minutes), dtype=int)
    for request, miss in zip(scenario.requests, missed, strict=True):
        if miss:
            minute = min(minutes - 1, int(request.arrival_seconds // MINUTE))
            out[names.index(request.endpoint), minute] += 1
    return out


def plan(
    levels: list[int],
    misses_at: Callable[[int], np.ndarray],
    allowed: np.ndarray,
    start: int,
) -> list[int]:
    """Per-minute replicas: from `start` everywhere, step minutes down `levels` while each
    endpoint's misses stay within `allowed`, the cheapest step (misses added per replica saved,
    weighed by each endpoint's budget) first."""
    steps = sorted({n for n in levels if n < start} | {start})
    top = misses_at(start)
    minutes = top.shape[1]
    level = [len(steps) - 1] * minutes
    total = top.sum(axis=1)
    weight = 1.0 / np.maximum(1, allowed)

    def candidate(m: int) -> tuple[float, int, np.ndarray] | None:
        i = level[m]
        if i == 0:
            return None
        added = misses_at(steps[i - 1])[:, m] - misses_at(steps[i])[:, m]
        saved = steps[i] - steps[i - 1]
        return float(np.maximum(added, 0) @ weight) / saved, m, added

    heap = [c for m in range(minutes) if (c := candidate(m)) is not None]
    heapq.heapify(heap)
    while heap:
        _, m, added = heapq.heappop(heap)
        if np.any(total + added > allowed):
            continue  # this minute stays where it is: any lower breaks a budget
        total = total + added
        level[m] -= 1
        if (c := candidate(m)) is not None:
            heapq.heappush(heap, c)
    return [steps[i] for i in level]


@dataclass
class Bound:
    schedule: list[int]
    result: RunResult | None  # None: no planned schedule passed; the static count holds
    rounds: int  # simulated checks of a planned schedule

    @property
    def planned(self) -> bool:
        return self.result is not None


def allowed_misses(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per endpoint, the most misses that still attain its target."""
    return counts - np.ceil(targets * counts - 1e-9).astype(int)


def search(
    scenario: Scenario,
    config: SimConfig,
    misses_at: Callable[[int], np.ndarray],
    static_replicas: int,
    static_gpu_seconds: float,
    targets: np.ndarray,
    levels: list[int],
    max_replicas: int,
    rounds: int = 4,
    margin: float = 0.7,
) -> Bound:
    """`misses_at(n)`: the endpoints x minutes misses of a static run at n (cached by the
    caller); `static_replicas` the hindsight count, which costs `static_gpu_seconds`."""
    minutes = minutes_of(scenario)
    names = [e.name for e in scenario.spec.endpoints]
    counts = np.array([sum(r.endpoint == n for r in scenario.requests) for n in names])
    allowed = allowed_misses(counts, targets)
    static = Bound([static_replicas] * minutes, None, 0)
    at_static = misses_at(static_replicas).sum(axis=1)
    if np.any(at_static > allowed):
        return static  # static at its count misses a target: nothing to plan from
    # Plan inside a share of the slack: a minute's neighbours are not at its count.
    budget = at_static + np.floor(margin * (allowed - at_static)).astype(int)
    schedule = plan(levels, misses_at, budget, static_replicas)
    for checked in range(1, rounds + 1):
        run = simulate(scenario.requests, scenario.spec, scenario.profile,
                       Scripted(schedule, MINUTE, config.startup_seconds), config)  # fmt: skip
        missed = minute_misses(run, scenario, minutes)
        excess = missed.sum(axis=1) - allowed
        if np.all(excess <= 0):
            if run.gpu_seconds < static_gpu_seconds:
                return Bound(schedule, run, checked)
            break
        schedule = _repair(schedule, missed, excess, levels, max_replicas)
    static.rounds = checked
    return static


def minutes_of(scenario: Scenario) -> int:
    return max(1, math.ceil(scenario.duration_seconds / MINUTE))


def _repair(
    schedule: list[int], missed: np.ndarray, excess: np.ndarray, levels: list[int], top: int
) -> list[int]:
    """Step up the minutes that missed most, for each endpoint over budget, until the misses
    they held are twice that endpoint's excess."""
    out = list(schedule)
    for e in np.flatnonzero(excess > 0):
        covered = 0
        for m in np.argsort(-missed[e], kind="stable"):
            if covered >= 2 * excess[e] or missed[e, m] == 0:
                break
            higher = [n for n in levels if n > out[m]]
            out[m] = higher[0] if higher else min(top, out[m] + 1)
            covered += missed[e, m]
    return out
