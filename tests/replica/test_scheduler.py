"""The scheduling rules, one per test, driven with a hand-held clock and no model."""

from __future__ import annotations

import pytest

from carpool_replica.limits import EndpointLimits, LimitsDocument
from carpool_replica.scheduler import Rejected, Request, Scheduler, StaleLimits


def limits(version: int = 1, **endpoints: dict) -> LimitsDocument:
    base = dict(
        priority=0,
        max_batch_size=8,
        batch_window_ms=0,
        max_queue_wait_ms=10_000,
        max_queue_length=100,
    )
    return LimitsDocument(
        version=version,
        default_endpoint=next(iter(endpoints)),
        endpoints={name: EndpointLimits(**(base | spec)) for name, spec in endpoints.items()},
    )


def make(slots=8, budget=1000, doc=None, max_seq_len=512) -> Scheduler:
    return Scheduler(doc or limits(a={}), slots, max_seq_len, budget, eos_token_ids=(0,))


def req(endpoint="a", arrival=0.0, prompt=4, max_tokens=4) -> Request:
    return Request(
        prompt_ids=list(range(1, prompt + 1)),
        max_tokens=max_tokens,
        endpoint=endpoint,
        arrival=arrival,
    )


def run_step(s: Scheduler, now: float, token: int = 7):
    """One step where every request that is due a token gets ``token``."""
    step = s.schedule(now)
    due = step.sampling
    s.complete(step, {r.id: token for r in due})
    return step


def test_higher_priority_endpoint_is_admitted_first():
    s = make(slots=2, doc=limits(low={"priority": 0}, high={"priority": 100}))
    lows = [req("low") for _ in range(2)]
    highs = [req("high", arrival=0.001) for _ in range(2)]
    for r in lows + highs:
        s.submit(r)
    step = s.schedule(now=0.01)
    assert step.admitted == highs


def test_fifo_within_an_endpoint():
    s = make(slots=2)
    reqs = [req(arrival=i * 0.001) for i in range(4)]
    for r in reqs:
        s.submit(r)
    assert s.schedule(now=0.01).admitted == reqs[:2]


def test_window_holds_a_lone_request_until_it_closes():
    s = make(doc=limits(a={"batch_window_ms": 50, "max_batch_size": 4}))
    s.submit(req(arrival=0.0))
    assert s.schedule(now=0.049).admitted == []
    assert len(s.schedule(now=0.050).admitted) == 1


def test_window_releases_early_when_the_batch_is_full():
    s = make(doc=limits(a={"batch_window_ms": 50, "max_batch_size": 3}))
    for _ in range(3):
        s.submit(req(arrival=0.0))
    assert len(s.schedule(now=0.001).admitted) == 3


def test_gathering_high_priority_endpoint_holds_its_slots():
    doc = limits(high={"priority": 10, "batch_window_ms": 50, "max_batch_size": 2}, low={})
    s = make(slots=2, doc=doc)
    s.submit(req("high", arrival=0.0))
    s.submit(req("low", arrival=0.0))
    s.submit(req("low", arrival=0.0))
    step = s.schedule(now=0.01)
    assert [r.endpoint for r in step.admitted] == ["low"]  # one slot held for "high"


def test_endpoint_never_runs_more_than_its_max_batch_size():
    s = make(slots=8, doc=limits(a={"max_batch_size": 3}))
    for _ in range(6):
        s.submit(req(max_tokens=50))
    for t in range(5):
        run_step(s, now=t * 0.01)
        assert s.counts()["a"][1] == 3


def test_request_past_max_queue_wait_expires():
    s = make(slots=1, doc=limits(a={"max_queue_wait_ms": 100}))
    s.submit(req(arrival=0.0, max_tokens=100))
    late = req(arrival=0.0)
    s.submit(late)
    run_step(s, now=0.05)
    step = s.schedule(now=0.101)
    assert step.expired == [late]
    assert late.finish_reason == "expired"


def test_full_queue_rejects_with_429_and_retry_after():
    s = make(doc=limits(a={"max_queue_length": 2}))
    s.submit(req())
    s.submit(req())
    with pytest.raises(Rejected) as exc:
        s.submit(req())
    assert exc.value.status == 429
    assert exc.value.retry_after >= 1


def test_unknown_endpoint_is_404():
    with pytest.raises(Rejected) as exc:
        make().submit(req("nope"))
    assert exc.value.status == 404


