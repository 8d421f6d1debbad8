"""Iteration-level scheduling over per-endpoint queues: pure Python, no torch, no clock reads.

Contract: a :class:`Scheduler` owns the waiting queues, the running set, the slots and the KV
budget. It is the one model of a replica's rules: the worker's engine drives it with the model's
(or an emulated) step, the simulator drives it in virtual time. ``submit`` queues a request or
raises :class:`Rejected` (404 unknown endpoint, 400 too long, 429 queue full);
``schedule(now)`` returns the next :class:`Step`: requests that left (cancelled, or past their
endpoint's ``maxQueueWaitMilliseconds``: 429), requests preempted, requests admitted into
slots, the prefill chunks and the decode batch; ``complete(step, tokens)`` records the sampled
tokens and frees the slots and blocks of finished requests. The rules:

- Higher ``priority`` endpoints are admitted first; within an endpoint, first come first served.
- A request is too long (400) when its prompt plus ``max_tokens`` exceeds the context
  (``max_seq_len``) or the whole KV budget; it is never queued.
- KV admission: the cache is ``kv_cache_tokens // kv_block_tokens`` blocks, ids ``0..n-1``. An
  admitted request takes the blocks for its prompt plus ``max_tokens`` (``Request.blocks``)
  and gives them back when it leaves (finished, cancelled, failed or preempted). When the head
  of the highest-priority waiting queue does not fit, even by preemption, admission stops for
  this step, so lower priorities never overtake it. (A slot cache is the case of one block per
  slot.)
- Preemption: a higher priority never waits more than one step for blocks or a slot held by
  lower priorities. When a waiting head is ready (its window rule is met, its endpoint has
  batch room) but no slot or too few blocks are free, running requests of strictly lower
  priority are preempted, lowest priority first and most recently admitted first among equals,
  until it fits; nobody is preempted when all of them would not make room. A preempted
  request (``Step.preempted``) gives back its slot and blocks, keeps its outputs and its
  arrival time, and waits at the front of its queue; admitted again (not in the same step),
  it prefills its prompt and outputs again (``Request.prefill_ids``) and carries on.
- A waiting request expires (429) past its endpoint's ``maxQueueWaitMilliseconds``, unless it
  has produced a token: a preempted request whose client is streaming waits as long as it must.
- An endpoint never runs more than ``maxBatchSize`` requests at once.
- A waiting request is admitted once its endpoint's queue can fill the endpoint's free batch
  room, or once the oldest of them has waited ``batchWindowMilliseconds``; while a
  higher-priority endpoint gathers its batch, the slots it would take are held for it.
- Each step decodes every running request that has its ``prefill_ids`` in the cache, and
  prefills at most ``prefill_chunk_tokens`` tokens (long prompts go in chunks), so a long prompt
  never stalls the decodes running beside it. Both go in priority order, then arrival order.
- A cancelled request leaves at the next step and its slot is free for that step's admissions.
- Limits change at any time; endpoints dropped from the document stop taking requests but
  finish the ones they hold.

``steady_decode_steps(step)`` says how many identical decode-only steps follow (nothing to
prefill, nobody finishing sooner), and ``complete(step, tokens, repeat=k)`` records k of them at
once: the simulator's fast-forward over a run of decode steps.

The engine calls all of this under one lock; only ``Request.cancel`` is safe from any thread.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from carpool_replica.limits import EndpointLimits, LimitsDocument

_ids = itertools.count(1)


class Rejected(Exception):
    """A request the worker will not serve; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class StaleLimits(Exception):
    """A limits document older than the one in force."""


