"""The engine's events cross to the HTTP side once per step, and the host work per token stays
cheap without changing what comes out: every token in order and exactly one done per request,
metrics that count every token, the same text as decoding every id each time."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from carpool_replica.buckets import LATENCY_BUCKETS
from carpool_replica.scheduler import Request
from carpool_worker.api import TEXT_COMPLETION, ApiError, parse_completion
from carpool_worker.app import Completion, LoopHub, QueueSink
from carpool_worker.chat import CHAT_COMPLETION
from carpool_worker.engine import DoneEvent, Engine, TokenEvent
from carpool_worker.limits import EndpointLimits, LimitsDocument
from carpool_worker.metrics import observe_each
from carpool_worker.server import Worker, WorkerSettings
from carpool_worker.tokenizer import IncrementalDecoder, TextCodec, byte_level_tokenizer

from .conftest import RunningServer, wait_for

SLOTS = 8


class StandInRunner:
    """A runner that takes no time: request r's token at output position i is r.id * 1000 + i."""

    num_slots = SLOTS
    max_seq_len = 256
    kv_cache_tokens = SLOTS * 256
    kv_block_tokens = 256

    def __init__(self):
        self.steps = 0

    def execute(self, step) -> dict[int, int]:
        self.steps += 1
        return {r.id: r.id * 1000 + len(r.output_ids) for r in step.sampling}


def limits() -> LimitsDocument:
    return LimitsDocument(
        1,
        "a",
        {
            "a": EndpointLimits(0, SLOTS, 0, 60_000, 1000),
            "b": EndpointLimits(0, SLOTS, 0, 60_000, 1000),
        },
    )


class CountingHub:
    """A hub that records each post and calls the sinks on the caller's thread."""

    def __init__(self):
        self.posts: list[list] = []

    def post(self, batch: list) -> None:
        self.posts.append(batch)
        for sink, event in batch:
            sink(event)


class HubSink:
    def __init__(self, hub):
        self.hub = hub
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)


def run_requests(engine: Engine, sinks: list, max_tokens: list[int]) -> list[Request]:
    reqs = []
    for i, (sink, n) in enumerate(zip(sinks, max_tokens, strict=True)):
        req = Request([1, 2, 3, 4 + i], n, "ab"[i % 2], time.monotonic(), sink=sink)
        engine.submit(req)
        reqs.append(req)
    return reqs


def tokens_and_done(events: list) -> tuple[list[int], list[DoneEvent]]:
    tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
    dones = [e for e in events if isinstance(e, DoneEvent)]
    return tokens, dones


def test_each_step_reaches_a_hub_in_one_post_with_every_token_in_order_and_one_done():
    runner = StandInRunner()
    engine = Engine(runner, limits(), prefill_token_budget=64)
    hubs = [CountingHub(), CountingHub()]
    sinks = [HubSink(hubs[i % 2]) for i in range(24)]  # three times the slots: requests queue
    lengths = [3 + (i * 7) % 20 for i in range(24)]
    engine.start()
    try:
        reqs = run_requests(engine, sinks, lengths)
        wait_for(lambda: all(tokens_and_done(s.events)[1] for s in sinks))
    finally:
        engine.stop()
    for req, sink, n in zip(reqs, sinks, lengths, strict=True):
        tokens, dones = tokens_and_done(sink.events)
        assert tokens == [req.id * 1000 + i for i in range(n)]
        assert isinstance(sink.events[-1], DoneEvent) and len(dones) == 1
        assert dones[0].reason == "length"
    posts = sum(len(h.posts) for h in hubs)
    # One post per hub per step at most (a step's closes of queued requests post apart).
    assert posts <= 2 * runner.steps
    assert sum(len(b) for h in hubs for b in h.posts) == sum(lengths) + len(lengths)
    for hub in hubs:
        for batch in hub.posts:
            assert all(sink.hub is hub for sink, _ in batch)