def test_prompt_plus_max_tokens_over_context_is_400():
    with pytest.raises(Rejected) as exc:
        make(max_seq_len=16).submit(req(prompt=10, max_tokens=7))
    assert exc.value.status == 400


def test_cancelled_running_request_frees_its_slot_at_the_next_step():
    s = make(slots=1)
    first, second = req(max_tokens=100), req(arrival=0.001)
    s.submit(first)
    s.submit(second)
    run_step(s, now=0.01)
    first.cancel()
    step = s.schedule(now=0.02)
    assert step.cancelled == [first]
    assert step.admitted == [second]
    assert second.slot == 0


def test_cancelled_waiting_request_leaves_the_queue():
    s = make(slots=1)
    s.submit(req(max_tokens=100))
    waiting = req()
    s.submit(waiting)
    waiting.cancel()
    step = s.schedule(now=0.01)
    assert waiting in step.cancelled
    assert s.counts()["a"][0] == 0


def test_long_prompt_is_prefilled_in_chunks_beside_running_decodes():
    s = make(budget=16)
    short = req(prompt=4, max_tokens=100)
    s.submit(short)
    run_step(s, now=0.0)
    long = req(prompt=100, arrival=0.001)
    s.submit(long)
    for t in range(1, 8):
        step = run_step(s, now=t * 0.01)
        assert step.decode == [short]  # the short request decodes every step
        assert sum(n for _, _, n in step.prefill) <= 16
    assert long.prefill_done


def test_a_prompt_admitted_beside_others_starts_when_the_prefill_budget_reaches_it():
    # Two 12-token prompts admitted together under a 16-token budget: the second gets the rest
    # of the first step, a third admitted with them waits for the next step. Its queue wait
    # (arrival to `prefill_started_at`) holds that turn-taking: replicas shorten it too.
    s = make(budget=16)
    first, second, third = (req(prompt=12, arrival=0.0) for _ in range(3))
    for r in (first, second, third):
        s.submit(r)
    step = run_step(s, now=0.5)
    assert step.admitted == [first, second, third]
    assert step.started == [first, second]
    step = run_step(s, now=0.6)
    assert step.started == [third]
    assert [r.prefill_started_at for r in (first, second, third)] == [0.5, 0.5, 0.6]


def test_a_request_preempted_and_resumed_starts_its_prefill_once():
    doc = limits(low={"priority": 0}, high={"priority": 10})
    s = make(slots=1, doc=doc)
    low = req("low", prompt=4, max_tokens=50)
    s.submit(low)
    run_step(s, now=0.0)
    s.submit(req("high", arrival=0.1, prompt=4, max_tokens=1))
    run_step(s, now=0.1)
    assert low.preemptions == 1
    started = []
    for t in range(2, 6):
        started += run_step(s, now=t * 0.1).started
    assert low.slot is not None and low not in started
    assert low.prefill_started_at == 0.0


def test_eos_finishes_and_frees_the_slot():
    s = make(slots=1)
    r = req(max_tokens=100)
    s.submit(r)
    run_step(s, now=0.0, token=0)
    assert r.finish_reason == "stop"
    assert s.free_slots == [0]


def test_max_tokens_finishes_with_length():
    s = make()
    r = req(max_tokens=3)
    s.submit(r)
    for t in range(3):
        run_step(s, now=t * 0.01)
    assert r.finish_reason == "length"
    assert r.output_ids == [7, 7, 7]


def test_stale_limits_are_refused():
    s = make(doc=limits(5, a={}))
    with pytest.raises(StaleLimits):
        s.apply_limits(limits(4, a={}))


def test_new_limits_apply_to_requests_in_flight_without_losing_any():
    s = make(slots=8, doc=limits(1, a={"max_batch_size": 1}))
    reqs = [req(max_tokens=5) for _ in range(4)]
    for r in reqs:
        s.submit(r)
    run_step(s, now=0.0)
    s.apply_limits(limits(2, a={"max_batch_size": 4}))
    t = 0.01
    while any(r.finish_reason is None for r in reqs):
        run_step(s, now=t)
        t += 0.01
    assert all(r.finish_reason == "length" for r in reqs)


