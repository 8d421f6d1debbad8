"""Measurements of a model runner: copy bandwidth, decode step, prefill chunks, mixed steps,
engine Pareto points.

Contract: functions take a warmed :class:`~carpool_worker.runner.ModelRunner` and return
seconds (medians of repeated runs). Steps are timed the way the engine runs them, through
``runner.execute(step)`` on a scheduler :class:`Step`: inputs copied in, the (graph) forward,
sampling, and the sampled ids back on the host. A prefill chunk is timed at its offset into the
prompt (it attends to the tokens already cached), a mixed step is a chunk beside a decode batch.
The KV cache is filled with random values first, so no timing runs over zeros. Every timed
sequence maps onto the same first blocks of the cache (``time_on_blocks``): the timing reads
and writes them as serving would, and what they hold does not matter, so a large batch at a
long context is timed without a cache that large.
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

from carpool_replica.scheduler import Request, Step

from .engine import DoneEvent, Engine, TokenEvent
from .limits import EndpointLimits, LimitsDocument


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fill_cache_random(runner) -> None:
    gen = torch.Generator(device=runner.device).manual_seed(1)
    for tensor in (runner.cache.k, runner.cache.v):
        for layer in tensor:
            layer.normal_(0.0, 1.0, generator=gen)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus written."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - start)


def time_on_blocks(runner, slots, tokens: int) -> list[int]:
    """Points each of ``slots`` at the cache's first blocks, enough for ``tokens``; returns them."""
    blocks = list(range(-(-tokens // runner.kv_block_tokens)))
    for slot in slots:
        runner.cache.assign(slot, blocks)
    return blocks


@torch.inference_mode()
def decode_step_seconds(runner, batch: int, context: int, steps: int = 20) -> float:
    """Median seconds of one engine decode step with ``batch`` rows at ``context`` tokens."""
    vocab = runner.model.config.vocab_size
    slots = list(range(batch))
    time_on_blocks(runner, slots, context)
    positions = [context - 1] * batch
    tokens = [(17 * i + 3) % vocab for i in range(batch)]
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        _, greedy = runner.decode_logits(tokens, slots, positions)
        tokens = greedy.tolist()
        if i >= 3:  # the first replays page things in
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _decoding(runner, batch: int, context: int) -> list[Request]:
    """``batch`` requests in slots 0.., each ``context`` tokens into its output."""
    reqs = []
    blocks = time_on_blocks(runner, range(batch), context)
    for i in range(batch):
        req = Request(range(context - 1), 1 << 20, "profile", 0.0)
        req.slot, req.num_prefilled, req.output_ids = i, context - 1, [(17 * i + 3) % 1000]
        req.blocks = blocks
        reqs.append(req)
    return reqs


def _chunk(runner, slot: int, chunk: int, offset: int) -> tuple[Request, int, int]:
    vocab = runner.model.config.vocab_size
    prompt = [(7 * j + 11) % vocab for j in range(offset + chunk)]
    req = Request(prompt, 1, "profile", 0.0)
    req.slot, req.num_prefilled = slot, offset
    req.blocks = time_on_blocks(runner, [slot], offset + chunk)
    return req, offset, chunk


def step_seconds(runner, make_step, reps: int = 9, warmups: int = 2) -> float:
    """Median seconds of ``runner.execute(make_step())`` after ``warmups`` runs. Nine runs: a
    single point measured from five once came out twice its neighbours on an H200."""
    times = []
    for i in range(warmups + reps):
        step = make_step()
        sync(runner.device)
        start = time.perf_counter()
        runner.execute(step)
        sync(runner.device)
        if i >= warmups:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def chunk_seconds(runner, chunk: int, offset: int, reps: int = 9) -> float:
    """One engine step that prefills ``chunk`` prompt tokens starting ``offset`` into the
    prompt (the first ``offset`` tokens already cached), and nothing else."""
    return step_seconds(runner, lambda: Step(prefill=[_chunk(runner, 0, chunk, offset)]), reps)


def mixed_seconds(runner, batch: int, context: int, chunk: int, offset: int, reps: int = 9):
    """One engine step that decodes ``batch`` sequences at ``context`` tokens and prefills a
    ``chunk`` at ``offset`` for one more sequence."""

    def make() -> Step:
        return Step(prefill=[_chunk(runner, batch, chunk, offset)],
                    decode=_decoding(runner, batch, context))  # fmt: skip

    return step_seconds(runner, make, reps)


@torch.inference_mode()
def prefill_seconds(runner, prompt_tokens: int, reps: int = 3) -> float:
    vocab = runner.model.config.vocab_size
    prompt = torch.randint(0, vocab, (prompt_tokens,), device=runner.device)
    time_on_blocks(runner, [0], prompt_tokens)
    times = []
    for _ in range(reps + 1):
        sync(runner.device)
        start = time.perf_counter()
        logits = runner.model.prefill(runner.cache, prompt, 0, 0)
        int(logits.argmax())
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def engine_pareto_point(
    runner,
    max_batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    requests: int,
    prefill_token_budget: int,
) -> dict:
    """Runs ``requests`` requests, all queued at once, through an engine whose batch limit is
    ``max_batch_size``; returns generated tokens per second and the p95 time to first token."""
    limits = EndpointLimits(0, max_batch_size, 0, 3_600_000, requests + 1)
    engine = Engine(
        runner,
        LimitsDocument(1, "bench", {"bench": limits}),
        prefill_token_budget=prefill_token_budget,
    )
    vocab = runner.model.config.vocab_size
    first_token: dict[int, float] = {}
    done = threading.Semaphore(0)
    generated = [0]

    def sink_for(req_id: int):
        def sink(event):
            if isinstance(event, TokenEvent):
                generated[0] += 1
                first_token.setdefault(req_id, time.monotonic())
            elif isinstance(event, DoneEvent):
                done.release()

        return sink

    engine.start()
    start = time.monotonic()
    reqs = []
    for i in range(requests):
        prompt = [(31 * i + 7 * j + 1) % vocab for j in range(prompt_tokens)]
        req = Request(prompt, new_tokens, "bench", start, temperature=0.0)
        req.sink = sink_for(req.id)
        reqs.append(req)
        engine.submit(req)
    for _ in reqs:
        done.acquire(timeout=600)
    elapsed = time.monotonic() - start
    engine.stop()
    ttfts = sorted(first_token[r.id] - r.arrival for r in reqs if r.id in first_token)
    p95 = ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
    return {
        "max_batch_size": max_batch_size,
        "tokens_per_second": round(generated[0] / elapsed, 1),
        "ttft_p95_seconds": round(p95, 5),
    }
