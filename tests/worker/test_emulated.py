"""The emulated GPU: steps cost what the profile says, tokens are deterministic, and a request
served through the worker's engine on it finishes with exactly its max_tokens."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from carpool_replica.limits import EndpointLimits, LimitsDocument
from carpool_replica.profile import Profile
from carpool_replica.scheduler import Request, Step
from carpool_worker.app import create_app
from carpool_worker.emulated import MAX_HOST_LAG_SECONDS, EmulatedRunner, emulated_token
from carpool_worker.engine import DoneEvent, Engine, TokenEvent
from carpool_worker.server import Worker, WorkerSettings

PROFILE = Profile.from_dict(
    {
        "schema": "carpool.dev/profile/v2",
        "model": "bench-8b",
        "device": "test GPU",
        "kv_cache_tokens": 4 * 1024,
        "max_batch_size": 4,
        "max_seq_len": 1024,
        "prefill_chunk_tokens": 256,
        "decode": [
            {"batch_size": 1, "context_tokens": 0, "step_seconds": 0.010},
            {"batch_size": 4, "context_tokens": 0, "step_seconds": 0.016},
        ],
        "prefill_chunks": [
            {"chunk_tokens": 256, "offset_tokens": 0, "seconds": 0.020},
            {"chunk_tokens": 256, "offset_tokens": 256, "seconds": 0.030},
        ],
    }
)
VOCAB = 128_256


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def request(prompt: int, max_tokens: int) -> Request:
    return Request(prompt_ids=list(range(1, prompt + 1)), max_tokens=max_tokens, endpoint="a",
                   arrival=0.0)  # fmt: skip


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def runner(fake: FakeTime) -> EmulatedRunner:
    return EmulatedRunner(PROFILE, VOCAB, clock=fake.clock, sleep=fake.sleep)


def decoding() -> Step:
    """A decode step of one request, 8 tokens into its context."""
    req = request(8, 4)
    req.num_prefilled, req.output_ids = 8, [5]
    return Step(decode=[req])


def test_a_step_blocks_for_its_profiled_cost(fake, runner):
    long = request(512, 4)
    runner.execute(Step(prefill=[(long, 256, 256)]))  # the second chunk: offset 256
    assert fake.slept == [pytest.approx(0.030)]


def test_engine_overhead_between_steps_is_absorbed_by_the_running_deadline(fake, runner):
    runner.execute(decoding())
    fake.now -= 0.004  # the engine came back before the last step's deadline: a GPU queue
    runner.execute(decoding())
    assert fake.slept == [pytest.approx(0.010), pytest.approx(0.014)]


def test_a_continuing_step_launched_late_by_the_host_keeps_the_gpus_pace(fake, runner):
    runner.execute(decoding())
    fake.now += 0.004  # the host came back 4 ms after the step's end
    runner.execute(decoding())
    assert fake.slept == [pytest.approx(0.010), pytest.approx(0.006)]


def test_a_step_after_an_idle_engine_starts_when_it_is_launched(fake, runner):
    runner.execute(Step(prefill=[(request(256, 4), 0, 256)]))
    fake.now += 1.0  # idle: nothing ran
    runner.execute(Step(prefill=[(request(256, 4), 0, 256)]))
    assert fake.slept == [pytest.approx(0.020), pytest.approx(0.020)]


def test_host_lag_past_the_bound_is_charged(fake, runner):
    runner.execute(decoding())
    fake.now += 0.5  # far behind: this host is overloaded
    runner.execute(decoding())
    assert fake.slept == [pytest.approx(0.010), pytest.approx(0.010)]
    assert MAX_HOST_LAG_SECONDS < 0.5


def test_tokens_depend_on_the_prompt_and_position_only():
    a, b = request(30, 4), request(30, 4)
    assert emulated_token(a.prompt_ids, 3, VOCAB) == emulated_token(b.prompt_ids, 3, VOCAB)
    assert emulated_token(a.prompt_ids, 3, VOCAB) != emulated_token(a.prompt_ids, 4, VOCAB)


def test_a_request_through_the_engine_generates_exactly_max_tokens():
    runner = EmulatedRunner(PROFILE, VOCAB)
    doc = LimitsDocument(1, "a", {"a": EndpointLimits(0, 4, 0, 60_000, 10)})
    engine = Engine(runner, doc, prefill_token_budget=PROFILE.prefill_chunk_tokens)
    engine.start()
    events: queue.Queue = queue.Queue()
    req = request(600, 7)
    req.arrival, req.sink = time.monotonic(), events.put
    try:
        engine.submit(req)
        got = [events.get(timeout=10) for _ in range(8)]
    finally:
        engine.stop()
    assert [type(e) for e in got] == [TokenEvent] * 7 + [DoneEvent]
    assert got[-1].reason == "length"
    assert [e.token_id for e in got[:7]] == [
        emulated_token(req.prompt_ids, i, VOCAB) for i in range(7)
    ]


def test_an_emulated_worker_loads_and_serves_without_importing_torch(tmp_path):
    # A process of its own: this test process has torch loaded by its neighbours.
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE.to_dict()))
    script = f"""
import sys
from pathlib import Path
from carpool_worker.server import Worker, WorkerSettings
worker = Worker(WorkerSettings(model="bench-1b", emulate=Path({str(profile)!r})))
worker.load()
worker.close()
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"


def test_a_stream_sends_its_first_token_even_when_its_text_is_not_printable(tmp_path):
    # bench-1b has no tokenizer of its own: most ids decode to no text at all.
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE.to_dict()))
    worker = Worker(WorkerSettings(model="bench-1b", emulate=profile))
    body = {"prompt": [1, 2, 3], "max_tokens": 3, "stream": True}
    with TestClient(create_app(worker)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        with client.stream("POST", "/v1/completions", json=body) as response:
            chunks = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: {")]  # fmt: skip
    assert emulated_token([1, 2, 3], 0, VOCAB) > 257  # decodes to nothing
    assert len(chunks) >= 2
    assert chunks[0]["choices"][0]["finish_reason"] is None
