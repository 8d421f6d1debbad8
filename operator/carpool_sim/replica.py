"""One simulated worker replica: the worker's own scheduler (carpool_replica.scheduler) driven in
virtual time, each step lasting what the profile says it costs (carpool_replica.steptime).

Contract: a `Replica` holds no scheduling rule of its own; admission, priorities, batch limits
and windows, KV admission (in blocks of `kv_block_tokens`, the profile's; `Replica.of_profile`),
preemption, chunked prefill, expiry and too-long are the shared scheduler's. It adds only time:
- time advances only through `run_until(t)`; a step planned at `t0` ends at `t0 + cost(step)`,
  and the step that finishes a prompt's prefill emits its first token at its end;
- a run of identical decode steps (`Scheduler.steady_decode_steps`) is simulated as one segment
  of k steps costed at its middle context, so the cost is per request, not per token;
  `interrupt(now)` cuts such a segment at the next step boundary when something arrives, and a
  segment never runs past the next batch-window close or queue-wait expiry;
- every request's fate goes to the `Recorder`: started (the step that begins its prefill),
  first token, finished, rejected (`too-long`, `queue-full` or `expired`); a request preempted
  by a higher priority (`Step.preempted`) starts and gets its first token once, however often
  it resumes.
"""

from __future__ import annotations

import math
from typing import Protocol

from carpool_replica.limits import EndpointLimits, LimitsDocument
from carpool_replica.profile import DEFAULT_KV_BLOCK_TOKENS, Profile
from carpool_replica.scheduler import Rejected, Scheduler, Step
from carpool_replica.scheduler import Request as SchedulerRequest
from carpool_replica.steptime import StepCost
from carpool_sim.trace import Request

# The emulated worker's tokens are deterministic too; here no token is ever an EOS.
_TOKEN = 0


class Recorder(Protocol):
    """Receives every request's fate; the run's metrics and Prometheus counters hang off it."""

    def started(self, request: Request, now: float) -> None: ...  # its prefill begins
    def first_token(self, request: Request, now: float) -> None: ...
    def finished(self, request: Request, now: float) -> None: ...
    def rejected(self, request: Request, now: float, reason: str) -> None: ...


