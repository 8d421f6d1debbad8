"""Load for a pool on the local cluster: arrival schedules and the pool's ready pods.

Contract: ``schedule_from_trace(...)`` turns a slice of an Azure-format trace
(``TIMESTAMP,ContextTokens,GeneratedTokens``) into arrivals, with an optional burst;
``poisson(...)`` makes a steady stream. ``PodDirectory`` finds the ready pods through the API
server (there is no kube-proxy locally, so the client balances) for
:func:`carpool_bench.replay.replay`, re-exported here with its ``Arrival`` and ``Outcome``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import itertools
import random
import threading
from pathlib import Path

from kubernetes import client

from carpool_bench.replay import Arrival, Outcome, replay

__all__ = ["Arrival", "Outcome", "PodDirectory", "poisson", "replay", "schedule_from_trace"]


def _parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.strip().replace(" ", "T")[:26]).timestamp()


def schedule_from_trace(
    path: Path,
    endpoint: str,
    *,
    start_seconds: float,
    duration_seconds: float,
    rate_multiplier: float = 1.0,
    token_divisor: float = 2.0,
    max_prompt_tokens: int = 1000,
    max_output_tokens: int = 16,
    burst: tuple[float, float, float] | None = None,
    timing: str = "trace",
    seed: int = 0,
) -> list[Arrival]:
    """Arrivals for ``[start, start + duration)`` of the trace.

    ``timing="trace"`` keeps the trace's own arrival times, thinned or repeated to
    ``rate_multiplier``; ``timing="poisson"`` keeps its request sizes, in order, but draws
    arrivals at the slice's mean rate times ``rate_multiplier`` (the trace's second-by-second
    swings otherwise dominate a short run). ``burst = (from, to, factor)`` multiplies the rate
    in that span. Token counts are divided by ``token_divisor`` and capped for a small model.
    """
    rng = random.Random(seed)
    with path.open() as handle:
        rows = [
            (_parse_time(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            for r in csv.DictReader(handle)
        ]
    origin = rows[0][0] + start_seconds
    window = [
        (stamp - origin, context, generated)
        for stamp, context, generated in rows
        if 0 <= stamp - origin < duration_seconds
    ]
    if not window:
        raise ValueError(
            f"the trace has no requests in [{start_seconds}, {start_seconds + duration_seconds}) s"
        )

    def factor_at(offset: float) -> float:
        in_burst = burst is not None and burst[0] <= offset < burst[1]
        return rate_multiplier * (burst[2] if in_burst else 1.0)

    def arrival(offset: float, context: int, generated: int) -> Arrival:
        return Arrival(
            at_seconds=offset,
            endpoint=endpoint,
            prompt_tokens=max(4, min(max_prompt_tokens, round(context / token_divisor))),
            max_tokens=max(1, min(max_output_tokens, generated)),
        )

    arrivals = []
    if timing == "poisson":
        mean_rate = len(window) / duration_seconds
        sizes = itertools.cycle([(c, g) for _, c, g in window])
        offset, ceiling = 0.0, mean_rate * max(factor_at(t) for t in (0.0, *(burst or ())[:1]))
        while True:  # thinning: a Poisson process whose rate follows factor_at
            offset += rng.expovariate(ceiling)
            if offset >= duration_seconds:
                break
            if rng.random() < mean_rate * factor_at(offset) / ceiling:
                arrivals.append(arrival(offset, *next(sizes)))
        return arrivals
    for offset, context, generated in window:
        factor = factor_at(offset)
        copies = int(factor) + (1 if rng.random() < factor - int(factor) else 0)
        for _ in range(copies):
            arrivals.append(arrival(offset + rng.random() * 0.05, context, generated))
    return sorted(arrivals, key=lambda a: a.at_seconds)


def poisson(
    endpoint: str,
    rate_per_second: float,
    duration_seconds: float,
    *,
    prompt_tokens: int,
    max_tokens: int,
    seed: int = 1,
) -> list[Arrival]:
    rng = random.Random(seed)
    arrivals, now = [], 0.0
    while True:
        now += rng.expovariate(rate_per_second)
        if now >= duration_seconds:
            return arrivals
        arrivals.append(Arrival(now, endpoint, prompt_tokens, max_tokens))


class PodDirectory:
    """Ready pod addresses of a label selector, refreshed in the background every second.

    EndpointSlices would be the usual source, but the API server refuses loopback addresses
    in them, and local pods live on loopback: so ask for the pods themselves.
    """

    def __init__(self, api: client.ApiClient, namespace: str, selector: str, port: int):
        self._core = client.CoreV1Api(api)
        self.namespace, self.selector, self.port = namespace, selector, port
        self.addresses: dict[str, str] = {}  # pod name -> "ip:port"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def refresh(self) -> None:
        found = {}
        for pod in self._core.list_namespaced_pod(
            self.namespace, label_selector=self.selector
        ).items:
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if ready and pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
                found[pod.metadata.name] = f"{pod.status.pod_ip}:{self.port}"
        self.addresses = found

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            # Keep the last known set while the API server is busy.
            with contextlib.suppress(Exception):
                self.refresh()

    def __enter__(self) -> PodDirectory:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
