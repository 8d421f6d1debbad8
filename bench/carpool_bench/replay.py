"""Open-loop replay of arrivals against worker HTTP endpoints, recording what clients saw.

Contract: ``replay(schedule, directory, deadline_seconds)`` sends each :class:`Arrival` at its
time (open loop: a slow worker does not slow the arrivals) as a streamed completion of random
token ids, to the address in ``directory.addresses`` (name -> host:port) with the fewest
outstanding requests (a refused connection is retried once on another), and returns an
:class:`Outcome` (send, first-token and end times, HTTP status) for each request that finished
within ``deadline_seconds``. An outcome also holds the arrival time of each streamed chunk that
carries text (the first is the first token) and the generated token count from the stream's usage
chunk. ``Fixed(url)`` is a directory of one worker; the local cluster's ``PodDirectory`` follows a
pool's ready pods. ``wait_ready(url)`` waits for a worker's ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Iterable
from typing import Protocol

import httpx


@dataclasses.dataclass(frozen=True)
class Arrival:
    at_seconds: float
    endpoint: str
    prompt_tokens: int
    max_tokens: int


@dataclasses.dataclass
class Outcome:
    arrival: Arrival
    sent_at: float
    first_token_at: float | None = None
    finished_at: float | None = None
    status: int = 0
    pod: str = ""
    # When each streamed chunk with text arrived (the first one is the first token).
    token_times: list[float] = dataclasses.field(default_factory=list)
    # Generated tokens as the worker counted them (the stream's usage chunk), if it said.
    output_tokens: int | None = None

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    def read_event(self, data: str, at: float) -> None:
        """One server-sent ``data:`` payload received at ``at``."""
        if self.first_token_at is None:
            self.first_token_at = at
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("choices"):
            self.token_times.append(at)
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.output_tokens = usage["completion_tokens"]


class Directory(Protocol):
    addresses: dict[str, str]


class Fixed:
    """One worker at a fixed address (``http://host:port`` or ``host:port``)."""

    def __init__(self, url: str):
        self.addresses = {"worker": url.removeprefix("http://").rstrip("/")}


def _prompt(length: int, rng: random.Random) -> list[int]:
    return [rng.randrange(1, 250) for _ in range(length)]


async def _send(
    http: httpx.AsyncClient,
    directory: Directory,
    outstanding: dict[str, int],
    arrival: Arrival,
    origin: float,
    rng: random.Random,
) -> Outcome:
    outcome = Outcome(arrival, sent_at=time.monotonic() - origin)
    body = {
        "prompt": _prompt(arrival.prompt_tokens, rng),
        "max_tokens": arrival.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tried: set[str] = set()
    for _attempt in range(2):
        candidates = {p: a for p, a in directory.addresses.items() if p not in tried}
        if not candidates:
            break
        pod = min(candidates, key=lambda p: outstanding.get(p, 0))
        tried.add(pod)
        outstanding[pod] = outstanding.get(pod, 0) + 1
        try:
            async with http.stream(
                "POST",
                f"http://{candidates[pod]}/v1/completions",
                json=body,
                headers={"X-Carpool-Endpoint": arrival.endpoint},
            ) as response:
                outcome.status, outcome.pod = response.status_code, pod
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        outcome.read_event(line[5:].strip(), time.monotonic() - origin)
                outcome.finished_at = time.monotonic() - origin
                return outcome
        except httpx.ConnectError:
            continue  # the pod went away between refreshes: try another one
        except httpx.HTTPError:
            outcome.status = -1
            return outcome
        finally:
            outstanding[pod] -= 1
    outcome.status = -1
    return outcome


async def _replay(
    schedule: Iterable[Arrival],
    directory: Directory,
    deadline_seconds: float,
    on_outcome,
) -> list[Outcome]:
    rng = random.Random(7)
    outstanding: dict[str, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    timeout = httpx.Timeout(deadline_seconds, connect=2.0)
    origin = time.monotonic()
    tasks = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        for arrival in schedule:
            delay = arrival.at_seconds - (time.monotonic() - origin)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - origin > deadline_seconds:
                break
            task = asyncio.create_task(_send(http, directory, outstanding, arrival, origin, rng))
            if on_outcome is not None:
                task.add_done_callback(lambda t: t.cancelled() or on_outcome(t.result()))
            tasks.append(task)
        remaining = max(1.0, deadline_seconds - (time.monotonic() - origin))
        done, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else (set(), set())
        for task in pending:
            task.cancel()
    return [t.result() for t in done]


def replay(
    schedule: Iterable[Arrival],
    directory: Directory,
    deadline_seconds: float,
    on_outcome=None,
) -> list[Outcome]:
    """Blocking: replay ``schedule`` and return the outcomes of requests that finished."""
    return asyncio.run(_replay(schedule, directory, deadline_seconds, on_outcome))


def http_url(url: str) -> str:
    return url if url.startswith("http") else f"http://{url}"


def wait_ready(url: str, process=None, timeout: float = 600.0) -> None:
    """Until ``url``'s ``/readyz`` answers 200; RuntimeError if ``process`` (the worker, when
    started here) exits first or ``timeout`` seconds pass."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker exited with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{http_url(url)}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f} s")
