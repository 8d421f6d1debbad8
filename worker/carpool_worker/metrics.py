"""The worker's Prometheus metrics (names and meanings from the design notes).

Contract: ``WorkerMetrics()`` registers every metric on its own ``CollectorRegistry`` (so several
workers can live in one test process) and ``render()`` returns the text exposition. Latency
histograms share ``carpool_replica.buckets.LATENCY_BUCKETS`` with the simulator, the prompt-length
histogram ``PROMPT_TOKEN_BUCKETS``.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.values import MutexValue

from carpool_replica.buckets import LATENCY_BUCKETS, PROMPT_TOKEN_BUCKETS, geometric
from carpool_replica.limits import LimitsDocument

STEP_BUCKETS = geometric(0.0005, 5.0, 1.25)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# "invalid": the client's mistake (4xx other than 429); "error": the worker's fault (5xx).
OUTCOMES = ("ok", "rejected", "cancelled", "invalid", "error")
# Why a connection was dropped before its request reached a route (see server.py, app.py).
DROP_REASONS = ("header_timeout", "body_timeout", "client_disconnected", "over_connection_limit")
# A client that left before its first token waited in vain; one that left after it read part.
ABANDON_STAGES = ("before_first_token", "after_first_token")
LIMIT_NAMES = (
    "priority",
    "maxBatchSize",
    "batchWindowMilliseconds",
    "maxQueueWaitMilliseconds",
    "maxQueueLength",
)


def observe_each(child, values: list[float]) -> None:
    """``child.observe(v)`` for each value in order, with one lock per bucket touched instead of
    two per value: the same bucket counts and, added in the same order, the same sum to the bit.

    ``child`` is one labelled histogram that only the calling thread observes (the engine's
    latency histograms); readers may scrape it meanwhile. Where the histogram's storage is not
    the plain in-process one (multiprocess mode), each value is observed in turn.
    """
    total = getattr(child, "_sum", None)
    if type(total) is not MutexValue or any(math.isnan(v) for v in values):
        for v in values:
            child.observe(v)
        return
    bounds, buckets = child._upper_bounds, child._buckets
    counts: dict[int, int] = {}
    s = total.get()
    for v in values:
        s += v
        i = bisect_left(bounds, v)  # observe's bucket: the first bound >= v
        counts[i] = counts.get(i, 0) + 1
    total.set(s)
    for i, n in counts.items():
        buckets[i].inc(n)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ep = ["endpoint"]

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ep, buckets=LATENCY_BUCKETS, registry=r)

        self.queue_wait = hist(
            "carpool_queue_wait_seconds",
            "Arrival to the step that begins the request's prefill (waiting for a batch slot, "
            "then for its turn at the step's prefill budget).",
        )
        self.ttft = hist("carpool_time_to_first_token_seconds", "Arrival to the first token.")
        # TTFT = queue wait + service time; replicas and limits change only the queue wait.
        self.service_time = hist(
            "carpool_service_time_seconds",
            "The step that begins the request's prefill to its first token (its own prefill).",
        )
        self.inter_token = hist(
            "carpool_inter_token_latency_seconds", "Time between two tokens of one request."
        )
        self.duration = hist("carpool_request_duration_seconds", "Arrival to the last token.")
        self.requests = Counter(
            "carpool_requests", "Requests by outcome.", ["endpoint", "outcome"], registry=r
        )
        self.generated_tokens = Counter(
            "carpool_generated_tokens", "Tokens generated.", ep, registry=r
        )
        self.prompt_tokens = Counter(
            "carpool_prompt_tokens", "Prompt tokens prefilled.", ep, registry=r
        )
        # The spread of the prompts prices their prefill: it grows faster than the prompt.
        self.prompt_length = Histogram(
            "carpool_prompt_length_tokens",
            "Prompt tokens of each request whose prefill started.",
            ep,
            buckets=PROMPT_TOKEN_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge("carpool_requests_waiting", "Requests queued.", ep, registry=r)
        self.running = Gauge("carpool_requests_running", "Requests in the batch.", ep, registry=r)
        self.batch_size = Histogram(
            "carpool_batch_size",
            "Sequences in one engine step.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "carpool_step_duration_seconds", "One engine step.", buckets=STEP_BUCKETS, registry=r
        )
        self.kv_usage = Gauge(
            "carpool_kv_cache_usage_ratio", "KV cache tokens in use over capacity.", registry=r
        )
        # Per endpoint: its share of each step, its KV memory, what it cost, who left early.
        self.endpoint_batch_size = Histogram(
            "carpool_endpoint_batch_size",
            "The endpoint's sequences in one engine step (steps that ran any of them).",
            ep,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.kv_tokens = Gauge(
            "carpool_kv_cache_tokens",
            "KV cache tokens held by the endpoint's sequences.",
            ep,
            registry=r,
        )
        self.kv_capacity = Gauge(
            "carpool_kv_cache_capacity_tokens", "KV cache tokens the worker holds.", registry=r
        )
        self.engine_seconds = Counter(
            "carpool_engine_seconds",
            "Engine step time charged to the endpoint: each step split evenly among its sequences.",
            ep,
            registry=r,
        )
        self.abandoned = Counter(
            "carpool_requests_abandoned",
            "Requests whose client left before the end, by whether it had its first token.",
            ["endpoint", "stage"],
            registry=r,
        )
        self.preemptions = Counter(
            "carpool_preemptions",
            "Running requests preempted to make room for a higher priority (each resumes later).",
            ep,
            registry=r,
        )
        self.emulated = Gauge(
            "carpool_worker_emulated",
            "1 when no model runs: an emulated GPU sleeps each step's profiled time.",
            registry=r,
        )
        self.batch_limit = Gauge(
            "carpool_batch_limit", "The limits in force.", ["endpoint", "limit"], registry=r
        )
        self.limits_version = Gauge(
            "carpool_limits_version", "Version of the limits document in force.", registry=r
        )
        self.http_connections = Gauge(
            "carpool_http_connections", "HTTP connections open.", registry=r
        )
        self.http_dropped = Counter(
            "carpool_http_requests_dropped",
            "Requests dropped before a route answered them, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:
            self.http_dropped.labels(reason)
        self._limit_endpoints: set[str] = set()

    def set_limits(self, doc: LimitsDocument) -> None:
        for name in self._limit_endpoints - set(doc.endpoints):
            for limit in LIMIT_NAMES:
                self.batch_limit.remove(name, limit)
        for name, lim in doc.endpoints.items():
            for limit, value in lim.as_dict().items():
                self.batch_limit.labels(name, limit).set(value)
            for outcome in OUTCOMES:  # every series exists from the start: rate() needs a zero
                self.requests.labels(name, outcome)
            for stage in ABANDON_STAGES:
                self.abandoned.labels(name, stage)
            # An endpoint with no traffic yet must read as zero, not as a missing series: the
            # operator never scales down on missing data.
            for per_endpoint in (
                self.queue_wait,
                self.ttft,
                self.service_time,
                self.inter_token,
                self.duration,
                self.generated_tokens,
                self.prompt_tokens,
                self.prompt_length,
                self.endpoint_batch_size,
                self.engine_seconds,
                self.preemptions,
            ):
                per_endpoint.labels(name)
            for name_gauge in (self.waiting, self.running, self.kv_tokens):
                name_gauge.labels(name)
        for name in self._limit_endpoints - set(doc.endpoints):
            # A dropped endpoint has nothing waiting or running any more.
            for name_gauge in (self.waiting, self.running, self.kv_tokens):
                name_gauge.labels(name).set(0)
        self._limit_endpoints = set(doc.endpoints)
        self.limits_version.set(doc.version)

    def set_queue_counts(self, counts: dict[str, tuple[int, int]]) -> None:
        for name, (waiting, running) in counts.items():
            self.waiting.labels(name).set(waiting)
            self.running.labels(name).set(running)

    def observe_step(self, step_duration: float, step_requests, running) -> None:
        """Per endpoint: sequences in this step, its share of the step's time, KV held now."""
        sequences: dict[str, int] = {}
        for req in step_requests:
            sequences[req.endpoint] = sequences.get(req.endpoint, 0) + 1
        total = sum(sequences.values())
        for name, count in sequences.items():
            self.endpoint_batch_size.labels(name).observe(count)
            self.engine_seconds.labels(name).inc(step_duration * count / total)
        held = dict.fromkeys(self._limit_endpoints, 0)
        for req in running:
            held[req.endpoint] = held.get(req.endpoint, 0) + req.context_len
        for name, tokens in held.items():
            self.kv_tokens.labels(name).set(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
