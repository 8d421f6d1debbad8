"""A scenario: the pool, the profile and the requests every policy of one comparison replays.

Contract:
- `load_pool(path)` reads an InferencePool manifest (YAML) and returns its `PoolSpec`;
  `load_profile(path)` reads a profile through `carpool_policy.Profile.from_dict`. Both raise
  `ScenarioError` naming the file and what is wrong.
- `build_requests(sources, rate_scale, duration, seed)` turns `ENDPOINT=SOURCE` pairs into one
  merged trace. A SOURCE is a synthetic pattern (`poisson:...`, see `carpool_sim.synthetic`) or
  the path of an Azure-format CSV. Recorded traces are compressed by `rate_scale`; when
  `duration` is given they are looped (or cut) to it. The run lasts `duration`, or else as long
  as the longest recorded trace after compression (3600 s when all sources are synthetic);
  synthetic patterns are generated for exactly that long, from `seed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from carpool_policy import PoolSpec, Profile, ProfileError, SpecError
from carpool_sim.synthetic import is_pattern, parse_pattern
from carpool_sim.trace import (
    Request,
    TraceError,
    load_azure_csv,
    loop_to,
    merge,
    scale_rate,
    trace_span_seconds,
)

DEFAULT_SYNTHETIC_SECONDS = 3600.0


class ScenarioError(ValueError):
    """A pool, profile or trace argument that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Scenario:
    spec: PoolSpec
    profile: Profile
    requests: list[Request]
    duration_seconds: float


def load_pool(path: str | Path) -> PoolSpec:
    try:
        manifest = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ScenarioError(f"--pool {path}: cannot read: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("kind") != "InferencePool":
        raise ScenarioError(f"--pool {path}: expected an InferencePool manifest")
    try:
        return PoolSpec.from_crd(manifest.get("spec") or {})
    except SpecError as error:
        raise ScenarioError(f"--pool {path}: {error}") from error


def load_profile(path: str | Path) -> Profile:
    try:
        return Profile.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, ProfileError) as error:
        raise ScenarioError(f"--profile {path}: {error}") from error


def parse_source(text: str) -> tuple[str, str]:
    endpoint, eq, source = text.partition("=")
    if not eq or not endpoint or not source:
        raise ScenarioError(f"--trace {text!r}: expected ENDPOINT=PATH or ENDPOINT=PATTERN")
    return endpoint, source


def build_requests(
    sources: list[tuple[str, str]],
    rate_scale: float = 1.0,
    duration_seconds: float | None = None,
    seed: int = 0,
) -> tuple[list[Request], float]:
    """Returns (merged requests, the run's duration in seconds)."""
    recorded: list[list[Request]] = []
    patterns = []
    try:
        for endpoint, source in sources:
            if is_pattern(source):
                patterns.append((endpoint, parse_pattern(source)))
            else:
                recorded.append(scale_rate(load_azure_csv(source, endpoint), rate_scale))
    except TraceError as error:
        raise ScenarioError(f"--trace: {error}") from error
    if duration_seconds is None:
        spans = [trace_span_seconds(t) for t in recorded]
        duration_seconds = max(spans, default=DEFAULT_SYNTHETIC_SECONDS)
    traces = [loop_to(t, duration_seconds, trace_span_seconds(t)) for t in recorded]
    rng = np.random.default_rng(seed)
    for endpoint, pattern in patterns:
        traces.append(pattern.generate(endpoint, duration_seconds, rng))
    return merge(traces), duration_seconds


def build_scenario(
    pool_path: str,
    profile_path: str,
    sources: list[str],
    rate_scale: float = 1.0,
    duration_seconds: float | None = None,
    seed: int = 0,
) -> Scenario:
    spec = load_pool(pool_path)
    profile = load_profile(profile_path)
    pairs = [parse_source(s) for s in sources]
    known = {e.name for e in spec.endpoints}
    for endpoint, _ in pairs:
        if endpoint not in known:
            raise ScenarioError(
                f"--trace {endpoint}=...: the pool has no endpoint {endpoint!r} "
                f"(it has {', '.join(sorted(known))})"
            )
    requests, duration = build_requests(pairs, rate_scale, duration_seconds, seed)
    if not requests:
        raise ScenarioError("--trace: the traces hold no requests")
    return Scenario(spec, profile, requests, duration)