def test_a_plain_sink_is_called_from_the_engine_thread_for_each_event():
    engine = Engine(StandInRunner(), limits(), prefill_token_budget=64)
    seen: list = []
    threads: set[str] = set()

    def sink(event):
        threads.add(threading.current_thread().name)
        seen.append(event)

    engine.start()
    try:
        (req,) = run_requests(engine, [sink], [5])
        wait_for(lambda: seen and isinstance(seen[-1], DoneEvent))
    finally:
        engine.stop()
    assert [e.token_id for e in seen[:-1]] == [req.id * 1000 + i for i in range(5)]
    assert threads == {"engine"}


def sample(metrics, name: str, endpoint: str) -> float:
    return metrics.registry.get_sample_value(name, {"endpoint": endpoint}) or 0.0


def test_the_token_metrics_count_every_token_sent():
    engine = Engine(StandInRunner(), limits(), prefill_token_budget=64)
    hub = CountingHub()
    sinks = [HubSink(hub) for _ in range(20)]
    lengths = [1 + (i * 5) % 17 for i in range(20)]
    engine.start()
    try:
        run_requests(engine, sinks, lengths)
        wait_for(lambda: all(tokens_and_done(s.events)[1] for s in sinks))
    finally:
        engine.stop()
    m = engine.metrics
    for endpoint, parity in (("a", 0), ("b", 1)):
        mine = [n for i, n in enumerate(lengths) if i % 2 == parity]
        assert sample(m, "carpool_generated_tokens_total", endpoint) == sum(mine)
        assert sample(m, "carpool_time_to_first_token_seconds_count", endpoint) == len(mine)
        assert sample(m, "carpool_service_time_seconds_count", endpoint) == len(mine)
        inter = sample(m, "carpool_inter_token_latency_seconds_count", endpoint)
        assert inter == sum(mine) - len(mine)


def test_a_loop_hub_delivers_on_its_loop_in_order():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        hub = LoopHub(loop)
        queues = [asyncio.Queue() for _ in range(3)]
        sinks = [QueueSink(hub, q) for q in queues]
        for step in range(50):  # what the engine thread does: one post per step
            hub.post([(s, TokenEvent(step)) for s in sinks])
        hub.post([(s, DoneEvent("length")) for s in sinks])

        async def drain(q):
            out = []
            while not out or not isinstance(out[-1], DoneEvent):
                out.append(await q.get())
            return out

        for q in queues:
            got = asyncio.run_coroutine_threadsafe(drain(q), loop).result(timeout=10)
            assert [e.token_id for e in got[:-1]] == list(range(50))
            assert got[-1] == DoneEvent("length")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


# -- detokenizing ------------------------------------------------------------------------


def full_decode_deltas(codec: TextCodec, ids: list[int]) -> list[str]:
    """The reference: decode every id so far at each token, send what the text added."""
    out, emitted = [], ""
    for n in range(1, len(ids) + 1):
        text = codec.decode(ids[:n])
        if text.endswith("\ufffd"):
            out.append("")
            continue
        out.append(text[len(emitted) :] if text.startswith(emitted) else "")
        emitted = text
    return out


def byte_codec() -> TextCodec:
    return TextCodec(byte_level_tokenizer(), 256, 258)


def random_ids(rng: random.Random, n: int) -> list[int]:
    """Bytes of mixed text (ASCII, 2-4 byte characters, some split), stray bytes, specials."""
    ids: list[int] = []
    while len(ids) < n:
        pick = rng.random()
        if pick < 0.5:
            ids += list(rng.choice(["a", "é", "€", "😀", " x", "\n"]).encode())
        elif pick < 0.7:
            ids.append(rng.randrange(0x80, 0x100))  # a continuation or lead byte alone
        elif pick < 0.8:
            ids.append(rng.choice([256, 257]))  # BOS / EOS: skipped
        else:
            ids += list("\ufffd".encode())  # a real U+FFFD in the text
    return ids[:n]


