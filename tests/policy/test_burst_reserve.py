"""The burst reserve: a scale-down stops where the highest arrival rate an SLA endpoint
sustained over the last hour would still find its queueing within the whole TTFT budget, and
where its busiest burst window of the last hour would still be admitted as it comes.

A quiet spell between two flash crowds must not leave the pool too small for the next one:
pods take a start-up to come, and the requests of that start-up queue behind the pods that
serve. A burst shorter than a minute does not count as a sustained rate; one that lasts a
burst window (15 s) counts as a rate the pods must admit, for a queue built over 15 s does not
drain within a TTFT budget of a second. A peak older than the memory is forgotten.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

from carpool_policy import DEFAULT_TUNING, PolicyState, decide
from carpool_policy.capacity import EndpointLoad
from carpool_policy.estimate import peak_rates, sustained_rates
from carpool_policy.planner import burst_absorbed

MINUTE = 60.0


def minute_of(t: float) -> float:
    return math.floor(t / MINUTE) * MINUTE


def quiet_after(
    w, peak: float | None, peak_age: float = 1200.0, burst: float | None = None
) -> PolicyState:
    """Ten minutes of recommendations for 1 replica (a scale-down may go ahead), the service
    time measured, and, unless `peak` is None, a minute `peak_age` ago that sustained `peak`
    (and, within it, a burst window of `burst`, `peak` where None)."""
    last_minute = minute_of(w.NOW - MINUTE)

    def history(rate: float | None) -> dict:
        if rate is None:
            return {}
        return {"inline": ((minute_of(w.NOW - peak_age), rate), (last_minute, 1.0))}

    return replace(
        w.steady_history(1, w.NOW),
        service_times={"inline": tuple((w.NOW - 60 - 15 * k, 0.3) for k in range(3))},
        sustained_rates=history(peak),
        peak_rates=history(burst if burst is not None else peak),
    )


def quiet(w, replicas: int = 12):
    return w.observe(replicas=replicas, inline=w.traffic(rate=1.0, queue=0.05, service=0.3))


def test_a_quiet_spell_after_a_sustained_peak_scales_down_no_further_than_the_peak_needs(w):
    spec = w.spec(max_replicas=32)
    forgetful = decide(quiet(w), spec, quiet_after(w, None), w.NOW, w.profile)
    assert forgetful.replicas == 9  # a quarter of 12: nothing remembered
    after_peak = decide(quiet(w), spec, quiet_after(w, 80.0), w.NOW, w.profile)
    assert after_peak.replicas > 9
    assert "burst_reserve" in after_peak.rules
    assert "at the highest rate sustained over the last 60 min, and its busiest 15 s" in (
        after_peak.reason
    )
    assert "(inline 80.00 req/s sustained, 80.00 in 15 s)" in after_peak.reason


def test_the_reserve_is_not_named_where_damping_stopped_the_pool_short_of_it(w):
    # 10 req/s needs 2 replicas; the scale-down of 12 stops at 9 by its step bound alone.
    decision = decide(quiet(w), w.spec(max_replicas=32), quiet_after(w, 10.0), w.NOW, w.profile)
    assert decision.replicas == 9
    assert decision.recommended_replicas == 2  # the reserve raised the recommendation from 1
    assert "burst_reserve" not in decision.rules
    assert "burst reserve" not in decision.reason


def test_a_peak_older_than_the_burst_memory_is_forgotten(w):
    old = DEFAULT_TUNING.burst_memory_seconds + 120
    decision = decide(
        quiet(w), w.spec(max_replicas=32), quiet_after(w, 80.0, old), w.NOW, w.profile
    )
    assert decision.replicas == 9
    assert "burst_reserve" not in decision.rules
    assert 80.0 not in [rate for _, rate in decision.state.sustained_rates["inline"]]


def test_the_memory_keeps_the_minutes_of_the_last_hour():
    now = 60.0 * 1000 + 30
    memory = DEFAULT_TUNING.burst_memory_seconds
    history = ((minute_of(now - memory), 9.0), (minute_of(now - memory) + MINUTE, 8.0))
    assert sustained_rates(history, 1.0, now, DEFAULT_TUNING) == (
        (minute_of(now - memory) + MINUTE, 8.0),
        (minute_of(now), 1.0),
    )


def test_the_reserve_only_stops_a_scale_down_it_never_adds_replicas(w):
    decision = decide(
        quiet(w, replicas=2), w.spec(max_replicas=32), quiet_after(w, 80.0), w.NOW, w.profile
    )
    assert decision.replicas == 2
    assert "burst_reserve" in decision.rules  # it held the pool at 2


def test_a_peak_beyond_the_largest_pool_holds_the_pool_it_has(w):
    decision = decide(quiet(w), w.spec(max_replicas=14), quiet_after(w, 400.0), w.NOW, w.profile)
    assert decision.replicas == 12
    assert "burst_reserve" in decision.rules


def test_an_idle_pool_keeps_no_reserve(w):
    # No traffic at all: replicas.min says what an idle pool holds, not an hour-old peak.
    idle = w.observe(
        replicas=12, inline=w.traffic(rate=0.0, queue=None, ttft=None), offline=w.traffic(0.0)
    )
    decision = decide(idle, w.spec(max_replicas=32), quiet_after(w, 80.0), w.NOW, w.profile)
    assert decision.replicas == 9
    assert "burst_reserve" not in decision.rules


def test_a_missing_rate_neither_scales_down_nor_loses_the_peaks(w):
    missing = w.observe(replicas=12, inline=w.traffic(rate=None, queue=0.05, service=0.3))
    state = quiet_after(w, 80.0)
    decision = decide(missing, w.spec(max_replicas=32), state, w.NOW, w.profile)
    assert decision.replicas == 12
    assert "series_missing" in decision.rules
    assert decision.state.sustained_rates["inline"] == state.sustained_rates["inline"]


def test_a_burst_of_seconds_does_not_count_as_a_sustained_rate():
    minute = MINUTE * 1000
    seen = sustained_rates((), 2.0, minute + 5, DEFAULT_TUNING)
    seen = sustained_rates(seen, 10.0, minute + 20, DEFAULT_TUNING)  # a 60 s rate spikes
    seen = sustained_rates(seen, 2.5, minute + 40, DEFAULT_TUNING)
    assert seen == ((minute, 2.0),)  # the minute sustained 2 req/s, not 10
    held = sustained_rates(seen, 10.0, minute + 65, DEFAULT_TUNING)  # the next minute
    assert held == ((minute, 2.0), (minute + 60, 10.0))
    assert sustained_rates(held, None, minute + 70, DEFAULT_TUNING) == held  # missing: nothing


def test_the_decision_keeps_the_sustained_rates_for_the_next_one(w):
    decision = decide(quiet(w), w.spec(), quiet_after(w, 80.0), w.NOW, w.profile)
    kept = decision.state.sustained_rates["inline"]
    assert max(rate for _, rate in kept) == 80.0
    assert kept[-1] == (minute_of(w.NOW), 1.0)
    assert "offline" not in decision.state.sustained_rates  # no SLA: no reserve to size
    stored = json.loads(json.dumps(decision.state.to_dict()))  # the operator's annotation
    assert PolicyState.from_dict(stored).sustained_rates == decision.state.sustained_rates


def test_a_burst_window_the_pods_could_not_admit_holds_them_through_a_quiet_spell(w):
    # A minute that sustained 1 req/s around a 15 s burst of 80: no sustained peak to plan for,
    # but a queue built over 15 s at 80 req/s does not drain within a 1.2 s TTFT budget.
    spec = w.spec(max_replicas=32)
    no_burst = decide(quiet(w), spec, quiet_after(w, 1.0), w.NOW, w.profile)
    assert no_burst.replicas == 9
    after_burst = decide(quiet(w), spec, quiet_after(w, 1.0, burst=80.0), w.NOW, w.profile)
    assert after_burst.replicas > 9
    assert "burst_reserve" in after_burst.rules
    assert "(inline 1.00 req/s sustained, 80.00 in 15 s)" in after_burst.reason


def test_the_pods_admit_a_burst_less_what_the_ttft_budget_lets_queue():
    # 15 s of arrivals served within 15 s plus the budget: a budget of 3 s admits 15/18 of it.
    load = EndpointLoad("inline", 100, 1.0, 2048.0, 28.0, budget_seconds=3.0)
    assert burst_absorbed(36.0, load) == 30.0
    assert burst_absorbed(0.5, load) == 1.0  # never below the load's own rate


def test_the_peak_of_a_minute_is_its_busiest_burst_window_or_its_rate_where_none_was_measured(w):
    minute = MINUTE * 1000
    seen = peak_rates((), 2.0, minute + 5, DEFAULT_TUNING)
    seen = peak_rates(seen, 30.0, minute + 20, DEFAULT_TUNING)  # a burst window
    seen = peak_rates(seen, 3.0, minute + 40, DEFAULT_TUNING)
    assert seen == ((minute, 30.0),)
    assert peak_rates(seen, None, minute + 70, DEFAULT_TUNING) == seen  # missing: nothing
    # The observation's two rates: the burst window's, else the minute's (a lower bound).
    burst = w.traffic(rate=2.0, queue=0.05, service=0.3)
    both = w.observe(replicas=12, inline=replace(burst, burst_arrival_rate_per_second=12.0))
    minute_only = w.observe(replicas=12, inline=replace(burst, burst_arrival_rate_per_second=None))
    spec = w.spec(max_replicas=32)
    for observed, peak in ((both, 12.0), (minute_only, 2.0)):
        decision = decide(observed, spec, quiet_after(w, None), w.NOW, w.profile)
        assert decision.state.peak_rates["inline"][-1] == (minute_of(w.NOW), peak)
    stored = json.loads(json.dumps(decision.state.to_dict()))  # the operator's annotation
    assert PolicyState.from_dict(stored).peak_rates == decision.state.peak_rates
