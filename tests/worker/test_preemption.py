"""Priority preemption through the real engine and the tiny model on the paged cache: an
interactive request takes the KV blocks of running offline ones, and the preempted requests
resume (their prompt and generated tokens prefilled again) with the tokens they would have
produced undisturbed."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from carpool_replica.scheduler import Request
from carpool_worker.config import PRESETS
from carpool_worker.engine import Engine, TokenEvent
from carpool_worker.limits import EndpointLimits, LimitsDocument
from carpool_worker.model import load_model
from carpool_worker.runner import ModelRunner

from .test_engine import Collector

BLOCK = 16
# Two offline requests of 40 + 200 tokens take 15 blocks each; two blocks are left over, too
# few for the interactive request (30 + 20 tokens: 4 blocks).
OFFLINE_PROMPT, OFFLINE_NEW = 40, 200
CACHE_TOKENS = 2 * (OFFLINE_PROMPT + OFFLINE_NEW) + 2 * BLOCK
LIMITS = LimitsDocument(
    1,
    "t",
    {
        "interactive": EndpointLimits(100, 4, 0, 60_000, 100),
        "offline": EndpointLimits(0, 4, 0, 60_000, 100),
    },
)


@pytest.fixture(scope="module")
def runner():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    model.init_random(seed=11)
    r = ModelRunner(
        model, num_slots=4, max_seq_len=256, kv_cache_tokens=CACHE_TOKENS, kv_block_tokens=BLOCK
    )
    r.warmup()
    return r


@pytest.fixture
def engine(runner):
    e = Engine(runner, LIMITS, prefill_token_budget=32)
    e.start()
    yield e
    e.stop()


class Progress(Collector):
    """Collects events and says when ``after`` tokens have arrived."""

    def __init__(self, after: int):
        super().__init__()
        self.count, self.after = 0, after
        self.reached = threading.Event()

    def __call__(self, event):
        if isinstance(event, TokenEvent):
            self.count += 1
            if self.count >= self.after:
                self.reached.set()
        super().__call__(event)


def prompt(seed: int, length: int) -> list[int]:
    return [(31 * seed + 7 * j + 1) % 250 + 1 for j in range(length)]


def run(engine, endpoint: str, ids: list[int], new: int, sink) -> None:
    engine.submit(Request(ids, new, endpoint, time.monotonic(), temperature=0.0, sink=sink))


def alone(engine, endpoint: str, ids: list[int], new: int) -> list[int]:
    sink = Collector()
    run(engine, endpoint, ids, new, sink)
    assert sink.result().reason == "length"
    return sink.tokens


def preemptions(engine) -> float:
    counter = engine.metrics.preemptions
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def test_an_interactive_request_preempts_offline_work_and_every_output_is_unchanged(engine):
    offline = [prompt(i, OFFLINE_PROMPT) for i in range(2)]
    interactive = prompt(9, 30)
    want_offline = [alone(engine, "offline", p, OFFLINE_NEW) for p in offline]
    want_interactive = alone(engine, "interactive", interactive, 20)
    assert preemptions(engine) == 0

    sinks = [Progress(after=10) for _ in offline]
    for p, sink in zip(offline, sinks, strict=True):
        run(engine, "offline", p, OFFLINE_NEW, sink)
    for sink in sinks:  # both are decoding and hold every block
        assert sink.reached.wait(30)
    urgent = Collector()
    run(engine, "interactive", interactive, 20, urgent)

    assert urgent.result().reason == "length"
    assert urgent.tokens == want_interactive
    for sink, want in zip(sinks, want_offline, strict=True):
        assert sink.result().reason == "length"
        assert sink.tokens == want  # resumed after preemption: the same greedy tokens
    assert preemptions(engine) >= 1
    scheduler = engine.scheduler
    assert scheduler.kv_reserved == 0 and not scheduler.running
