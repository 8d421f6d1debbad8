"""The engine: a thread that turns scheduler steps into model steps and events. No HTTP.

Contract: ``Engine(runner, limits, metrics)``; ``start()`` launches the step loop.
``submit(request)`` queues a :class:`~carpool_worker.scheduler.Request` (raising
:class:`~carpool_worker.scheduler.Rejected` at once when it cannot be queued); from then on the
request's ``sink`` is called, from the engine thread, with :class:`TokenEvent` for each token and
exactly one closing :class:`DoneEvent` (finish reason ``stop``, ``length``, ``cancelled``,
``expired`` with a 429 ``Rejected`` attached, or ``error`` with the reason in ``error``).
Events go out once per step, in order. A sink with a ``hub`` attribute is not called from the
engine thread: the engine hands each hub all of the step's events for its sinks in one
``hub.post([(sink, event), ...])`` call, and the hub calls those sinks in that order on its own
thread (the HTTP layer's event loop: one thread-safe hand-over per step, not one per token).
A request whose processing fails (the runner raises) ends alone with ``error``: the step is run
again one request at a time, and every other request of the step keeps its token.
``apply_limits(doc)`` swaps the limits between two steps (raising ``StaleLimits`` for an older
version); requests in flight are kept. ``request.cancel()`` from any thread makes the request
leave at the next step.
The runner only needs ``execute(step) -> {request id: token}``, ``num_slots``, ``max_seq_len``,
``kv_cache_tokens`` and ``kv_block_tokens`` (its KV pool and block size, which the scheduler
hands out), so tests can drive the engine with a stand-in or the real tiny model.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass

from carpool_replica.scheduler import Rejected, Request, Scheduler, Step

from .limits import LimitsDocument
from .metrics import WorkerMetrics, observe_each

log = logging.getLogger(__name__)

ENGINE_SWITCH_INTERVAL_SECONDS = 0.0005


@dataclass(frozen=True)
class TokenEvent:
    token_id: int


@dataclass(frozen=True)
class DoneEvent:
    reason: str
    rejection: Rejected | None = None
    error: str | None = None  # why the request failed, for reason "error"


OUTCOME = {"stop": "ok", "length": "ok", "cancelled": "cancelled", "expired": "rejected"}


class Engine:
    def __init__(
        self,
        runner,
        limits: LimitsDocument,
        metrics: WorkerMetrics | None = None,
        prefill_token_budget: int = 512,
        eos_token_ids: tuple[int, ...] = (),
        clock=time.monotonic,
    ):
        self.runner = runner
        self.metrics = metrics or WorkerMetrics()
        self.clock = clock
        self.scheduler = Scheduler(
            limits,
            runner.num_slots,
            runner.max_seq_len,
            prefill_token_budget,
            eos_token_ids,
            kv_cache_tokens=runner.kv_cache_tokens,
            kv_block_tokens=runner.kv_block_tokens,
        )
        self.metrics.set_limits(limits)
        self.metrics.kv_capacity.set(self.scheduler.kv_cache_tokens)
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._last_token_at: dict[int, float] = {}
        self._errors: dict[int, str] = {}  # request id -> why it failed, until it is closed
        self._outbox: list[tuple[Request, TokenEvent | DoneEvent]] = []  # this step's events

    # -- API used by the HTTP layer and the tests --------------------------------------------

    @property
    def limits(self) -> LimitsDocument:
        return self.scheduler.limits

    def start(self) -> None:
        # The step loop waits on the device with the GIL released; at Python's default 5 ms
        # switch interval the HTTP thread may keep the GIL that long after each wait, which
        # stretches every step under load. A 0.5 ms interval bounds that delay.
        sys.setswitchinterval(ENGINE_SWITCH_INTERVAL_SECONDS)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def submit(self, req: Request) -> None:
        with self._cond:
            try:
                self.scheduler.submit(req)
            except Rejected as exc:
                # A request the client got wrong (too long for the context) is not a fault of
                # the worker: alerts on outcome="error" must not fire on it.
                outcome = "rejected" if exc.status == 429 else "invalid"
                if req.endpoint in self.scheduler.endpoints:
                    self.metrics.requests.labels(req.endpoint, outcome).inc()
                raise
            self._cond.notify_all()

    def wake(self) -> None:
        """Have the loop look again now (after a cancel, say) instead of at its next deadline."""
        with self._cond:
            self._cond.notify_all()

    def apply_limits(self, doc: LimitsDocument) -> int:
        with self._cond:
            self.scheduler.apply_limits(doc)
            self.metrics.set_limits(doc)
            self._cond.notify_all()
        log.info("limits version %d applied", doc.version)
        return doc.version

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self.clock()
                step = self.scheduler.schedule(now)
                if not step.has_work and not (step.cancelled or step.expired):
                    wake_at = self.scheduler.next_deadline(now)
                    timeout = None if wake_at is None else max(wake_at - now, 0.0005)
                    self._cond.wait(timeout)
                    continue
                counts = self.scheduler.counts()
            self.metrics.set_queue_counts(counts)
            self._after_schedule(step, now)
            if step.has_work:
                self._run_step(step)

    def _after_schedule(self, step: Step, now: float) -> None:
        m = self.metrics
        # A request starts once (never again after a preemption), so its queue wait and its
        # prompt are counted once, at the same point: the PromQL divides one by the other.
        for req in step.started:
            m.queue_wait.labels(req.endpoint).observe(now - req.arrival)
            m.prompt_tokens.labels(req.endpoint).inc(len(req.prompt_ids))
            m.prompt_length.labels(req.endpoint).observe(len(req.prompt_ids))
        for req in step.preempted:
            m.preemptions.labels(req.endpoint).inc()
        for req in step.cancelled:
            error = self._errors.pop(req.id, None)
            self._close(req, DoneEvent(req.finish_reason or "cancelled", error=error), now)
        for req in step.expired:
            waited_ms = int((now - req.arrival) * 1000)
            rejection = Rejected(
                429,
                f"waited {waited_ms} ms in endpoint {req.endpoint!r}, past its "
                f"maxQueueWaitMilliseconds",
                retry_after=1,
            )
            self._close(req, DoneEvent("expired", rejection), now)
        self._flush()

    def _run_step(self, step: Step) -> None:
        started = self.clock()
        tokens = self._execute(step)
        now = self.clock()
        with self._cond:
            emitted, finished = self.scheduler.complete(step, tokens)
            counts = self.scheduler.counts()
            kv_in_use = self.scheduler.kv_tokens_in_use
            running = list(self.scheduler.running)
        m = self.metrics
        m.step_duration.observe(now - started)
        m.batch_size.observe(len(step.decode) + len(step.prefill))
        m.kv_usage.set(kv_in_use / self.scheduler.kv_cache_tokens)
        m.observe_step(now - started, [*step.decode, *(r for r, _, _ in step.prefill)], running)
        m.set_queue_counts(counts)
        self._emit_tokens(emitted, now)
        for req in finished:
            self._close(req, DoneEvent(req.finish_reason), now)
        self._flush()

    def _execute(self, step: Step) -> dict[int, int]:
        """The step's tokens. When the batch fails, each request runs again alone, so only the
        one that fails leaves (with ``error`` at the next step) and the others keep their tokens.

        Running a request again is safe: its prefill chunk or decode row writes the same keys and
        values at the same cache positions as the failed batch did.
        """
        try:
            return self.runner.execute(step)
        except Exception as exc:
            log.warning("engine step failed (%s); running its requests one at a time", exc)
        tokens: dict[int, int] = {}
        alone = [(r, Step(prefill=[(r, s, n)])) for r, s, n in step.prefill]
        alone += [(r, Step(decode=[r])) for r in step.decode]
        for req, one in alone:
            try:
                tokens.update(self.runner.execute(one))
            except Exception as exc:
                log.exception("request %d failed in the engine; it alone is ended", req.id)
                self._errors[req.id] = f"{type(exc).__name__}: {exc}"[:500]
                req.cancel("error")
        return tokens

    def _emit_tokens(self, emitted: list[tuple[Request, int]], now: float) -> None:
        """Records the step's tokens in the latency histograms and the token counter, in one
        batch per endpoint (``metrics.observe_each``: the same counts and sums as observing each
        token in turn), and queues their events."""
        last_token_at = self._last_token_at
        outbox = self._outbox
        by_endpoint: dict[str, tuple[list, list, list]] = {}  # ttft, service, inter-token
        for req, token in emitted:
            per = by_endpoint.get(req.endpoint)
            if per is None:
                per = by_endpoint[req.endpoint] = ([], [], [])
            last = last_token_at.get(req.id)
            if last is None:
                per[0].append(now - req.arrival)
                per[1].append(now - req.prefill_started_at)  # a first token ends a prefill
            else:
                per[2].append(now - last)
            last_token_at[req.id] = now
            outbox.append((req, TokenEvent(token)))
        m = self.metrics
        for endpoint, (ttft, service, inter) in by_endpoint.items():
            if ttft:
                observe_each(m.ttft.labels(endpoint), ttft)
                observe_each(m.service_time.labels(endpoint), service)
            if inter:
                observe_each(m.inter_token.labels(endpoint), inter)
            m.generated_tokens.labels(endpoint).inc(len(ttft) + len(inter))

    def _close(self, req: Request, event: DoneEvent, now: float) -> None:
        had_token = self._last_token_at.pop(req.id, None) is not None
        outcome = OUTCOME.get(event.reason, "error")
        self.metrics.requests.labels(req.endpoint, outcome).inc()
        if outcome == "cancelled":
            stage = "after_first_token" if had_token else "before_first_token"
            self.metrics.abandoned.labels(req.endpoint, stage).inc()
        if outcome == "ok":
            self.metrics.duration.labels(req.endpoint).observe(now - req.arrival)
        self._outbox.append((req, event))

    def _flush(self) -> None:
        """Sends the queued events: straight to plain sinks, in one post to each hub."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        hubs: dict = {}  # hub -> [(sink, event), ...]
        for req, event in outbox:
            sink = req.sink
            if sink is None:
                continue
            hub = getattr(sink, "hub", None)
            if hub is None:
                try:
                    sink(event)
                except Exception:  # a broken consumer must not take the engine down
                    log.exception("request %d: event sink failed", req.id)
                continue
            batch = hubs.get(hub)
            if batch is None:
                batch = hubs[hub] = []
            batch.append((sink, event))
        for hub, batch in hubs.items():
            try:
                hub.post(batch)
            except Exception:
                log.exception("event hub failed; %d events not delivered", len(batch))
