"""Per-endpoint engine metrics: batch share, KV memory held, engine time charged, and clients
that left before or after their first token, counted apart (a stand-in runner, no model)."""

from __future__ import annotations

import queue
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carpool_replica.scheduler import Request
from carpool_worker.engine import DoneEvent, Engine, TokenEvent
from carpool_worker.limits import EndpointLimits, LimitsDocument

from .conftest import wait_for


class StandInRunner:
    """One token per request per step; each step takes a few milliseconds of device time."""

    num_slots = 4
    max_seq_len = 256
    kv_cache_tokens = 4 * 256
    kv_block_tokens = 16

    def execute(self, step) -> dict[int, int]:
        time.sleep(0.005)
        tokens = {r.id: 7 for r in step.decode}
        tokens.update({r.id: 7 for r, _, _ in step.prefill})
        return tokens


def limits(max_batch: int = 4) -> LimitsDocument:
    lim = EndpointLimits(0, max_batch, 0, 60_000, 100)
    return LimitsDocument(1, "chat", {"chat": lim, "batch": lim})


@pytest.fixture
def engine():
    e = Engine(StandInRunner(), limits(), prefill_token_budget=64)
    e.start()
    yield e
    e.stop()


class Sink:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.tokens = 0

    def __call__(self, event) -> None:
        if isinstance(event, TokenEvent):
            self.tokens += 1
        self.events.put(event)

    def done(self, timeout: float = 10.0) -> DoneEvent:
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, DoneEvent):
                return event


def submit(engine: Engine, endpoint: str, max_tokens: int) -> tuple[Request, Sink]:
    sink = Sink()
    request = Request([1, 2, 3, 4], max_tokens, endpoint, time.monotonic(), sink=sink)
    engine.submit(request)
    return request, sink


def sample(engine: Engine, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(engine.metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


def test_a_client_leaving_after_its_first_token_is_counted_apart(engine) -> None:
    request, sink = submit(engine, "chat", 200)
    wait_for(lambda: sink.tokens > 0)
    request.cancel()
    engine.wake()
    assert sink.done().reason == "cancelled"
    after = {"endpoint": "chat", "stage": "after_first_token"}
    before = {"endpoint": "chat", "stage": "before_first_token"}
    assert sample(engine, "carpool_requests_abandoned_total", **after) == 1
    assert sample(engine, "carpool_requests_abandoned_total", **before) == 0


def test_a_client_leaving_while_queued_left_before_its_first_token() -> None:
    engine = Engine(StandInRunner(), limits(max_batch=1), prefill_token_budget=64)
    engine.start()
    try:
        busy, _ = submit(engine, "chat", 200)
        queued, sink = submit(engine, "chat", 200)
        queued.cancel()
        engine.wake()
        assert sink.done().reason == "cancelled" and sink.tokens == 0
        before = {"endpoint": "chat", "stage": "before_first_token"}
        assert sample(engine, "carpool_requests_abandoned_total", **before) == 1
        busy.cancel()
    finally:
        engine.stop()


def test_kv_memory_and_engine_time_are_charged_to_the_endpoint_that_uses_them(engine) -> None:
    chat, _ = submit(engine, "chat", 200)
    wait_for(lambda: sample(engine, "carpool_kv_cache_tokens", endpoint="chat") > 4)
    assert sample(engine, "carpool_kv_cache_tokens", endpoint="batch") == 0
    wait_for(lambda: sample(engine, "carpool_engine_seconds_total", endpoint="chat") > 0)
    assert sample(engine, "carpool_engine_seconds_total", endpoint="batch") == 0
    assert sample(engine, "carpool_endpoint_batch_size_count", endpoint="chat") > 0
    assert sample(engine, "carpool_kv_cache_capacity_tokens") == 4 * 256
    chat.cancel()


def test_a_shared_step_splits_its_time_by_sequences(engine) -> None:
    for endpoint in ("chat", "chat", "chat", "batch"):
        submit(engine, endpoint, 30)
    wait_for(lambda: sample(engine, "carpool_requests_total", endpoint="batch", outcome="ok") == 1)
    wait_for(lambda: sample(engine, "carpool_requests_total", endpoint="chat", outcome="ok") == 3)
    chat = sample(engine, "carpool_engine_seconds_total", endpoint="chat")
    batch = sample(engine, "carpool_engine_seconds_total", endpoint="batch")
    assert chat == pytest.approx(3 * batch, rel=0.2)


def test_prompts_waiting_their_turn_at_the_prefill_budget_is_queue_wait() -> None:
    # A budget of one 4-token prompt a step: four prompts sent together start their prefills a
    # step (at least 5 ms) apart, so their queue waits are at least 0, 5, 10 and 15 ms. Measured
    # at admission into the batch instead, the last three would read about 5 ms each.
    engine = Engine(StandInRunner(), limits(), prefill_token_budget=4)
    engine.start()
    try:
        for _ in range(4):
            submit(engine, "chat", 1)
        ok = {"endpoint": "chat", "outcome": "ok"}
        wait_for(lambda: sample(engine, "carpool_requests_total", **ok) == 4)
        assert sample(engine, "carpool_queue_wait_seconds_count", endpoint="chat") == 4
        assert sample(engine, "carpool_queue_wait_seconds_sum", endpoint="chat") >= 0.025
        assert sample(engine, "carpool_prompt_tokens_total", endpoint="chat") == 4 * 4
        # Each prompt's length once, in the bucket that holds it (the policy prices prefill
        # over these lengths).
        assert sample(engine, "carpool_prompt_length_tokens_count", endpoint="chat") == 4
        assert (
            sample(engine, "carpool_prompt_length_tokens_bucket", endpoint="chat", le="64.0") == 4
        )
    finally:
        engine.stop()
