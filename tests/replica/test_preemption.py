"""KV blocks and priority preemption in the scheduler, driven by a fake deterministic model that
reads its context back from a paged cache: a token is a function of every token in the cache,
found through the request's block ids, so a wrong block, a wrong prefill token or a wrong
position changes the outputs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carpool_replica.limits import EndpointLimits, LimitsDocument
from carpool_replica.scheduler import Rejected, Request, Scheduler, Step

BLOCK = 4


def limits(**endpoints: dict) -> LimitsDocument:
    base = dict(
        priority=0,
        max_batch_size=8,
        batch_window_ms=0,
        max_queue_wait_ms=10_000,
        max_queue_length=100,
    )
    return LimitsDocument(
        version=1,
        default_endpoint=next(iter(endpoints)),
        endpoints={name: EndpointLimits(**(base | spec)) for name, spec in endpoints.items()},
    )


PRIORITIES = limits(low={"priority": 0}, mid={"priority": 50}, high={"priority": 100})


def make(blocks=16, slots=8, doc=PRIORITIES, chunk=1000) -> Scheduler:
    return Scheduler(doc, slots, 1000, chunk, kv_cache_tokens=blocks * BLOCK, kv_block_tokens=BLOCK)


def req(endpoint="low", arrival=0.0, prompt=6, max_tokens=10, seed=1) -> Request:
    ids = [(31 * seed + 7 * j) % 97 + 1 for j in range(prompt)]
    return Request(prompt_ids=ids, max_tokens=max_tokens, endpoint=endpoint, arrival=arrival)


def next_token(context) -> int:
    """The fake model: a token from the whole sequence so far (never 0, the EOS of none here)."""
    return hash(tuple(context)) % 997 + 1


class PagedModel:
    """Writes prefill chunks and decode rows into a paged cache through ``req.blocks`` and
    samples ``next_token`` of what it reads back; blocks handed out are poisoned first, so a
    read of a position this admission never wrote fails."""

    def __init__(self, sched: Scheduler):
        self.sched = sched
        self.cells: list[int | None] = [None] * (sched.num_blocks * sched.kv_block_tokens)

    def _cell(self, req: Request, pos: int) -> int:
        size = self.sched.kv_block_tokens
        return req.blocks[pos // size] * size + pos % size

    def _sample(self, req: Request, length: int) -> int:
        context = [self.cells[self._cell(req, p)] for p in range(length)]
        assert None not in context, f"request {req.id} reads a position it never wrote"
        return next_token(context)

    def execute(self, step: Step) -> dict[int, int]:
        for r in step.admitted:
            for block in r.blocks:
                start = block * self.sched.kv_block_tokens
                self.cells[start : start + self.sched.kv_block_tokens] = [None] * BLOCK
        tokens = {}
        for r, start, length in step.prefill:
            for pos in range(start, start + length):
                self.cells[self._cell(r, pos)] = r.prefill_ids[pos]
            if start + length == len(r.prefill_ids):
                tokens[r.id] = self._sample(r, start + length)
        for r in step.decode:
            pos = r.context_len - 1
            self.cells[self._cell(r, pos)] = r.output_ids[-1]
            tokens[r.id] = self._sample(r, pos + 1)
        assert set(tokens) == {r.id for r in step.sampling}
        return tokens


def drive(sched: Scheduler, model: PagedModel, now: float) -> Step:
    step = sched.schedule(now)
    sched.complete(step, model.execute(step))
    check_blocks(sched)
    return step


def check_blocks(sched: Scheduler) -> None:
    held = [b for r in sched.running for b in r.blocks]
    assert sorted(held + sched.free_blocks) == list(range(sched.num_blocks))
    assert sched.kv_reserved == len(held) * sched.kv_block_tokens
    assert sched.kv_reserved == sum(len(r.blocks) for r in sched.running) * sched.kv_block_tokens
    for queue in sched.endpoints.values():
        assert all(not r.blocks for r in queue.waiting)


def all_free(sched: Scheduler) -> bool:
    return sorted(sched.free_blocks) == list(range(sched.num_blocks)) and sched.kv_reserved == 0


def expected_outputs(r: Request) -> list[int]:
    """What an undisturbed greedy run of ``r`` produces."""
    out: list[int] = []
    while len(out) < r.max_tokens:
        out.append(next_token([*r.prompt_ids, *out]))
    return out


def fill(sched, model, endpoint, count, prompt=6, max_tokens=10, steps=2):
    """``count`` requests of ``endpoint`` admitted and decoding after ``steps`` steps."""
    reqs = [req(endpoint, prompt=prompt, max_tokens=max_tokens, seed=i) for i in range(count)]
    for r in reqs:
        sched.submit(r)
    for t in range(steps):
        drive(sched, model, t * 0.01)
    assert all(r in sched.running and r.output_ids for r in reqs)
    return reqs


# -- block ids --------------------------------------------------------------------------------


def test_block_i_holds_positions_of_the_ith_block_and_outputs_match_an_undisturbed_run():
    sched = make(blocks=32)
    model = PagedModel(sched)
    reqs = [req(prompt=5 + i, max_tokens=9, seed=i) for i in range(4)]
    for r in reqs:
        sched.submit(r)
    for t in range(20):
        drive(sched, model, t * 0.01)
    assert [r.output_ids for r in reqs] == [expected_outputs(r) for r in reqs]
    assert all_free(sched)


# -- waiting at most one step ------------------------------------------------------------------


def test_a_high_priority_request_waits_one_step_when_low_priority_holds_every_block():
    sched = make(blocks=16)  # a 6 + 10 token request takes 4 blocks: four fill the cache
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4)
    assert not sched.free_blocks
    high = req("high", arrival=0.05, seed=9)
    sched.submit(high)
    step = drive(sched, model, 0.05)
    assert step.admitted == [high]
    assert step.preempted == [lows[-1]]  # the most recently admitted
    assert lows[-1] not in sched.running and sched.endpoints["low"].waiting[0] is lows[-1]


def test_a_high_priority_request_waits_one_step_when_low_priority_holds_every_slot():
    sched = make(blocks=64, slots=3)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 3)
    high = req("high", arrival=0.05, seed=9)
    sched.submit(high)
    step = drive(sched, model, 0.05)
    assert step.admitted == [high]
    assert step.preempted == [lows[-1]]
    assert high.slot is not None and lows[-1].slot is None


def test_every_ready_high_priority_request_is_admitted_in_the_step():
    sched = make(blocks=16)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4)
    highs = [req("high", arrival=0.05, seed=9 + i) for i in range(3)]
    for h in highs:
        sched.submit(h)
    step = drive(sched, model, 0.05)
    assert step.admitted == highs
    assert step.preempted == lows[:0:-1]
    assert list(sched.endpoints["low"].waiting) == lows[1:]  # back in admission order


def test_victims_are_lowest_priority_first_then_most_recently_admitted():
    sched = make(blocks=16)
    model = PagedModel(sched)
    mid = fill(sched, model, "mid", 1)[0]
    first, second = fill(sched, model, "low", 2)
    third = fill(sched, model, "mid", 1)[0]
    big = req("high", arrival=0.1, prompt=20, max_tokens=12, seed=9)  # 8 blocks: two victims
    sched.submit(big)
    step = drive(sched, model, 0.1)
    assert step.preempted == [second, first]
    assert mid in sched.running and third in sched.running


def test_a_gathering_window_is_not_a_reason_to_preempt():
    doc = limits(low={"priority": 0}, high={"priority": 100, "batch_window_ms": 50})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    fill(sched, model, "low", 4)
    sched.submit(req("high", arrival=0.05, seed=9))
    assert drive(sched, model, 0.06).preempted == []
    assert len(drive(sched, model, 0.10).preempted) == 1


def test_a_request_preempted_in_a_step_is_not_admitted_again_in_that_step():
    doc = limits(x={"priority": 0}, y={"priority": 0}, high={"priority": 100})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    older = fill(sched, model, "y", 1, prompt=38, max_tokens=10)[0]  # 12 blocks
    newer = fill(sched, model, "x", 1)[0]  # 4 blocks
    sched.submit(req("high", arrival=0.1, prompt=22, max_tokens=10, seed=9))  # 8 blocks
    step = drive(sched, model, 0.1)
    assert step.preempted == [newer, older]  # 4 blocks were not enough: both went
    assert newer not in step.admitted  # it would fit in the 8 blocks left, but waits a step
    assert drive(sched, model, 0.11).admitted == [newer]


# -- never in vain, never upwards ------------------------------------------------------------


def test_no_preemption_in_vain():
    sched = make(blocks=16)
    model = PagedModel(sched)
    fill(sched, model, "high", 2)  # 8 blocks at the top priority
    lows = fill(sched, model, "low", 2)  # 8 blocks below
    big = req("mid", arrival=0.1, prompt=30, max_tokens=10, seed=9)  # 10 blocks: more than 8
    sched.submit(big)
    step = drive(sched, model, 0.1)
    assert step.preempted == [] and step.admitted == []
    assert all(r in sched.running for r in lows)


def test_no_preemption_of_an_equal_or_higher_priority():
    doc = limits(a={"priority": 10}, b={"priority": 10}, low={"priority": 0})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    fill(sched, model, "a", 4)
    sched.submit(req("low", arrival=0.1, seed=10))
    step = drive(sched, model, 0.1)
    assert step.preempted == [] and step.admitted == []
    sched.submit(req("b", arrival=0.1, seed=9))
    step = drive(sched, model, 0.11)
    assert step.preempted == [] and step.admitted == []


def test_a_lower_priority_does_not_preempt_to_overtake_a_higher_head_that_waits():
    sched = make(blocks=16)
    model = PagedModel(sched)
    fill(sched, model, "high", 3)
    fill(sched, model, "low", 1)
    sched.submit(req("high", arrival=0.1, prompt=30, max_tokens=10, seed=9))  # cannot fit
    sched.submit(req("mid", arrival=0.1, seed=10))  # would fit by preempting "low"
    step = drive(sched, model, 0.1)
    assert step.preempted == [] and step.admitted == []


# -- resuming ----------------------------------------------------------------------------------


def run_to_the_end(sched, model, start=0.1, steps=200):
    for t in range(steps):
        drive(sched, model, start + t * 0.01)


def test_preempted_requests_resume_with_the_outputs_of_an_undisturbed_run():
    undisturbed = make(blocks=16, chunk=5)
    model = PagedModel(undisturbed)
    alone = fill(undisturbed, model, "low", 4, steps=6)
    run_to_the_end(undisturbed, model)

    sched = make(blocks=16, chunk=5)  # prefill in chunks of 5, resumed ones too
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4, steps=6)
    highs = [req("high", arrival=0.05, seed=20 + i) for i in range(3)]
    for h in highs:
        sched.submit(h)
    assert len(drive(sched, model, 0.05).preempted) == 3
    run_to_the_end(sched, model)

    assert all(r.finish_reason == "length" for r in lows + highs)
    assert [r.output_ids for r in lows] == [r.output_ids for r in alone]
    assert [r.output_ids for r in highs] == [expected_outputs(h) for h in highs]
    assert all(r.preemptions == 1 for r in lows[1:]) and lows[0].preemptions == 0
    assert all_free(sched) and not sched.running


def test_resumed_prefill_covers_the_prompt_and_the_outputs_and_samples_a_new_token():
    sched = make(blocks=16, chunk=4)
    model = PagedModel(sched)
    low = fill(sched, model, "low", 4, prompt=3, max_tokens=13, steps=3)[-1]
    produced = list(low.output_ids)
    sched.submit(req("high", arrival=0.05, prompt=3, max_tokens=13, seed=9))
    drive(sched, model, 0.05)
    assert low.prefill_ids == [*low.prompt_ids, *produced] and low.num_prefilled == 0
    for _ in range(100):
        if low in sched.running and low.prefill_done:
            break
        drive(sched, model, 1.0)
    assert len(low.output_ids) == len(produced) + 1  # the step that completed it sampled anew
    assert low.context_len == len(low.prompt_ids) + len(low.output_ids)


def test_a_preempted_request_that_has_streamed_never_expires_and_one_that_has_not_does():
    doc = limits(low={"priority": 0, "max_queue_wait_ms": 100}, high={"priority": 100})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4, steps=2)
    silent = req("low", arrival=0.0, prompt=60, max_tokens=4, seed=8)  # 16 blocks: waits
    sched.submit(req("high", arrival=0.05, prompt=6, max_tokens=50, seed=9))  # 14 blocks
    assert drive(sched, model, 0.05).preempted == lows[::-1]
    sched.submit(silent)
    expired = []
    for t in range(200):
        expired += drive(sched, model, 0.06 + t * 0.01).expired
    assert all(r.finish_reason == "length" and len(r.output_ids) == 10 for r in lows)
    assert expired == [silent]


def test_a_preempted_request_that_has_not_streamed_keeps_its_arrival_and_can_expire():
    doc = limits(low={"priority": 0, "max_queue_wait_ms": 100}, high={"priority": 100})
    sched = make(blocks=16, doc=doc, chunk=8)
    model = PagedModel(sched)
    fill(sched, model, "low", 3, steps=3)
    prefilling = req("low", arrival=0.0, prompt=14, max_tokens=2, seed=7)  # 4 blocks, 2 chunks
    sched.submit(prefilling)
    drive(sched, model, 0.02)
    assert prefilling in sched.running and not prefilling.output_ids
    sched.submit(req("high", arrival=0.03, seed=9))
    assert drive(sched, model, 0.03).preempted == [prefilling]
    assert drive(sched, model, 0.101).expired == [prefilling]


def test_the_next_deadline_is_the_expiry_of_the_oldest_request_that_can_expire():
    doc = limits(low={"priority": 0, "max_queue_wait_ms": 100}, high={"priority": 100})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4)
    sched.submit(req("high", arrival=0.05, seed=9))
    drive(sched, model, 0.05)
    sched.submit(req("low", arrival=0.06, seed=5))
    assert sched.endpoints["low"].waiting[0] is lows[-1]  # streamed: it never expires
    assert sched.next_deadline(0.07) == 0.06 + 0.1 + 1e-3


def test_take_waiting_keeps_preempted_requests_to_finish_here():
    sched = make(blocks=16)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4)
    queued = req("low", arrival=0.01, seed=5)
    sched.submit(queued)
    sched.submit(req("high", arrival=0.05, seed=9))
    drive(sched, model, 0.05)
    assert sched.take_waiting() == [queued]
    assert list(sched.endpoints["low"].waiting) == [lows[-1]]


# -- accounting --------------------------------------------------------------------------------


def test_blocks_come_back_after_cancel_error_expiry_and_preemption():
    doc = limits(low={"priority": 0, "max_queue_wait_ms": 100}, high={"priority": 100})
    sched = make(blocks=16, doc=doc)
    model = PagedModel(sched)
    lows = fill(sched, model, "low", 4)
    late = req("low", arrival=0.0, seed=6)
    sched.submit(late)
    high = req("high", arrival=0.05, seed=9)
    sched.submit(high)
    drive(sched, model, 0.05)  # preempts one
    lows[0].cancel()
    lows[1].cancel("error")
    high.cancel()
    step = drive(sched, model, 0.2)  # "late" expired; the preempted one is admitted again
    assert late in step.expired
    for r in sched.running:
        r.cancel()
    drive(sched, model, 0.3)
    assert all_free(sched) and not sched.running and not sched.has_waiting


OPS = st.tuples(
    st.sampled_from(["submit", "submit", "submit", "step", "step", "cancel"]),
    st.sampled_from(["low", "mid", "high"]),  # endpoint to submit to
    st.integers(1, 20),  # prompt
    st.integers(1, 16),  # max_tokens
    st.sampled_from([0.0, 0.01, 0.02, 0.05]),  # time to the step
    st.integers(0, 40),  # which request to cancel
    st.sampled_from(["cancelled", "error"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(OPS, min_size=20, max_size=80),
    st.integers(2, 8),
    st.integers(10, 20),
    st.integers(3, 16),
)
def test_any_history_keeps_the_block_accounting_and_the_outputs(ops, slots, blocks, chunk):
    doc = limits(
        low={"priority": 0, "max_queue_wait_ms": 150},
        mid={"priority": 50, "max_queue_wait_ms": 150, "max_batch_size": 3},
        high={"priority": 100, "max_queue_wait_ms": 150},
    )
    sched = make(blocks=blocks, slots=slots, doc=doc, chunk=chunk)
    model = PagedModel(sched)
    now, submitted = 0.0, []
    for kind, endpoint, prompt, max_tokens, dt, which, reason in ops:
        if kind == "submit":
            r = req(endpoint, now, prompt, max_tokens, seed=len(submitted))
            try:
                sched.submit(r)
            except Rejected:
                continue
            submitted.append(r)
        elif kind == "cancel" and submitted:
            submitted[which % len(submitted)].cancel(reason)
        else:
            now += dt
            step = drive(sched, model, now)
            assert not set(map(id, step.preempted)) & set(map(id, step.admitted))
    for _ in range(500):
        if not sched.running and not sched.has_waiting:
            break
        now += 0.01
        drive(sched, model, now)
    for r in submitted:
        r.cancel()
    drive(sched, model, now + 1.0)
    assert all_free(sched) and not sched.running and not sched.has_waiting
    for r in submitted:
        assert r.output_ids == expected_outputs(r)[: len(r.output_ids)]
        if r.finish_reason == "length":
            assert len(r.output_ids) == r.max_tokens
