"""The emulated GPU: a runner that takes a step's time from a measured profile instead of running
a model. It is a stand-in for GPU time only; the scheduler, the engine loop, the HTTP API, the
limits API and the metrics are the worker's own.

Contract: ``EmulatedRunner(profile, vocab_size)`` has the runner interface the engine drives
(``num_slots``, ``max_seq_len``, ``kv_cache_tokens``, ``kv_block_tokens``, ``warmup()``,
``execute(step) -> {request id: token}``), sized by the profile (its ``max_batch_size`` sequences
of up to ``max_seq_len`` tokens, out of its KV pool). ``execute`` blocks for
``carpool_replica.steptime.StepCost`` of the step, the same cost the simulator charges, and
returns deterministic token ids (a function of the prompt and the position). The worker gives
an emulated engine no EOS ids, so an emulated request generates exactly its ``max_tokens``, as a
simulated one does.

A step ends at a deadline on a running clock, as steps queued on a GPU do. A step that
continues running work (it decodes, or prefills a later chunk of a prompt) starts where the
previous one ended, even when this host launched it late: the host's scheduling delays are not
GPU time, so they are forgiven, up to ``MAX_HOST_LAG_SECONDS`` (past that the host was
overloaded, or the step did not follow the last at once, and the step starts now). A step
after an idle engine starts now. So the emulated throughput is the profile's even on a busy
CPU, and sleeping costs no CPU, so many emulated GPUs share a core.
"""

from __future__ import annotations

import time

from carpool_replica.profile import Profile
from carpool_replica.scheduler import Step
from carpool_replica.steptime import StepCost

MAX_HOST_LAG_SECONDS = 0.05


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

    @property
    def kv_cache_tokens(self) -> int:
        return self.profile.kv_cache_tokens

    @property
    def kv_block_tokens(self) -> int:
        return self.profile.kv_block_tokens

    def warmup(self) -> None:
        """Nothing to compile or capture."""

    def execute(self, step: Step) -> dict[int, int]:
        now = self.clock()
        continuing = bool(step.decode) or any(start > 0 for _, start, _ in step.prefill)
        forgiven = continuing and now - self._busy_until <= MAX_HOST_LAG_SECONDS
        start = self._busy_until if forgiven else max(now, self._busy_until)
        self._busy_until = start + self.cost.seconds(step)
        remaining = self._busy_until - now
        if remaining > 0:
            self.sleep(remaining)
        return {
            req.id: emulated_token(req.prompt_ids, len(req.output_ids), self.vocab_size)
            for req in step.sampling
        }