@dataclass(eq=False)
class Request:
    """One generation request, as the scheduler and the runner see it.

    ``prefill_ids`` are the tokens prefill must put in the cache before decoding: the prompt,
    or, after a preemption, the prompt plus every token generated so far (the request's KV was
    dropped and is recomputed). ``num_prefilled`` counts the leading ``prefill_ids`` in the
    cache. The runner relies on these invariants:

    - a prefill chunk ``(req, start, length)`` of ``Step.prefill`` covers
      ``req.prefill_ids[start:start + length]`` at positions ``start .. start + length - 1``;
    - ``prefill_done`` means all of ``prefill_ids`` is in the cache;
    - a decode row feeds ``req.output_ids[-1]`` at position ``req.context_len - 1``;
    - the chunk that completes ``prefill_ids`` samples the next output token; for a resumed
      request that is a new token appended to ``output_ids``, so greedy output is the same as
      that of a run never preempted.

    ``prompt_ids`` stays the original prompt: usage and prompt-token counts are taken from it.

    While it runs, a request holds a batch row ``slot`` and the KV blocks ``blocks``: block
    ``i`` holds positions ``i * B .. (i + 1) * B - 1`` (``B`` is the scheduler's
    ``kv_block_tokens``), enough for the prompt plus ``max_tokens``. It holds neither while it
    waits.
    """

    # Token ids; the simulator passes a range() of the right length, which costs no memory.
    prompt_ids: Sequence[int]
    max_tokens: int
    endpoint: str
    arrival: float
    temperature: float = 0.0
    top_p: float = 1.0
    sink: Any = None  # called by the engine with each event; see engine.py
    id: int = field(default_factory=lambda: next(_ids))
    slot: int | None = None
    blocks: list[int] = field(default_factory=list)  # KV block ids, in position order
    # When its first prefill chunk was scheduled: the end of its queue wait (arrival to here)
    # and the start of its service time (here to the first token). Prompts admitted together
    # take turns for a step's prefill budget, and that turn-taking is queueing too.
    prefill_started_at: float | None = None
    num_prefilled: int = 0
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    cancel_reason: str = "cancelled"
    preemptions: int = 0  # times it was preempted; admitted again, it resumes
    prefill_ids: Sequence[int] = field(init=False)

    def __post_init__(self) -> None:
        self.prefill_ids = self.prompt_ids

    def cancel(self, reason: str = "cancelled") -> None:
        """Asks the request to leave at the next step; ``reason`` becomes its finish reason
        (``stop`` when the caller matched a stop string, ``cancelled`` for a disconnect)."""
        # Plain attribute writes are atomic in CPython; the scheduler sees them at the next step.
        # The first reason wins: a stop-string match followed by the stream closing stays "stop".
        if not self.cancelled:
            self.cancel_reason = reason
            self.cancelled = True

    @property
    def prefill_done(self) -> bool:
        return self.num_prefilled >= len(self.prefill_ids)

    @property
    def context_len(self) -> int:
        """Tokens in the cache, plus the one a decode row feeds once prefill is done."""
        recomputed = len(self.prefill_ids) - len(self.prompt_ids)  # outputs among prefill_ids
        return self.num_prefilled + len(self.output_ids) - recomputed


@dataclass
class Step:
    cancelled: list[Request] = field(default_factory=list)
    expired: list[Request] = field(default_factory=list)
    admitted: list[Request] = field(default_factory=list)  # new, and resumed after preemption
    # Requests whose prefill begins in this step (never again after a preemption): their
    # queue wait ends here.
    started: list[Request] = field(default_factory=list)
    # Running requests sent back to wait (their slot and blocks taken for a higher priority).
    preempted: list[Request] = field(default_factory=list)
    prefill: list[tuple[Request, int, int]] = field(default_factory=list)  # (req, start, length)
    decode: list[Request] = field(default_factory=list)

    @property
    def has_work(self) -> bool:
        return bool(self.prefill or self.decode)

    @property
    def sampling(self) -> list[Request]:
        """The requests that get a token from this step: every decode row, and each prefill
        chunk that completes its ``prefill_ids``."""
        done = [r for r, start, length in self.prefill if start + length >= len(r.prefill_ids)]
        return done + self.decode