def test_dropped_endpoint_finishes_what_it_holds_and_takes_no_more():
    s = make(doc=limits(1, a={"max_batch_size": 1}, b={}))
    held = [req("a", max_tokens=3) for _ in range(2)]
    for r in held:
        s.submit(r)
    run_step(s, now=0.0)
    s.apply_limits(limits(2, b={}))
    with pytest.raises(Rejected):
        s.submit(req("a"))
    for t in range(1, 10):
        run_step(s, now=t * 0.01)
    assert all(r.finish_reason == "length" for r in held)
    assert "a" not in s.endpoints


def test_kv_admission_reserves_prompt_plus_max_tokens_and_frees_it_on_finish():
    sched = Scheduler(limits(a={}), 8, 1000, 1000, eos_token_ids=(0,), kv_cache_tokens=1000,
                      kv_block_tokens=1)  # fmt: skip
    first, second = req("a", prompt=500, max_tokens=100), req("a", prompt=500, max_tokens=100)
    sched.submit(first)
    sched.submit(second)
    step = sched.schedule(0.0)
    assert step.admitted == [first]  # 600 + 600 tokens do not fit in 1,000
    assert sched.kv_reserved == 600
    sched.complete(step, {first.id: 5})
    first.cancel()
    assert sched.schedule(0.1).admitted == [second]
    assert sched.kv_reserved == 600


def test_a_higher_priority_head_that_does_not_fit_keeps_lower_priorities_waiting():
    doc = limits(hi={"priority": 100}, lo={"priority": 0})
    sched = Scheduler(doc, 8, 1000, 1000, kv_cache_tokens=1000, kv_block_tokens=1)
    running = req("hi", prompt=700, max_tokens=100)
    sched.submit(running)
    sched.schedule(0.0)
    big, small = req("hi", prompt=300, max_tokens=100), req("lo", prompt=10, max_tokens=10)
    sched.submit(big)
    sched.submit(small)
    assert sched.schedule(0.1).admitted == []


def test_kv_is_reserved_in_whole_blocks():
    sched = Scheduler(limits(a={}), 8, 1000, 1000, kv_cache_tokens=1000, kv_block_tokens=64)
    assert sched.kv_need(req("a", prompt=100, max_tokens=29)) == 192


def test_admission_hands_out_block_ids_for_prompt_plus_max_tokens_and_takes_them_back():
    sched = Scheduler(limits(a={}), 8, 1000, 1000, kv_cache_tokens=700, kv_block_tokens=64)
    assert sched.num_blocks == 10 and sorted(sched.free_blocks) == list(range(10))
    a, b = req(prompt=100, max_tokens=29), req(prompt=64, max_tokens=64)  # 3 and 2 blocks
    sched.submit(a)
    sched.submit(b)
    sched.schedule(0.0)
    assert (len(a.blocks), len(b.blocks)) == (3, 2)
    assert len(set(a.blocks) | set(b.blocks) | set(sched.free_blocks)) == 10
    assert sched.kv_reserved == 5 * 64
    a.cancel()
    sched.schedule(0.1)
    assert a.blocks == []
    assert len(sched.free_blocks) == 8 and sched.kv_reserved == 2 * 64


def test_a_request_larger_than_the_whole_kv_budget_is_too_long():
    sched = Scheduler(limits(a={}), 8, 4096, 1000, kv_cache_tokens=1000, kv_block_tokens=1)
    with pytest.raises(Rejected) as exc:
        sched.submit(req("a", prompt=900, max_tokens=200))
    assert exc.value.status == 400


def test_steady_decode_steps_run_until_the_first_request_reaches_max_tokens():
    sched = make(slots=4, budget=1000)
    short, long = req("a", prompt=4, max_tokens=3), req("a", prompt=4, max_tokens=10)
    sched.submit(short)
    sched.submit(long)
    first = sched.schedule(0.0)
    assert sched.steady_decode_steps(first) == 1  # a prefill step is never repeated
    sched.complete(first, {short.id: 7, long.id: 7})
    decode = sched.schedule(0.1)
    assert sched.steady_decode_steps(decode) == 2
    _, finished = sched.complete(decode, {short.id: 7, long.id: 7}, repeat=2)
    assert finished == [short]
    assert len(long.output_ids) == 3


def test_take_waiting_hands_back_every_queued_request():
    sched = make(slots=1)
    queued = [req("a", prompt=4) for _ in range(3)]
    for r in queued:
        sched.submit(r)
    sched.schedule(0.0)
    assert sched.take_waiting() == queued[1:]
    assert not sched.has_waiting
