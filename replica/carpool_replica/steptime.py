"""Step times of one replica: what the engine model asks the profile.

Contract: a `StepTimes` answers `step_seconds(batch, mean context)` (one decode step) and
`prefill_seconds(tokens)`; `carpool_policy.Profile` is one. `CachedStepTimes` wraps one and
memoizes it, rounding the mean context to a whole token.
"""

from __future__ import annotations

from typing import Protocol


class StepTimes(Protocol):
    def step_seconds(self, batch_size: float, context_tokens: float) -> float: ...
    def prefill_seconds(self, prompt_tokens: float) -> float: ...


class CachedStepTimes:
    """Memoizes a profile's step times; the mean context is rounded to a whole token, which
    moves a step by far less than a microsecond and saves most of a run's interpolation."""

    def __init__(self, steps: StepTimes):
        self.steps = steps
        self._decode: dict[tuple[int, int], float] = {}
        self._prefill: dict[int, float] = {}

    def step_seconds(self, batch_size: float, context_tokens: float) -> float:
        key = (int(batch_size), round(context_tokens))
        if key not in self._decode:
            self._decode[key] = self.steps.step_seconds(*key)
        return self._decode[key]

    def prefill_seconds(self, prompt_tokens: float) -> float:
        key = int(prompt_tokens)
        if key not in self._prefill:
            self._prefill[key] = self.steps.prefill_seconds(key)
        return self._prefill[key]