@pytest.mark.parametrize("seed", range(30))
def test_incremental_decoding_sends_what_decoding_every_id_sends(seed):
    codec = byte_codec()
    ids = random_ids(random.Random(seed), 120)
    decoder = IncrementalDecoder(codec)
    assert [decoder.push(i) for i in ids] == full_decode_deltas(codec, ids)


def test_a_byte_level_decoder_decodes_only_the_ids_since_the_last_whole_text():
    codec = byte_codec()
    decoded: list[int] = []
    decode = codec.decode
    codec.decode = lambda ids: decoded.append(len(ids)) or decode(ids)
    decoder = IncrementalDecoder(codec)
    text = "".join(decoder.push(i) for i in ("héllo wörld " * 40).encode())
    assert text == "héllo wörld " * 40
    assert max(decoded) == 2  # a two-byte character; never the whole output


def test_a_decoder_that_is_not_byte_level_still_decodes_every_id():
    vocab = {"<unk>": 0, "▁hello": 1, "▁world": 2, "!": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()  # strips the first token's leading space only
    codec = TextCodec(tokenizer, None, 4)
    ids = [1, 2, 3, 1, 3, 2]
    decoder = IncrementalDecoder(codec)
    deltas = [decoder.push(i) for i in ids]
    assert deltas == full_decode_deltas(codec, ids)
    assert "".join(deltas) == "hello world! hello! world"


# -- through HTTP ------------------------------------------------------------------------

EMULATED_PROFILE = {
    "schema": "carpool.dev/profile/v2",
    "model": "tiny",
    "device": "test GPU",
    "kv_cache_tokens": 4 * 1024,
    "max_batch_size": 4,
    "max_seq_len": 1024,
    "prefill_chunk_tokens": 256,
    "decode": [
        {"batch_size": 1, "context_tokens": 0, "step_seconds": 0.002},
        {"batch_size": 4, "context_tokens": 0, "step_seconds": 0.003},
    ],
    "prefill_chunks": [
        {"chunk_tokens": 256, "offset_tokens": 0, "seconds": 0.004},
        {"chunk_tokens": 256, "offset_tokens": 256, "seconds": 0.005},
    ],
}


def test_concurrent_streams_each_get_every_token_in_order_and_one_end(tmp_path):
    # The tiny preset's byte tokenizer: the emulated ids are bytes with text.
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(EMULATED_PROFILE))
    worker = Worker(WorkerSettings(model="tiny", emulate=profile))
    prompts = [[1, 2, 3 + i] for i in range(12)]  # three times the slots: requests queue

    async def stream(client: httpx.AsyncClient, prompt: list[int]) -> list[dict]:
        body = {"prompt": prompt, "max_tokens": 40, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        async with client.stream("POST", "/v1/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        return [json.loads(line[6:]) for line in lines[:-1]]

    async def run_all(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            streams = await asyncio.gather(*(stream(client, p) for p in prompts))
            wholes = [
                (await client.post("/v1/completions", json={"prompt": p, "max_tokens": 40})).json()
                for p in prompts
            ]
            metrics = (await client.get("/metrics")).text
        return streams, wholes, metrics

    with RunningServer(worker) as server:
        streams, wholes, metrics = asyncio.run(run_all(server.url))
    for chunks, whole in zip(streams, wholes, strict=True):
        *text_chunks, usage = chunks
        finishes = [c["choices"][0]["finish_reason"] for c in text_chunks]
        assert finishes[-1] == "length" and finishes.count("length") == 1
        assert (
            "".join(c["choices"][0]["text"] for c in text_chunks) == (whole["choices"][0]["text"])
        )
        assert usage["usage"]["completion_tokens"] == 40
    assert any(whole["choices"][0]["text"] for whole in wholes)
    generated = [line for line in metrics.splitlines()
                 if line.startswith("carpool_generated_tokens_total")]  # fmt: skip
    assert sum(float(line.rsplit(" ", 1)[1]) for line in generated) == 2 * 40 * len(prompts)


def histogram_pair():
    registry = CollectorRegistry()
    return [
        Histogram(name, "h", ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        for name in ("one_by_one", "batched")
    ], registry


def test_observing_a_batch_gives_the_counts_and_sum_of_observing_each_value():
    rng = random.Random(3)
    (one_by_one, batched), registry = histogram_pair()
    for _ in range(50):  # steps: a few values each, some equal, some on a bound exactly
        values = [rng.choice([rng.uniform(0, 2), rng.expovariate(50), 0.0])
                  for _ in range(rng.randrange(1, 70))]  # fmt: skip
        values += [rng.choice(LATENCY_BUCKETS)] * 3 + [1e9]
        for v in values:
            one_by_one.labels("a").observe(v)
        observe_each(batched.labels("a"), values)
    lines = generate_latest(registry).decode().splitlines()

    def samples(name: str) -> list[str]:  # bucket counts, count and sum; not the creation time
        return [line.split("{", 1)[1] for line in lines
                if line.startswith(name) and "_created" not in line]  # fmt: skip

    assert samples("one_by_one") == samples("batched")
    assert len(samples("batched")) == len(LATENCY_BUCKETS) + 3  # the buckets, +Inf, count, sum


def test_a_batch_with_a_nan_is_observed_value_by_value():
    (one_by_one, batched), _ = histogram_pair()
    values = [0.1, math.nan, 0.2]
    for v in values:
        one_by_one.labels("a").observe(v)
    observe_each(batched.labels("a"), values)
    for name in ("_count", "_bucket"):
        assert [s.value for s in one_by_one.collect()[0].samples if s.name.endswith(name)] == [
            s.value for s in batched.collect()[0].samples if s.name.endswith(name)
        ]


# -- the prompt's ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([5, 7, 300, -1, 400], "token id 300 is outside"),  # the first bad id is named
        ([5, -1, 300], "token id -1 is outside"),
        ([5, True, 7], "a list of token ids"),
        ([5, 7.0], "a list of token ids"),
        ([5, "7"], "a list of token ids"),
    ],
)
def test_a_prompt_of_ids_is_refused_for_its_first_bad_id(prompt, message):
    codec = TextCodec(byte_level_tokenizer(), 256, 258)
    body = json.dumps({"prompt": prompt}).encode()
    with pytest.raises(ApiError, match=message):
        parse_completion(body, codec, 1024)


def test_a_prompt_of_ids_in_range_is_taken_as_it_is():
    codec = TextCodec(byte_level_tokenizer(), 256, 258)
    prompt = [0, 257, *range(200)]
    params = parse_completion(json.dumps({"prompt": prompt}).encode(), codec, 1024)
    assert params.prompt_ids == prompt


# -- the stream's bytes ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [TEXT_COMPLETION, CHAT_COMPLETION], ids=["text", "chat"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chunk_from_the_template_is_the_chunk_encoded_whole(shape, include_usage):
    codec = TextCodec(byte_level_tokenizer(), 256, 258)
    worker = SimpleNamespace(codec=codec, config=SimpleNamespace(name='bench "8b" é'))
    params = SimpleNamespace(stop=[], include_usage=include_usage)
    completion = Completion(worker, None, params, asyncio.Queue(), shape)
    rng = random.Random(5)
    texts = ["a", " def f():\n\treturn '\"x\"'", "é€😀", "\x00\x1f\\", "</s>", "\ufffd", "\u2028"]
    texts += ["".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(8)) for _ in range(200)]
    for first, finish in ((True, None), (False, None), (False, "length"), (False, "stop")):
        for text in texts:
            whole = f"data: {json.dumps(completion.chunk(text, finish, first))}\n\n"
            assert completion.sse_chunk(text, finish, first) == whole
