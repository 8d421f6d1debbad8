"""What one scheduler step costs on a replica, from its profile: the emulated worker sleeps it,
the simulator advances virtual time by it.

Contract: `StepCost(profile).seconds(step, context_ahead=0)` is the time of one engine step:
the decode part, `profile.step_seconds(decode batch, mean decode context)`, plus each prefill
chunk's `profile.chunk_seconds(length, start offset)`. `context_ahead` adds to the mean decode
context: a run of k identical decode steps is costed at its middle step (context + (k - 1) / 2).
Answers are memoized with the mean context rounded to a whole token, which moves a step by far
less than a microsecond and saves most of a long run's interpolation.
"""

from __future__ import annotations

from typing import Protocol

from carpool_replica.scheduler import Step


class StepTimes(Protocol):
    def step_seconds(self, batch_size: float, context_tokens: float) -> float: ...
    def chunk_seconds(self, chunk_tokens: float, offset_tokens: float) -> float: ...


class StepCost:
    def __init__(self, profile: StepTimes):
        self.profile = profile
        self._decode: dict[tuple[int, int], float] = {}
        self._chunk: dict[tuple[int, int], float] = {}

    def seconds(self, step: Step, context_ahead: float = 0.0) -> float:
        total = 0.0
        if step.decode:
            mean_context = sum(r.context_len for r in step.decode) / len(step.decode)
            total += self.decode_seconds(len(step.decode), mean_context + context_ahead)
        for _, start, length in step.prefill:
            total += self.chunk_seconds(length, start)
        return total

    def decode_seconds(self, batch: int, context: float) -> float:
        key = (batch, round(context))
        if key not in self._decode:
            self._decode[key] = self.profile.step_seconds(*key)
        return self._decode[key]

    def chunk_seconds(self, length: int, start: int) -> float:
        key = (length, start)
        if key not in self._chunk:
            self._chunk[key] = self.profile.chunk_seconds(*key)
        return self._chunk[key]
