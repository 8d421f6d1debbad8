"""One simulated worker replica: per-endpoint queues feeding a continuous-batching engine.

Contract: a `Replica` follows the worker scheduler's rules (carpool_worker.scheduler):
- higher `priority` endpoints are admitted first, first come first served within one;
- an endpoint never runs more than its `max_batch_size` requests; the replica never runs more
  than `slots`, nor reserves more KV than `kv_cache_tokens` (prompt + output per request);
- a waiting request is admitted once its queue can fill the endpoint's free room or its oldest
  request has waited the batch window; while a higher-priority endpoint gathers, the slots it
  would take are held for it;
- a request waiting longer than its endpoint's max wait is rejected (expired);
- each step decodes every running request whose prompt is cached and prefills at most
  `prefill_token_budget` prompt tokens (chunked prefill), highest priority first; the step
  lasts `step_seconds(decoding, mean context) + prefill_seconds(prefilled tokens)`; the
  step that finishes a prompt's prefill emits its first token.

Time advances only through `run_until(t)`. Runs of identical decode steps (nothing to admit or
prefill) are simulated as one segment of k steps, so the cost is per request, not per step;
`interrupt(now)` cuts such a segment at the next step boundary when something arrives.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from carpool_sim.steptimes import StepTimes
from carpool_sim.trace import Request


class Recorder(Protocol):
    """Receives every request's fate; the run's metrics and Prometheus counters hang off it."""

    def admitted(self, request: Request, now: float) -> None: ...
    def first_token(self, request: Request, now: float) -> None: ...
    def finished(self, request: Request, now: float) -> None: ...
    def rejected(self, request: Request, now: float, reason: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    """One endpoint's limits on a worker (the limits document's five fields, in seconds)."""

    priority: int
    max_batch_size: int
    batch_window_seconds: float
    max_queue_wait_seconds: float
    max_queue_length: int


class _Running:
    __slots__ = ("request", "priority", "prefilled", "generated")

    def __init__(self, request: Request, priority: int):
        self.request = request
        self.priority = priority
        self.prefilled = 0
        self.generated = 0

    @property
    def context(self) -> int:
        return self.prefilled + self.generated


class Replica:
    def __init__(
        self,
        steps: StepTimes,
        limits: dict[str, Limits],
        recorder: Recorder,
        *,
        slots: int,
        kv_cache_tokens: int,
        prefill_token_budget: int,
    ):
        self.steps = steps
        self.limits = dict(limits)
        self.recorder = recorder
        self.slots = slots
        self.kv_cache_tokens = kv_cache_tokens
        self.prefill_token_budget = max(1, prefill_token_budget)
        self.queues: dict[str, deque[Request]] = {name: deque() for name in limits}
        self.running: list[_Running] = []
        self.running_by_endpoint: dict[str, int] = dict.fromkeys(limits, 0)
        self.kv_reserved = 0
        self.busy_seconds = 0.0
        # The segment in progress: k steps of `step_seconds` from `start`, or None when idle.
        self._start = 0.0
        self._step_seconds = 0.0
        self._steps = 0
        self._prefill: list[tuple[_Running, int]] = []
        self._decode: list[_Running] = []
        self._busy = False
        self._wake: float | None = None  # when an idle replica must look at its queues again

    # -- what the pool sees ------------------------------------------------------------------

    @property
    def next_event(self) -> float | None:
        return self._start + self._steps * self._step_seconds if self._busy else self._wake

    def waiting(self, endpoint: str | None = None) -> int:
        if endpoint is not None:
            return len(self.queues.get(endpoint, ()))
        return sum(len(q) for q in self.queues.values())

    def running_count(self, endpoint: str | None = None) -> int:
        if endpoint is not None:
            return self.running_by_endpoint.get(endpoint, 0)
        return len(self.running)

    def outstanding(self, endpoint: str) -> int:
        return self.waiting(endpoint) + self.running_count(endpoint)

    def busy_seconds_at(self, now: float) -> float:
        """GPU-busy time so far, counting the part of the segment in progress before `now`."""
        if self._busy:
            return self.busy_seconds + max(0.0, min(now, self.next_event) - self._start)
        return self.busy_seconds

    @property
    def idle(self) -> bool:
        return not self._busy and not self.running and self.waiting() == 0

    # -- inputs ------------------------------------------------------------------------------

    def submit(self, request: Request, now: float) -> None:
        """Queue a request that arrives at `now` (the caller has run the replica to `now`)."""
        limits = self.limits[request.endpoint]
        queue = self.queues[request.endpoint]
        if request.prompt_tokens + request.output_tokens > self.kv_cache_tokens:
            self.recorder.rejected(request, now, "too-long")
            return
        if len(queue) >= limits.max_queue_length:
            self.recorder.rejected(request, now, "queue-full")
            return
        queue.append(request)
        self.interrupt(now)

    def set_limits(self, limits: dict[str, Limits], now: float) -> None:
        self.limits.update(limits)
        self.interrupt(now)

    def take_waiting(self) -> list[Request]:
        """Hand back every queued request (a draining pod's queue goes to the other pods)."""
        taken = [r for q in self.queues.values() for r in q]
        for q in self.queues.values():
            q.clear()
        return taken

    def interrupt(self, now: float) -> None:
        """Make the replica reconsider its queues at the first step boundary after `now`."""
        if not self._busy:
            self._plan(now)
            return
        if self._steps > 1:
            done = max(1, math.ceil((now - self._start) / self._step_seconds - 1e-9))
            self._steps = min(self._steps, done)

    def run_until(self, now: float) -> None:
        """Complete every segment that ends at or before `now`, planning the next as it goes."""
        while True:
            if self._busy:
                end = self._start + self._steps * self._step_seconds
                if end > now:
                    return
                self._complete(end)
                self._plan(end)
            elif self._wake is not None and self._wake <= now:
                self._plan(self._wake)
            else:
                return

    # -- the engine --------------------------------------------------------------------------

    def _complete(self, end: float) -> None:
        self.busy_seconds += end - self._start
        self._busy = False
        for seq, tokens in self._prefill:
            seq.prefilled += tokens
            if seq.prefilled >= seq.request.prompt_tokens:
                seq.generated = 1
                self.recorder.first_token(seq.request, end)
        for seq in self._decode:
            seq.generated += self._steps
        finished = [s for s in self._prefill_and_decode() if s.generated >= s.request.output_tokens]
        for seq in finished:
            self.running.remove(seq)
            self.running_by_endpoint[seq.request.endpoint] -= 1
            self.kv_reserved -= seq.request.prompt_tokens + seq.request.output_tokens
            self.recorder.finished(seq.request, end)
        self._prefill, self._decode = [], []

    def _prefill_and_decode(self) -> list[_Running]:
        return [s for s, _ in self._prefill] + self._decode

    def _expire(self, now: float) -> None:
        for name, queue in self.queues.items():
            deadline = self.limits[name].max_queue_wait_seconds
            while queue and now - queue[0].arrival_seconds > deadline:
                self.recorder.rejected(queue.popleft(), now, "expired")

    def _admit(self, now: float) -> None:
        free = self.slots - len(self.running)
        for name in sorted(self.queues, key=lambda n: -self.limits[n].priority):
            queue, limits = self.queues[name], self.limits[name]
            if not queue or free <= 0:
                continue
            room = max(0, limits.max_batch_size - self.running_by_endpoint[name])
            if room == 0:
                continue
            take = min(room, free, len(queue))
            gathered = (
                len(queue) >= room
                or now - queue[0].arrival_seconds >= limits.batch_window_seconds - 1e-9
            )
            if not gathered:
                free -= take  # held for this endpoint while its window runs
                continue
            for _ in range(take):
                request = queue[0]
                need = request.prompt_tokens + request.output_tokens
                if self.kv_reserved + need > self.kv_cache_tokens:
                    return  # the head waits for KV; lower priorities must not overtake it
                queue.popleft()
                self.kv_reserved += need
                seq = _Running(request, limits.priority)
                self.running.append(seq)
                self.running_by_endpoint[name] += 1
                self.recorder.admitted(request, now)
            free -= take

    def _next_deadline(self, now: float) -> float | None:
        """The soonest future time a batch window closes or a wait expires."""
        times = []
        for name, queue in self.queues.items():
            if queue:
                head = queue[0].arrival_seconds
                times.append(head + self.limits[name].batch_window_seconds)
                times.append(head + self.limits[name].max_queue_wait_seconds + 1e-3)
        future = [t for t in times if t > now]
        return min(future) if future else None

    def _plan(self, now: float) -> None:
        self._wake = None
        self._expire(now)
        self._admit(now)
        budget = self.prefill_token_budget
        prefill: list[tuple[_Running, int]] = []
        decode: list[_Running] = []
        prefill_tokens = 0
        # Stable sort: admission order breaks priority ties, as arrival order does in the worker.
        for seq in sorted(self.running, key=lambda s: -s.priority):
            remaining = seq.request.prompt_tokens - seq.prefilled
            if remaining <= 0:
                decode.append(seq)
            elif budget > 0:
                chunk = min(remaining, budget)
                prefill.append((seq, chunk))
                prefill_tokens += chunk
                budget -= chunk
        deadline = self._next_deadline(now)
        if not prefill and not decode:
            self._wake = deadline
            return
        steps = 1
        if not prefill:
            # Nothing changes until a request finishes or a queue deadline passes: many steps.
            steps = min(s.request.output_tokens - s.generated for s in decode)
        context = sum(s.context for s in decode) / len(decode) if decode else 0.0
        step = self.steps.prefill_seconds(prefill_tokens) if prefill_tokens else 0.0
        if decode:
            step += self.steps.step_seconds(len(decode), context + (steps - 1) / 2)
        if steps > 1 and deadline is not None:
            steps = max(1, min(steps, math.ceil((deadline - now) / step)))
        self._start, self._step_seconds, self._steps = now, step, steps
        self._prefill, self._decode = prefill, decode
        self._busy = True