@dataclass
class EndpointQueue:
    limits: EndpointLimits
    waiting: deque = field(default_factory=deque)
    running: int = 0
    retired: bool = False


class Scheduler:
    def __init__(
        self,
        limits: LimitsDocument,
        num_slots: int,
        max_seq_len: int,
        prefill_chunk_tokens: int,
        eos_token_ids: tuple[int, ...] = (),
        kv_cache_tokens: int | None = None,
        kv_block_tokens: int | None = None,
    ):
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.prefill_chunk_tokens = max(1, prefill_chunk_tokens)
        self.eos_token_ids = frozenset(eos_token_ids)
        # Without a KV budget of its own, the cache is one block of max_seq_len per slot.
        self.kv_block_tokens = kv_block_tokens or max_seq_len
        self.kv_cache_tokens = (
            kv_cache_tokens if kv_cache_tokens is not None else num_slots * max_seq_len
        )
        self.num_blocks = self.kv_cache_tokens // self.kv_block_tokens
        # Block ids 0..num_blocks-1; taken from and given back at the end (a stack).
        self.free_blocks: list[int] = list(range(self.num_blocks - 1, -1, -1))
        self.free_slots: list[int] = list(range(num_slots - 1, -1, -1))
        self.running: list[Request] = []
        self.endpoints: dict[str, EndpointQueue] = {}
        self.limits = limits
        for name, lim in limits.endpoints.items():
            self.endpoints[name] = EndpointQueue(lim)

    # -- limits -----------------------------------------------------------------------------

    def apply_limits(self, doc: LimitsDocument) -> None:
        if doc.version < self.limits.version:
            raise StaleLimits(f"version {doc.version} is older than {self.limits.version}")
        for name, queue in self.endpoints.items():
            queue.retired = name not in doc.endpoints
        for name, lim in doc.endpoints.items():
            if name in self.endpoints:
                self.endpoints[name].limits = lim
                self.endpoints[name].retired = False
            else:
                self.endpoints[name] = EndpointQueue(lim)
        self.limits = doc
        self._drop_drained_endpoints()

    def _drop_drained_endpoints(self) -> None:
        for name in [n for n, q in self.endpoints.items() if q.retired]:
            queue = self.endpoints[name]
            if not queue.waiting and queue.running == 0:
                del self.endpoints[name]

    # -- requests ---------------------------------------------------------------------------

    def blocks_needed(self, req: Request) -> int:
        """KV blocks ``req`` holds while it runs: its prompt plus max_tokens, rounded up."""
        return -(-(len(req.prompt_ids) + req.max_tokens) // self.kv_block_tokens)

    def kv_need(self, req: Request) -> int:
        """KV tokens ``req`` reserves while it runs: prompt plus max_tokens, in whole blocks."""
        return self.blocks_needed(req) * self.kv_block_tokens

    def submit(self, req: Request) -> None:
        queue = self.endpoints.get(req.endpoint)
        if queue is None or queue.retired:
            raise Rejected(404, f"unknown endpoint {req.endpoint!r}")
        total = len(req.prompt_ids) + req.max_tokens
        if total > self.max_seq_len or self.blocks_needed(req) > self.num_blocks:
            limit = min(self.max_seq_len, self.kv_cache_tokens)
            raise Rejected(
                400,
                f"prompt ({len(req.prompt_ids)} tokens) plus max_tokens ({req.max_tokens}) "
                f"exceeds the context of {limit} tokens",
            )
        if len(queue.waiting) >= queue.limits.max_queue_length:
            raise Rejected(
                429,
                f"endpoint {req.endpoint!r} has {len(queue.waiting)} requests waiting, "
                f"its maxQueueLength",
                retry_after=1,
            )
        queue.waiting.append(req)

    def take_waiting(self) -> list[Request]:
        """Removes and returns every queued request never admitted (a draining replica hands its
        queue back); preempted ones stay, to finish where they started."""
        taken = []
        for queue in self.endpoints.values():
            taken += [req for req in queue.waiting if not req.preemptions]
            queue.waiting = deque(req for req in queue.waiting if req.preemptions)
        return taken

    def counts(self) -> dict[str, tuple[int, int]]:
        """Endpoint -> (waiting, running)."""
        return {name: (len(q.waiting), q.running) for name, q in self.endpoints.items()}

    @property
    def has_waiting(self) -> bool:
        return any(q.waiting for q in self.endpoints.values())

    # -- the step ---------------------------------------------------------------------------

    def schedule(self, now: float) -> Step:
        step = Step()
        self._leave(step, now)
        self._admit(step, now)
        budget = self.prefill_chunk_tokens
        by_priority = sorted(
            self.running, key=lambda r: (-self.endpoints[r.endpoint].limits.priority, r.arrival)
        )
        for req in by_priority:
            if req.prefill_done:
                step.decode.append(req)
            elif budget > 0:
                length = min(len(req.prefill_ids) - req.num_prefilled, budget)
                step.prefill.append((req, req.num_prefilled, length))
                budget -= length
                if req.prefill_started_at is None:
                    req.prefill_started_at = now
                    step.started.append(req)
        return step

    def _leave(self, step: Step, now: float) -> None:
        for req in [r for r in self.running if r.cancelled]:
            req.finish_reason = req.cancel_reason
            self._release(req)
            step.cancelled.append(req)
        for queue in self.endpoints.values():
            deadline = queue.limits.max_queue_wait_ms / 1000.0
            kept: deque = deque()
            for req in queue.waiting:
                if req.cancelled:
                    req.finish_reason = req.cancel_reason
                    step.cancelled.append(req)
                elif now - req.arrival > deadline and not req.output_ids:
                    req.finish_reason = "expired"
                    step.expired.append(req)
                else:
                    kept.append(req)
            queue.waiting = kept
        self._drop_drained_endpoints()

    def _admit(self, step: Step, now: float) -> None:
        free = len(self.free_slots)  # slots still to hand out, less those held for windows
        order = sorted(self.endpoints.values(), key=lambda queue: -queue.limits.priority)
        for queue in order:
            if not queue.waiting:
                continue
            room = max(0, queue.limits.max_batch_size - queue.running)
            if room == 0:
                continue
            window = queue.limits.batch_window_ms / 1000.0
            # The 1 ns tolerance makes a window that closes exactly now closed, whatever the
            # rounding of arrival + window (the simulator wakes at exactly that time).
            gathered = len(queue.waiting) >= room or now - queue.waiting[0].arrival >= window - 1e-9
            if not gathered:
                free -= min(room, free, len(queue.waiting))  # held while its window runs
                continue
            for _ in range(min(room, len(queue.waiting))):
                req = queue.waiting[0]
                if req in step.preempted:
                    return  # it waits for the next step, and lower priorities with it
                need = self.blocks_needed(req)
                if free == 0 or need > len(self.free_blocks):
                    freed = self._preempt_for(queue.limits.priority, need, free, step)
                    if freed is None:
                        return  # the head waits; lower priorities must not overtake it
                    free += freed
                queue.waiting.popleft()
                req.slot = self.free_slots.pop()
                cut = len(self.free_blocks) - need
                req.blocks = self.free_blocks[cut:][::-1]
                del self.free_blocks[cut:]
                queue.running += 1
                self.running.append(req)
                step.admitted.append(req)
                free -= 1

    def _priority(self, req: Request) -> int:
        return self.endpoints[req.endpoint].limits.priority

    def _preempt_for(self, priority: int, need: int, free: int, step: Step) -> int | None:
        """Preempts running requests of priorities below ``priority`` until a slot and ``need``
        blocks are free: lowest priority first, most recently admitted first among equals.
        Preempts nobody, and returns None, when all of them would not be enough; else returns
        how many slots it freed."""
        # self.running is in admission order: a later index was admitted more recently.
        eligible = [(i, r) for i, r in enumerate(self.running) if self._priority(r) < priority]
        eligible.sort(key=lambda ir: (self._priority(ir[1]), -ir[0]))
        victims = [r for _, r in eligible]
        blocks = len(self.free_blocks) + sum(len(r.blocks) for r in victims)
        if free + len(victims) == 0 or blocks < need:
            return None
        freed = 0
        for victim in victims:
            if free + freed > 0 and len(self.free_blocks) >= need:
                break
            self._preempt(victim, step)
            freed += 1
        return freed

    def _preempt(self, req: Request, step: Step) -> None:
        """Takes ``req``'s slot and blocks back; it keeps its outputs and waits at the front of
        its queue to prefill its prompt and outputs again (``prefill_ids``)."""
        self._release(req)
        req.slot = None
        req.preemptions += 1
        req.prefill_ids = [*req.prompt_ids, *req.output_ids]
        req.num_prefilled = 0
        self.endpoints[req.endpoint].waiting.appendleft(req)
        step.preempted.append(req)

    def steady_decode_steps(self, step: Step) -> int:
        """How many steps identical to ``step`` can run back to back: 1 unless it only decodes,
        else until the first of its requests reaches max_tokens (an EOS can end one sooner; the
        caller that fast-forwards generates none)."""
        if step.prefill or not step.decode:
            return 1
        return max(1, min(r.max_tokens - len(r.output_ids) for r in step.decode))

    def complete(
        self, step: Step, tokens: dict[int, int], repeat: int = 1
    ) -> tuple[list[tuple[Request, int]], list[Request]]:
        """Records the token sampled for each request id (``repeat`` times, for a run of
        identical decode steps; see ``steady_decode_steps``).

        Returns the (request, token) pairs to send, in order, and the requests that finished.
        """
        emitted, finished = [], []
        for req, _, length in step.prefill:
            req.num_prefilled += length
        for req in [r for r, _, _ in step.prefill] + step.decode:
            if req.id not in tokens or req.finish_reason is not None:
                continue
            token = tokens[req.id]
            if repeat > 1:
                req.output_ids.extend([token] * (repeat - 1))
            req.output_ids.append(token)
            emitted.append((req, token))
            if token in self.eos_token_ids:
                req.finish_reason = "stop"
            elif len(req.output_ids) >= req.max_tokens:
                req.finish_reason = "length"
            if req.finish_reason is not None:
                self._release(req)
                finished.append(req)
        return emitted, finished

    @property
    def kv_reserved(self) -> int:
        """KV tokens held by admitted requests: the blocks handed out, in tokens."""
        return (self.num_blocks - len(self.free_blocks)) * self.kv_block_tokens

    def _release(self, req: Request) -> None:
        self.running.remove(req)
        self.free_slots.append(req.slot)
        self.free_blocks.extend(reversed(req.blocks))
        req.blocks = []
        queue = self.endpoints.get(req.endpoint)
        if queue is not None:
            queue.running -= 1

    def next_deadline(self, now: float) -> float | None:
        """The soonest time after ``now`` that a window closes or a wait expires: when to
        schedule again if idle (a window already closed was acted on by the last schedule)."""
        times = []
        for queue in self.endpoints.values():
            if queue.waiting:
                times.append(queue.waiting[0].arrival + queue.limits.batch_window_ms / 1000.0)
                # The oldest that can expire: preempted requests that have streamed never do.
                oldest = next((r for r in queue.waiting if not r.output_ids), None)
                if oldest is not None:
                    times.append(oldest.arrival + queue.limits.max_queue_wait_ms / 1000.0 + 1e-3)
        future = [t for t in times if t > now]
        return min(future) if future else None

    @property
    def kv_tokens_in_use(self) -> int:
        return sum(r.context_len for r in self.running)