class Replica:
    def __init__(
        self,
        cost: StepCost,
        limits: dict[str, EndpointLimits],
        recorder: Recorder,
        *,
        slots: int,
        max_seq_len: int,
        kv_cache_tokens: int,
        prefill_chunk_tokens: int,
        kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS,
    ):
        self.cost = cost
        self.recorder = recorder
        self._version = 0
        self.scheduler = Scheduler(
            self._document(limits),
            slots,
            max_seq_len,
            prefill_chunk_tokens,
            kv_cache_tokens=kv_cache_tokens,
            # Reservations round up to whole blocks as in the worker, and block ids stay few
            # (one id per token made the simulator twice as slow).
            kv_block_tokens=kv_block_tokens,
        )
        self.busy_seconds = 0.0
        # The segment in progress: `_steps` steps of `_step_seconds` from `_start`, or None.
        self._segment: Step | None = None
        self._start = 0.0
        self._step_seconds = 0.0
        self._steps = 0
        self._wake: float | None = None  # when an idle replica must look at its queues again

    @classmethod
    def of_profile(
        cls, profile: Profile, limits: dict[str, EndpointLimits], recorder: Recorder
    ) -> Replica:
        """A replica shaped as the profiled worker: its slots, context, KV pool and blocks,
        prefill chunk and step costs."""
        return cls(
            StepCost(profile),
            limits,
            recorder,
            slots=profile.max_batch_size,
            max_seq_len=profile.max_seq_len,
            kv_cache_tokens=profile.kv_cache_tokens,
            prefill_chunk_tokens=profile.prefill_chunk_tokens,
            kv_block_tokens=profile.kv_block_tokens,
        )

    def _document(self, limits: dict[str, EndpointLimits]) -> LimitsDocument:
        self._version += 1
        return LimitsDocument(self._version, next(iter(limits)), dict(limits))

    # -- what the pool sees ------------------------------------------------------------------

    @property
    def next_event(self) -> float | None:
        if self._segment is not None:
            return self._start + self._steps * self._step_seconds
        return self._wake

    def waiting(self, endpoint: str | None = None) -> int:
        counts = self.scheduler.counts()
        if endpoint is not None:
            return counts.get(endpoint, (0, 0))[0]
        return sum(w for w, _ in counts.values())

    def running_count(self, endpoint: str | None = None) -> int:
        if endpoint is not None:
            return self.scheduler.counts().get(endpoint, (0, 0))[1]
        return len(self.scheduler.running)

    def outstanding(self, endpoint: str) -> int:
        waiting, running = self.scheduler.counts().get(endpoint, (0, 0))
        return waiting + running

    def busy_seconds_at(self, now: float) -> float:
        """GPU-busy time so far, counting the part of the segment in progress before `now`."""
        if self._segment is not None:
            return self.busy_seconds + max(0.0, min(now, self.next_event) - self._start)
        return self.busy_seconds

    @property
    def idle(self) -> bool:
        return self._segment is None and not self.scheduler.running and self.waiting() == 0

    # -- inputs ------------------------------------------------------------------------------

    def submit(self, request: Request, now: float) -> None:
        """Queue a request that arrives at `now` (the caller has run the replica to `now`)."""
        try:
            self.scheduler.submit(
                SchedulerRequest(
                    prompt_ids=range(request.prompt_tokens),
                    max_tokens=request.output_tokens,
                    endpoint=request.endpoint,
                    arrival=request.arrival_seconds,
                    sink=request,
                )
            )
        except Rejected as rejection:
            reason = "too-long" if rejection.status == 400 else "queue-full"
            self.recorder.rejected(request, now, reason)
            return
        self.interrupt(now)

    def set_limits(self, limits: dict[str, EndpointLimits], now: float) -> None:
        merged = dict(self.scheduler.limits.endpoints) | dict(limits)
        self.scheduler.apply_limits(self._document(merged))
        self.interrupt(now)

    def take_waiting(self) -> list[Request]:
        """Hand back every queued request (a draining pod's queue goes to the other pods)."""
        return [req.sink for req in self.scheduler.take_waiting()]

    def interrupt(self, now: float) -> None:
        """Make the replica reconsider its queues at the first step boundary after `now`."""
        if self._segment is None:
            self._plan(now)
            return
        if self._steps > 1:
            done = max(1, math.ceil((now - self._start) / self._step_seconds - 1e-9))
            self._steps = min(self._steps, done)

    def run_until(self, now: float) -> None:
        """Complete every segment that ends at or before `now`, planning the next as it goes."""
        while True:
            if self._segment is not None:
                end = self._start + self._steps * self._step_seconds
                if end > now:
                    return
                self._complete(end)
                self._plan(end)
            elif self._wake is not None and self._wake <= now:
                self._plan(self._wake)
            else:
                return

    # -- the engine loop, in virtual time ------------------------------------------------------

    def _complete(self, end: float) -> None:
        step, self._segment = self._segment, None
        self.busy_seconds += end - self._start
        tokens = {req.id: _TOKEN for req in step.sampling}
        emitted, finished = self.scheduler.complete(step, tokens, repeat=self._steps)
        for req, _ in emitted:
            if len(req.output_ids) == 1:
                self.recorder.first_token(req.sink, end)
        for req in finished:
            self.recorder.finished(req.sink, end)

    def _plan(self, now: float) -> None:
        self._wake = None
        step = self.scheduler.schedule(now)
        for req in step.expired:
            self.recorder.rejected(req.sink, now, "expired")
        for req in step.started:
            self.recorder.started(req.sink, now)
        deadline = self.scheduler.next_deadline(now)
        if not step.has_work:
            self._wake = deadline
            return
        steps = self.scheduler.steady_decode_steps(step)
        seconds = self.cost.seconds(step, context_ahead=(steps - 1) / 2)
        if steps > 1 and deadline is not None:
            steps = max(1, min(steps, math.ceil((deadline - now) / seconds)))
            seconds = self.cost.seconds(step, context_ahead=(steps - 1) / 2)
        self._segment, self._start, self._step_seconds, self._steps = step, now, seconds, steps
