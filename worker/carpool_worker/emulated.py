"""The emulated GPU: a runner that takes a step's time from a measured profile instead of running
a model. It is a stand-in for GPU time only; the scheduler, the engine loop, the HTTP API, the
limits API and the metrics are the worker's own.

Contract: ``EmulatedRunner(profile, vocab_size)`` has the runner interface the engine drives
(``num_slots``, ``max_seq_len``, ``warmup()``, ``execute(step) -> {request id: token}``), sized
by the profile (its ``max_batch_size`` slots of ``max_seq_len`` tokens). ``execute`` blocks for
``carpool_replica.steptime.StepCost`` of the step, the same cost the simulator charges, and
returns deterministic token ids (a function of the prompt and the position). The worker gives
an emulated engine no EOS ids, so an emulated request generates exactly its ``max_tokens``, as a
simulated one does.

The step ends at a deadline on a running clock (the previous step's end, or now if the engine
was idle, plus the step's cost) rather than after a fresh sleep, so the engine's own per-step
overhead is absorbed as a GPU's queue of launched work absorbs it, and the emulated throughput
is the profile's even on a busy CPU. Sleeping costs no CPU, so many emulated GPUs share a core.
"""

from __future__ import annotations

import time

from carpool_replica.profile import Profile
from carpool_replica.scheduler import Step
from carpool_replica.steptime import StepCost


def emulated_token(prompt_ids, position: int, vocab_size: int) -> int:
    """The token an emulated model emits at ``position`` of its output, for this prompt."""
    seed = (len(prompt_ids) * 131 + (prompt_ids[-1] if len(prompt_ids) else 0)) * 7919
    return (seed + position * 104_729) % vocab_size


class EmulatedRunner:
    def __init__(self, profile: Profile, vocab_size: int, clock=time.monotonic, sleep=time.sleep):
        self.profile = profile
        self.vocab_size = vocab_size
        self.cost = StepCost(profile)
        self.clock = clock
        self.sleep = sleep
        self._busy_until = 0.0

    @property
    def num_slots(self) -> int:
        return self.profile.max_batch_size

    @property
    def max_seq_len(self) -> int:
        return self.profile.max_seq_len

    def warmup(self) -> None:
        """Nothing to compile or capture."""

    def execute(self, step: Step) -> dict[int, int]:
        now = self.clock()
        self._busy_until = max(now, self._busy_until) + self.cost.seconds(step)
        remaining = self._busy_until - now
        if remaining > 0:
            self.sleep(remaining)
        return {
            req.id: emulated_token(req.prompt_ids, len(req.output_ids), self.vocab_size)
            for req in step.sampling
        }
