"""Shared fixtures for the simulator's tests: a linear step-time model and a recorder."""

from __future__ import annotations

import pytest

from carpool_replica.limits import EndpointLimits
from carpool_replica.steptime import StepCost
from carpool_sim.replica import Replica
from carpool_sim.trace import Request

CHAT = EndpointLimits(priority=100, max_batch_size=4, batch_window_ms=0,
                      max_queue_wait_ms=5000, max_queue_length=10)  # fmt: skip
BATCH = EndpointLimits(priority=0, max_batch_size=2, batch_window_ms=0,
                       max_queue_wait_ms=60_000, max_queue_length=10)  # fmt: skip


class LinearSteps:
    """Decode: `decode_seconds` per step whatever the batch; prefill: `per_token` a token,
    wherever the chunk starts."""

    def __init__(self, decode_seconds: float = 0.01, per_token: float = 0.0001):
        self.decode_seconds = decode_seconds
        self.per_token = per_token

    def step_seconds(self, batch_size: float, context_tokens: float) -> float:
        return self.decode_seconds

    def chunk_seconds(self, chunk_tokens: float, offset_tokens: float) -> float:
        return self.per_token * chunk_tokens


class Log:
    """A Recorder that keeps every event as (kind, request, time[, reason])."""

    def __init__(self):
        self.events: list[tuple] = []

    def started(self, request: Request, now: float) -> None:
        self.events.append(("started", request, now))

    def first_token(self, request: Request, now: float) -> None:
        self.events.append(("first_token", request, now))

    def finished(self, request: Request, now: float) -> None:
        self.events.append(("finished", request, now))

    def rejected(self, request: Request, now: float, reason: str) -> None:
        self.events.append(("rejected", request, now, reason))

    def time_of(self, kind: str, request: Request) -> float:
        return next(e[2] for e in self.events if e[0] == kind and e[1] is request)

    def kinds(self, request: Request) -> list[str]:
        return [e[0] for e in self.events if e[1] is request]


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def make_replica():
    """Build a replica on LinearSteps(0.01 s decode, 0.1 ms per prompt token)."""

    def make(recorder, budget=1000, slots=8, kv=100_000, chat=None, batch=None) -> Replica:
        return Replica(
            StepCost(LinearSteps(decode_seconds=0.01, per_token=0.0001)),
            {"chat": chat or CHAT, "batch": batch or BATCH},
            recorder,
            slots=slots,
            max_seq_len=kv,
            kv_cache_tokens=kv,
            prefill_chunk_tokens=budget,
        )

    return make


POOL_YAML = """
apiVersion: carpool.dev/v1alpha1
kind: InferencePool
metadata: {name: test}
spec:
  model: {preset: tiny}
  replicas: {min: 1, max: 4}
  endpoints:
    - name: chat
      priority: 100
      sla: {ttftP95Milliseconds: 500}
      batching: {maxBatchSize: {min: 1, max: 16}, batchWindowMilliseconds: {min: 0, max: 5}}
      queue: {maxWaitMilliseconds: 5000, maxLength: 100}
    - name: batch
      priority: 0
      batching: {maxBatchSize: {min: 4, max: 32}, batchWindowMilliseconds: {min: 0, max: 100}}
      queue: {maxWaitMilliseconds: 60000, maxLength: 1000}
"""

PROFILE = {
    "schema": "carpool.dev/profile/v2",
    "model": "test",
    "device": "test",
    "kv_cache_tokens": 65536,
    "max_batch_size": 64,
    "max_seq_len": 4096,
    "prefill_chunk_tokens": 2048,
    "decode": [
        {"batch_size": 1, "context_tokens": 512, "step_seconds": 0.01},
        {"batch_size": 64, "context_tokens": 512, "step_seconds": 0.02},
    ],
    "prefill_chunks": [
        {"chunk_tokens": 100, "offset_tokens": 0, "seconds": 0.005},
        {"chunk_tokens": 2000, "offset_tokens": 0, "seconds": 0.1},
    ],
}


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text(POOL_YAML)
    return path


@pytest.fixture
def profile_file(tmp_path):
    import json

    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    return path
