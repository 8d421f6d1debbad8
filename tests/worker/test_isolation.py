"""One request never fails another: a poisoned request among co-batched ones fails (or is served)
alone, and every other request gets the tokens it gets when it runs alone."""

from __future__ import annotations

import json
import time

import pytest
import torch

from carpool_worker.config import PRESETS
from carpool_worker.engine import DoneEvent, Engine, Request
from carpool_worker.limits import EndpointLimits, LimitsDocument
from carpool_worker.model import load_model
from carpool_worker.runner import ModelRunner
from carpool_worker.sampling import sample

from .test_engine import Collector

BATCH = 8
# A window far longer than the test: the batch is admitted only once all of it has arrived,
# so every request below shares its steps with the others.
TOGETHER = LimitsDocument(1, "a", {"a": EndpointLimits(0, BATCH, 60_000, 120_000, 1000)})
ONE_AT_A_TIME = LimitsDocument(1, "a", {"a": EndpointLimits(0, 1, 0, 120_000, 1000)})
PROMPTS = [(256, 10 + i, 20 + 3 * i, 30) for i in range(BATCH)]
MAX_TOKENS = 12


class PoisoningRunner:
    """The real runner, except that any step holding the poisoned request (by id, or by
    prompt for requests made over HTTP) raises."""

    def __init__(self, runner: ModelRunner, poisoned_prompt: list[int] | None = None):
        self.runner = runner
        self.poisoned_id: int | None = None
        self.poisoned_prompt = poisoned_prompt
        self.failed_batch_sizes: list[int] = []

    num_slots = property(lambda self: self.runner.num_slots)
    max_seq_len = property(lambda self: self.runner.max_seq_len)
    kv_cache_tokens = property(lambda self: self.runner.kv_cache_tokens)
    kv_block_tokens = property(lambda self: self.runner.kv_block_tokens)

    def execute(self, step):
        rows = [r for r, _, _ in step.prefill] + step.decode
        if any(r.id == self.poisoned_id or r.prompt_ids == self.poisoned_prompt for r in rows):
            self.failed_batch_sizes.append(len(rows))
            raise RuntimeError("poisoned row")
        return self.runner.execute(step)


@pytest.fixture(scope="module")
def runner():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    r = ModelRunner(model, num_slots=BATCH, max_seq_len=128)
    r.warmup()
    return r


def run(runner, limits, requests: list[Request]) -> list[tuple[list[int], DoneEvent]]:
    engine = Engine(runner, limits, prefill_token_budget=256)
    engine.start()
    try:
        sinks = []
        for req in requests:
            req.sink = Collector()
            sinks.append(req.sink)
            engine.submit(req)
        done = [s.result() for s in sinks]  # collects each request's tokens up to its end
        return [(s.tokens, d) for s, d in zip(sinks, done, strict=True)]
    finally:
        engine.stop()


def greedy(prompt) -> Request:
    return Request(list(prompt), MAX_TOKENS, "a", time.monotonic(), temperature=0.0)


@pytest.fixture(scope="module")
def alone(runner) -> list[list[int]]:
    """Each prompt's greedy tokens, each request run by itself."""
    results = run(runner, ONE_AT_A_TIME, [greedy(p) for p in PROMPTS])
    assert all(done.reason == "length" for _, done in results)
    return [tokens for tokens, _ in results]


def test_sampler_keeps_the_most_likely_token_when_top_p_rounds_to_zero():
    logits = torch.tensor([[0.1, 3.0, 0.2, 2.9], [1.0, 0.0, 0.5, 0.9]])
    ids = sample(logits, [1.0, 1.0], [1e-300, 1e-300], torch.Generator().manual_seed(0))
    assert ids.tolist() == [1, 0]


def test_request_whose_processing_raises_fails_alone_with_the_reason(runner, alone):
    poisoning = PoisoningRunner(runner)
    requests = [greedy(p) for p in PROMPTS[:-1]]
    poisoned = greedy(PROMPTS[-1])
    poisoning.poisoned_id = poisoned.id
    results = run(poisoning, TOGETHER, [*requests, poisoned])
    assert poisoning.failed_batch_sizes[0] == BATCH  # it did share its step with the others
    for (tokens, done), expected in zip(results[:-1], alone[:-1], strict=True):
        assert done.reason == "length"
        assert tokens == expected
    tokens, done = results[-1]
    assert done.reason == "error"
    assert "poisoned row" in done.error
    assert tokens == []


def test_top_p_that_rounds_to_zero_fails_no_request_and_samples_the_top_token(runner, alone):
    requests = [greedy(p) for p in PROMPTS[:-1]]
    poisoned = Request(list(PROMPTS[-1]), MAX_TOKENS, "a", time.monotonic(), 1.0, 1e-300)
    results = run(runner, TOGETHER, [*requests, poisoned])
    assert [done.reason for _, done in results] == ["length"] * BATCH
    # Only the most likely token survives such a top_p: the poisoned request is greedy too.
    assert [tokens for tokens, _ in results] == alone


POISONED_PROMPT = [256, 7, 7, 7]


def test_request_failing_in_the_engine_gets_a_500_that_says_why(server, client, monkeypatch):
    engine = server.worker.engine
    monkeypatch.setattr(engine, "runner", PoisoningRunner(engine.runner, POISONED_PROMPT))
    r = client.post("/v1/completions", json={"prompt": POISONED_PROMPT, "max_tokens": 4})
    assert r.status_code == 500
    assert "poisoned row" in r.json()["error"]["message"]


def test_stream_failing_in_the_engine_ends_with_an_error_event_that_says_why(
    server, client, monkeypatch
):
    engine = server.worker.engine
    monkeypatch.setattr(engine, "runner", PoisoningRunner(engine.runner, POISONED_PROMPT))
    body = {"prompt": POISONED_PROMPT, "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "error"
    assert "poisoned row" in json.loads(events[-2])["error"]["message"]
