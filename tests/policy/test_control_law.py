"""The control law: measured queue delay decides the direction, the model sizes the step.

One test per rule: the robust service time, the queue delay read from the queue wait, the hold band
between the quiet fraction and the headroom, the batch limits of lower-priority SLA endpoints,
and chunked prefill in the capacity model.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from carpool_policy import DEFAULT_TUNING, EndpointLimits, PolicyState, PoolSpec, decide
from carpool_policy.capacity import EndpointLoad, forecast
from carpool_policy.planner import plan


def with_service(w, p95: float, ago: float = 60.0) -> PolicyState:
    """A state whose service-time memory holds three p95s of `p95`, from `ago` seconds ago."""
    points = tuple((w.NOW - ago - 15 * k, p95) for k in range(3))
    return PolicyState(service_times={"inline": points}, last_observed_at=w.NOW - 15)


def test_one_minute_of_long_prompts_does_not_make_the_sla_unreachable(w):
    # Over the last minutes the service time was 400 ms; this minute's p95 reads 2 s (a few long
    # prompts): one minute's tail is not the endpoint's service time.
    observation = w.observe(4, w.traffic(rate=5.0, ttft=2.1, queue=0.05, service=2.0))
    decision = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.condition("SLAReachable").status == "True"
    assert "sla_unreachable" not in decision.rules
    assert "service time 400 ms (p95 now 2000 ms)" in decision.reason


def test_the_service_time_memory_forgets_what_is_older_than_its_window(w):
    observation = w.observe(4, w.traffic(rate=5.0, ttft=2.1, queue=0.05, service=2.0))
    old = DEFAULT_TUNING.service_time_memory_seconds + 60
    decision = decide(observation, w.spec(), with_service(w, 0.4, ago=old), w.NOW, w.profile)
    assert decision.condition("SLAReachable").status == "False"
    assert "sla_unreachable" in decision.rules


def test_the_queue_wait_over_its_budget_is_a_breach(w):
    # The worker's queue wait runs to the step that begins a prompt's prefill, so it holds the
    # prompts' turn-taking for the prefill budget inside the batch: 1.2 s over a 1.1 s budget.
    observation = w.observe(4, w.traffic(rate=5.0, ttft=1.6, queue=1.2, service=0.4))
    decision = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas > 4
    assert "queue_breach" in decision.rules
    assert "queue delay p95 1200 ms (budget 1100 ms)" in decision.reason


def test_a_ttft_over_budget_from_long_prompts_alone_is_no_breach(w):
    # TTFT p95 1.6 s against 1.5 s, but the queue wait is 200 ms: this minute's longest prompts
    # took long to prefill (service p95 1.4 s), which no replica count shortens.
    observation = w.observe(4, w.traffic(rate=5.0, ttft=1.6, queue=0.2, service=1.4))
    decision = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas <= 4
    assert "queue_breach" not in decision.rules


@pytest.mark.parametrize(
    ("replicas", "rate", "rule"),
    [(2, 40.0, "queue_within_budget"), (8, 1.0, "queue_not_low")],
)
def test_a_queue_between_the_quiet_fraction_and_the_headroom_holds(w, replicas, rate, rule):
    # Queue delay 770 ms of 1100 ms (0.7): above the quiet 0.5, within the 0.85 headroom. The
    # model wants more replicas for 40 req/s on 2 and fewer for 1 req/s on 8; neither happens.
    observation = w.observe(replicas, w.traffic(rate=rate, ttft=1.17, queue=0.77, service=0.4))
    state = PolicyState(recommendations=((w.NOW - 1000, 1),), last_observed_at=w.NOW - 15)
    decision = decide(observation, w.spec(), state, w.NOW, w.profile)
    assert decision.replicas == replicas
    assert rule in decision.rules


def two_slas() -> PoolSpec:
    def endpoint(name: str, priority: int, ttft: int) -> dict:
        return {
            "name": name,
            "priority": priority,
            "sla": {"ttftP95Milliseconds": ttft},
            "batching": {"maxBatchSize": {"min": 1, "max": 64}},
        }

    return PoolSpec.from_crd(
        {
            "replicas": {"min": 1, "max": 4},
            "endpoints": [endpoint("chat", 100, 400), endpoint("drafts", 50, 1500)],
        }
    )


def test_a_lower_priority_sla_endpoint_keeps_its_batch_when_the_pool_falls_short(w):
    loads = [
        EndpointLoad("chat", 100, 20.0, 800, 150, 0.4, 0.2),
        EndpointLoad("drafts", 50, 20.0, 3000, 300, 1.5, 0.9),
    ]
    result = plan(loads, two_slas(), w.profile, DEFAULT_TUNING, 0.85, 1, 4)
    assert not result.fits
    assert result.limits["drafts"].max_batch_size == 64
    assert "drafts" not in result.shrunk


def test_a_lower_priority_prompt_delays_a_higher_one_by_one_prefill_chunk_at_most(w):
    limits = {"chat": EndpointLimits(64, 0), "drafts": EndpointLimits(64, 0)}
    chat = EndpointLoad("chat", 100, 2.0, 500, 100, 0.4, 0.2)
    drafts = EndpointLoad("drafts", 50, 1.0, 8000, 300, 3.0, 1.0)
    alone = forecast([chat], limits, 2, w.profile, DEFAULT_TUNING).endpoints["chat"]
    shared = forecast([chat, drafts], limits, 2, w.profile, DEFAULT_TUNING).endpoints["chat"]
    chunk = w.profile.prefill_seconds(w.profile.prefill_chunk_tokens)
    # The drafts' 8k-token prompts take about a second each; the chat endpoint waits for at
    # most the rest of one chunk's step of them (and a slightly slower decode step).
    assert shared.ttft_p95_seconds - alone.ttft_p95_seconds < 1.2 * chunk


def test_the_step_up_is_sized_by_the_model_anchored_at_the_measured_queue_delay(w):
    # 44 req/s on 6 replicas: the queue delay measured 1050 ms of 1100 ms (over the headroom),
    # below what the model predicts there. Anchored at the measurement, the model's shape says
    # one replica more brings it inside; taken at its own level it asks for two.
    observation = w.observe(6, w.traffic(rate=44.0, ttft=1.45, queue=1.05, service=0.4))
    decision = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas == 7
    assert "model anchored at the measured queue delay (inline predicted" in decision.reason
    unanchored = [
        EndpointLoad("inline", 100, 44.0, 2048, 28, 1.5, 1.1),
        EndpointLoad("offline", 0, 0.5, 2048, 28, None),
    ]
    assert plan(unanchored, w.spec(), w.profile, DEFAULT_TUNING, 0.85, 1, 16).replicas == 8


def stepped_up(w):
    """The anchored step up of the test above (6 -> 7 replicas), and an observation 15 s later
    with the new pod still starting and the queue measured at `queue` seconds."""
    observation = w.observe(6, w.traffic(rate=44.0, ttft=1.45, queue=1.05, service=0.4))
    first = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert first.replicas == 7 and "inline" in first.state.anchor_scales

    def later(queue: float, ready: int = 6):
        inline = w.traffic(rate=44.0, ttft=queue + 0.4, queue=queue, service=0.4)
        return w.observe(7, inline, ready=ready, sampled_at=w.NOW + 10)

    return first.state, later


def test_while_the_pods_asked_for_start_a_rising_queue_does_not_ask_for_more(w):
    # The queue built on 6 pods while the 7th starts reads 2 s: the backlog the 7th is asked to
    # clear. The model keeps the level it was anchored at when every pod was ready and asks for
    # no more; anchored at the rising measurement it would ask for 8.
    state, later = stepped_up(w)
    decision = decide(later(2.0), w.spec(), state, w.NOW + 15, w.profile)
    assert decision.replicas == 7
    assert "anchor_held" in decision.rules
    assert "while 1 pod starts, the model keeps the level measured" in decision.reason
    unheld = dataclasses.replace(state, anchor_scales={})
    assert decide(later(2.0), w.spec(), unheld, w.NOW + 15, w.profile).replicas == 8


def test_the_held_anchor_expires(w):
    state, later = stepped_up(w)
    now = w.NOW + DEFAULT_TUNING.anchor_hold_seconds + 1
    observation = dataclasses.replace(later(2.0), sampled_at=now - 5)
    decision = decide(observation, w.spec(), state, now, w.profile)
    assert decision.replicas == 8
    assert "anchor_held" not in decision.rules


def test_once_every_pod_is_ready_the_measurement_anchors_again(w):
    # The same 2 s with all 7 pods ready is a measured breach of the pool as it is, and above
    # what the model predicts there: nothing anchors the model, and the old level is dropped.
    state, later = stepped_up(w)
    decision = decide(later(2.0, ready=7), w.spec(), state, w.NOW + 15, w.profile)
    assert decision.replicas > 7
    assert "queue_breach" in decision.rules and "anchor_held" not in decision.rules
    assert decision.state.anchor_scales == {}


def test_a_model_that_calls_the_ready_pods_overloaded_does_not_size_the_step(w):
    # 40 req/s on 2 replicas: the model predicts an ever-growing queue there, yet the queue was
    # measured at 1000 ms of 1100 ms. HPA's ratio rule on the measurement sizes the step:
    # ceil(2 * (1000 / 1100) / 0.85) = 3, where the model alone asks for many more.
    observation = w.observe(2, w.traffic(rate=40.0, ttft=1.4, queue=1.0, service=0.4))
    decision = decide(observation, w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas == 3
    assert "model_unbounded" in decision.rules
    assert "inline predicted unbounded, measured 1000 ms" in decision.reason


def test_pods_still_starting_are_not_counted_twice_by_the_ratio_rule(w):
    # The same measurement on 2 ready pods while a third starts: the 3 already asked for hold.
    seen = w.traffic(rate=40.0, ttft=1.4, queue=1.0, service=0.4)
    decision = decide(w.observe(3, seen, ready=2), w.spec(), with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas == 3


def test_an_endpoint_with_traffic_but_no_queue_measurement_leaves_the_step_to_the_model(w):
    # As above, but a second SLA endpoint has traffic and no queue-wait series yet: the
    # measurement does not cover the pool, so it cannot size the step, and the model does.
    spec = w.spec()
    offline = dataclasses.replace(spec.endpoints[1], ttft_p95_seconds=5.0)
    spec = dataclasses.replace(spec, endpoints=(spec.endpoints[0], offline))
    observation = w.observe(2, w.traffic(rate=40.0, ttft=1.4, queue=1.0, service=0.4))
    decision = decide(observation, spec, with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas > 3
    assert "model_unbounded" not in decision.rules
    assert "predicts an unbounded queue" not in decision.reason


def test_where_the_measurement_sizes_the_step_the_model_neither_cuts_limits_nor_claims_the_max(w):
    # The case above on a pool of at most 4: the model calls 2 pods overloaded and, trusted,
    # would cut the offline batch to make room and say the SLAs need more than 4. The queue
    # was measured inside its budget's reach, so the limits in force stay and 3 replicas do.
    spec = w.spec(max_replicas=4)
    observation = w.observe(2, w.traffic(rate=40.0, ttft=1.4, queue=1.0, service=0.4))
    decision = decide(observation, spec, with_service(w, 0.4), w.NOW, w.profile)
    assert decision.replicas == 3
    assert "model_unbounded" in decision.rules
    assert decision.limits["offline"] == w.IN_FORCE["offline"]
    assert decision.condition("CapacityLimited").status == "False"
    assert "the measured queue delays need 3 replicas" in decision.reason


def test_a_model_contradicted_by_a_quiet_queue_does_not_hold_the_pool_up(w):
    # 2 req/s of 8k-token prompts on 8 replicas, a 1.2 s service time of a 1.5 s TTFT budget
    # (a 300 ms queue budget): the model as it is predicts 1.4 s of queueing at 8 pods, but
    # 10 ms was measured. Its level is contradicted, not cautious: the scale-down is sized by
    # the model anchored at the measurement, and the pool steps down.
    seen = w.traffic(rate=2.0, ttft=1.3, queue=0.01, service=1.2, prompt=8192, generated=200)
    # Nothing higher recommended within the stabilization window: a scale-down may act.
    state = dataclasses.replace(with_service(w, 1.2), recommendations=((w.NOW - 400, 1),))
    decision = decide(w.observe(8, seen), w.spec(), state, w.NOW, w.profile)
    assert decision.replicas == 6  # a quarter of the pool per step
    assert "model_pessimistic" in decision.rules
    # A model that fits the measurement (shorter prompts, 1 req/s) is left as it is.
    calm = dataclasses.replace(seen, arrival_rate_per_second=1.0, mean_prompt_tokens=4096)
    decision = decide(w.observe(8, calm), w.spec(), state, w.NOW, w.profile)
    assert "model_pessimistic" not in decision.rules


def test_a_pool_held_by_the_scale_down_models_tighter_headroom_says_so(w):
    # 24 req/s of 2k-token prompts on 5 replicas, the queue quiet (20 ms of 1,100): the step up
    # needs 4, but the scale-down model plans within 70% of the budget, not 85%, and needs 5.
    # That hysteresis is what holds the pool, so the reason names it and its count.
    state = dataclasses.replace(with_service(w, 0.4), recommendations=((w.NOW - 1000, 1),))
    quiet = w.traffic(rate=24.0, ttft=0.42, queue=0.02, service=0.4)
    decision = decide(w.observe(5, quiet), w.spec(), state, w.NOW, w.profile)
    assert decision.replicas == 5
    assert "model needs 4 replicas" in decision.reason
    assert "no scale-down: the scale-down model needs 5 replicas within the tighter 70%" in (
        decision.reason
    )
    assert "scale_down_headroom" in decision.rules
    # Where it stops a scale-down short of the step up's count, it is named as well.
    lighter = dataclasses.replace(quiet, arrival_rate_per_second=18.0)
    decision = decide(w.observe(5, lighter), w.spec(), state, w.NOW, w.profile)
    assert decision.replicas == 4
    assert "model needs 3 replicas" in decision.reason
    assert "scale-down stops at 4: the scale-down model needs 4 replicas" in decision.reason
    assert "scale_down_headroom" in decision.rules
    # Where the step up itself needs the pool as it is, nothing held it: no such rule.
    steady = dataclasses.replace(quiet, arrival_rate_per_second=14.0)
    decision = decide(w.observe(3, steady), w.spec(), state, w.NOW, w.profile)
    assert (decision.replicas, decision.rules) == (3, ())


def test_the_model_prices_prefill_over_the_measured_prompt_lengths(w):
    # 8 req/s, mean prompt 2,048 tokens, on 2 replicas with the queue measured near its budget:
    # prompts all about 2k, or most short and one in eight about 8k. The spread mix costs more
    # prefill per request and queues the rest behind its long prompts: the step is larger.
    def measured(buckets):
        seen = w.traffic(rate=8.0, ttft=1.4, queue=1.0, service=0.4)
        seen = dataclasses.replace(seen, prompt_length_buckets=buckets)
        return decide(w.observe(2, seen), w.spec(), with_service(w, 0.4), w.NOW, w.profile)

    narrow = measured(((1536.0, 0.0), (3072.0, 8.0), (math.inf, 0.0)))
    spread = measured(((1024.0, 7.0), (1536.0, 0.0), (8192.0, 1.0), (math.inf, 0.0)))
    assert spread.replicas > narrow.replicas
