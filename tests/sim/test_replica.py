"""The replica model follows the worker scheduler's rules and the profile's step times."""

from __future__ import annotations

import pytest

from carpool_replica.limits import EndpointLimits
from carpool_sim.trace import Request

BATCH_MAX = 2


def test_single_request_ttft_is_its_prefill_and_it_ends_after_its_decode_steps(log, make_replica):
    replica = make_replica(log)
    request = Request("chat", 0.0, prompt_tokens=500, output_tokens=11)
    replica.submit(request, 0.0)
    replica.run_until(10.0)
    assert log.time_of("first_token", request) == pytest.approx(0.05)
    assert log.time_of("finished", request) == pytest.approx(0.05 + 10 * 0.01)


def test_long_prompt_is_prefilled_in_chunks_of_the_token_budget(log, make_replica):
    replica = make_replica(log, budget=1000)
    request = Request("chat", 0.0, prompt_tokens=2500, output_tokens=1)
    replica.submit(request, 0.0)
    replica.run_until(10.0)
    # Three steps (1000 + 1000 + 500 tokens): the same total prefill time, one token at the end.
    assert log.time_of("first_token", request) == pytest.approx(0.25)


def test_prefill_shares_a_step_with_running_decodes(log, make_replica):
    replica = make_replica(log)
    first = Request("chat", 0.0, prompt_tokens=100, output_tokens=100)
    second = Request("chat", 0.0, prompt_tokens=100, output_tokens=100)
    replica.submit(first, 0.0)
    replica.run_until(0.5)
    replica.submit(second, 0.5)
    replica.run_until(10.0)
    # `second` joins at the step boundary after 0.5 and its prefill step also decodes `first`.
    started = log.time_of("started", second)
    assert 0.5 <= started < 0.5 + 0.01 + 1e-9
    assert log.time_of("first_token", second) == pytest.approx(started + 0.01 + 0.01)


def test_higher_priority_starts_first(log, make_replica):
    replica = make_replica(log, slots=1)
    blocker = Request("chat", 0.0, prompt_tokens=10, output_tokens=50)
    low = Request("batch", 0.1, prompt_tokens=10, output_tokens=5)
    high = Request("chat", 0.2, prompt_tokens=10, output_tokens=5)
    replica.submit(blocker, 0.0)
    replica.run_until(0.1)
    replica.submit(low, 0.1)
    replica.run_until(0.2)
    replica.submit(high, 0.2)
    replica.run_until(10.0)
    assert log.time_of("started", high) < log.time_of("started", low)


def test_an_endpoint_never_runs_more_than_its_max_batch_size(log, make_replica):
    replica = make_replica(log)
    requests = [Request("batch", 0.0, prompt_tokens=10, output_tokens=20) for _ in range(5)]
    for r in requests:
        replica.submit(r, 0.0)
    replica.run_until(0.001)
    assert replica.running_count("batch") == BATCH_MAX
    assert replica.waiting("batch") == 3


def test_a_lone_request_waits_out_the_batch_window(log, make_replica):
    windowed = EndpointLimits(100, 4, 200, 5000, 10)
    replica = make_replica(log, chat=windowed)
    request = Request("chat", 0.0, prompt_tokens=10, output_tokens=1)
    replica.submit(request, 0.0)
    replica.run_until(10.0)
    assert log.time_of("started", request) == pytest.approx(0.2)


def test_a_full_batch_does_not_wait_for_the_window(log, make_replica):
    windowed = EndpointLimits(100, 2, 200, 5000, 10)
    replica = make_replica(log, chat=windowed)
    pair = [Request("chat", 0.0, prompt_tokens=10, output_tokens=1) for _ in range(2)]
    for r in pair:
        replica.submit(r, 0.0)
    replica.run_until(10.0)
    assert [log.time_of("started", r) for r in pair] == [0.0, 0.0]


def test_a_request_waiting_past_its_max_wait_is_rejected(log, make_replica):
    short = EndpointLimits(100, 1, 0, 500, 10)
    replica = make_replica(log, chat=short)
    running = Request("chat", 0.0, prompt_tokens=10, output_tokens=200)
    stuck = Request("chat", 0.0, prompt_tokens=10, output_tokens=1)
    replica.submit(running, 0.0)
    replica.submit(stuck, 0.0)
    replica.run_until(10.0)
    assert log.kinds(stuck) == ["rejected"]


def test_a_full_queue_turns_requests_away(log, make_replica):
    tiny_queue = EndpointLimits(100, 1, 0, 5000, 1)
    replica = make_replica(log, chat=tiny_queue)
    requests = [Request("chat", 0.0, prompt_tokens=10, output_tokens=100) for _ in range(3)]
    for r in requests:
        replica.submit(r, 0.0)
    # The first runs, the second fills the one-place queue, the third is turned away.
    assert [log.kinds(r) for r in requests] == [["started"], [], ["rejected"]]


def test_kv_capacity_bounds_admission(log, make_replica):
    replica = make_replica(log, kv=1000)
    first = Request("chat", 0.0, prompt_tokens=500, output_tokens=100)
    second = Request("chat", 0.0, prompt_tokens=500, output_tokens=100)
    replica.submit(first, 0.0)
    replica.submit(second, 0.0)
    replica.run_until(0.001)
    assert replica.running_count() == 1


def test_busy_time_counts_only_steps(log, make_replica):
    replica = make_replica(log)
    request = Request("chat", 0.0, prompt_tokens=500, output_tokens=11)
    replica.submit(request, 0.0)
    replica.run_until(100.0)
    assert replica.busy_seconds_at(100.0) == pytest.approx(0.15)


def test_a_preempted_request_resumes_and_is_recorded_once(log, make_replica):
    replica = make_replica(log, kv=1024)  # 16 blocks of 64 tokens
    offline = Request("batch", 0.0, prompt_tokens=500, output_tokens=200)  # 11 blocks
    urgent = Request("chat", 0.5, prompt_tokens=300, output_tokens=100)  # 7 blocks
    replica.submit(offline, 0.0)
    replica.run_until(0.5)
    replica.submit(urgent, 0.5)
    replica.run_until(100.0)
    # `urgent` takes the blocks at the next step boundary; `offline` resumes after it.
    assert log.time_of("started", urgent) < 0.5 + 0.01 + 1e-9
    assert log.kinds(offline) == ["started", "first_token", "finished"]
    assert log.kinds(urgent) == ["started", "first_token", "finished"]
    assert log.time_of("finished", offline) > log.time_of("finished", urgent)
    assert replica.idle and replica.scheduler.kv_reserved == 0
