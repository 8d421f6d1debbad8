"""The engine thread with the real tiny model on the CPU: events, cancellation, live limits."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from carpool_replica.scheduler import Request
from carpool_worker.config import PRESETS
from carpool_worker.engine import DoneEvent, Engine, TokenEvent
from carpool_worker.limits import EndpointLimits, LimitsDocument
from carpool_worker.model import load_model
from carpool_worker.runner import ModelRunner

from .conftest import wait_for


def doc(version: int, max_batch: int = 4, wait_ms: int = 30_000, window_ms: int = 0):
    lim = EndpointLimits(0, max_batch, window_ms, wait_ms, 1000)
    return LimitsDocument(version, "a", {"a": lim})


@pytest.fixture(scope="module")
def runner():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    r = ModelRunner(model, num_slots=4, max_seq_len=128)
    r.warmup()
    return r


@pytest.fixture
def engine(runner):
    e = Engine(runner, doc(1), prefill_token_budget=32)
    e.start()
    yield e
    e.stop()


class Collector:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.tokens: list[int] = []

    def __call__(self, event):
        self.events.put(event)

    def result(self, timeout: float = 30.0) -> DoneEvent:
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, TokenEvent):
                self.tokens.append(event.token_id)
            else:
                return event


def submit(engine, prompt=(256, 10, 20, 30), max_tokens=8, endpoint="a") -> Collector:
    sink = Collector()
    engine.submit(
        Request(list(prompt), max_tokens, endpoint, time.monotonic(), temperature=0.0, sink=sink)
    )
    return sink


def test_request_gets_its_tokens_then_done(engine):
    sink = submit(engine, max_tokens=8)
    done = sink.result()
    assert done.reason in ("length", "stop")
    assert 1 <= len(sink.tokens) <= 8


def test_concurrent_requests_match_the_same_request_alone(engine):
    alone = submit(engine, max_tokens=10)
    alone.result()
    sinks = [submit(engine, prompt=(256, 10 + i, 20, 30), max_tokens=10) for i in range(4)]
    for s in sinks:
        s.result()
    assert sinks[0].tokens == alone.tokens


def test_cancel_frees_the_slot_at_the_next_step(engine):
    sinks = []
    for _ in range(4):
        sink = Collector()
        r = Request([256, 1, 2], 100, "a", time.monotonic(), sink=sink)
        engine.submit(r)
        sinks.append((r, sink))
    wait_for(lambda: len(engine.scheduler.running) == 4)
    r, sink = sinks[0]
    r.cancel()
    engine.wake()
    assert sink.result().reason == "cancelled"
    late = submit(engine, max_tokens=2)  # gets the freed slot while the others still run
    assert late.result().reason in ("length", "stop")
    for r, _ in sinks[1:]:
        r.cancel()


def test_wait_past_deadline_is_rejected_with_429(engine):
    engine.apply_limits(doc(2, max_batch=1, wait_ms=50))
    hog = Request([256, 1], 120, "a", time.monotonic(), sink=Collector())
    engine.submit(hog)
    late = submit(engine)
    done = late.result()
    assert done.reason == "expired"
    assert done.rejection.status == 429 and done.rejection.retry_after >= 1
    hog.cancel()


def test_limits_changed_under_load_lose_no_request(engine):
    sinks: list[Collector] = []
    stop = threading.Event()

    def load():
        while not stop.is_set() and len(sinks) < 40:
            sinks.append(submit(engine, max_tokens=6))
            time.sleep(0.002)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for version in range(2, 12):
        engine.apply_limits(doc(version, max_batch=1 + version % 4, window_ms=version % 3))
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    reasons = [s.result().reason for s in sinks]
    assert reasons and all(r in ("length", "stop") for r in reasons)
    assert engine.limits.version == 11
