"""A benchmark scenario written as data: one YAML file of the suite's scenarios folder.

Contract: `load_scenario_file(path)` reads one file and returns a `ScenarioFile`; anything it
cannot use raises `ScenarioError` naming the file and the field. The format:

```yaml
name: code-trace              # default: the file's stem
description: one line for the table
pool: PATH                    # an InferencePool manifest, relative to this file,
                              # or the manifest itself as a mapping
profile: PATH                 # a worker profile, relative to this file, or
                              # {path: PATH, max_seq_len: N} to set the context limit
duration_seconds: 3600        # the run's length
seed: 0                       # synthetic patterns and envelopes draw from it
rate_scales: [1, 2.5]         # one run of the scenario per scale (default [1])
sla_target: 0.99              # share of the reachable requests each endpoint must attain
goal_vs_static: 0.7           # optional: carpool's GPU-hours goal as a share of static's
traffic:                      # one entry per endpoint that gets traffic:
  ENDPOINT: SOURCE            #   a synthetic pattern (carpool_sim.synthetic) or a trace path
  ENDPOINT:                   #   a recorded trace under a daily envelope
    trace: PATH
    envelope: {low: 0.16, high: 1.83, period_seconds: 86400}
```

`ScenarioFile.build(rate_scale, duration_seconds=None, seed=None)` returns the `Scenario` every
policy of that run replays; `seed` (default the file's) draws another sample path of the same
traffic (the suite's `--seeds`). At `rate_scale` x: recorded traces are compressed x times and
looped to the duration (x times the load, same length; under an envelope, the envelope
multiplies that); patterns run at x times their rates. A shorter `duration_seconds` (the
suite's `--short`) also shrinks each envelope's period in proportion, so a short run still
holds one whole swing.
Endpoints draw in the order the file lists them, from one generator seeded by `seed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from carpool_policy import PoolSpec, Profile, ProfileError, SpecError
from carpool_sim.envelope import Envelope, under_envelope
from carpool_sim.scenario import Scenario, ScenarioError
from carpool_sim.synthetic import Pattern, is_pattern, parse_pattern
from carpool_sim.trace import (
    Request,
    TraceError,
    load_azure_csv,
    loop_to,
    merge,
    scale_rate,
    trace_span_seconds,
)

KEYS = {"name", "description", "pool", "profile", "duration_seconds", "seed", "rate_scales",
        "sla_target", "goal_vs_static", "traffic"}  # fmt: skip


@dataclass(frozen=True)
class Recorded:
    path: Path
    envelope: Envelope | None = None


@dataclass(frozen=True)
class ScenarioFile:
    name: str
    description: str
    path: Path
    spec: PoolSpec
    profile: Profile
    duration_seconds: float
    seed: int
    rate_scales: tuple[float, ...]
    sla_target: float
    traffic: dict[str, Pattern | Recorded] = field(default_factory=dict)
    goal_vs_static: float | None = None

    def build(
        self, rate_scale: float, duration_seconds: float | None = None, seed: int | None = None
    ) -> Scenario:
        duration = duration_seconds or self.duration_seconds
        shrink = duration / self.duration_seconds
        rng = np.random.default_rng(self.seed if seed is None else seed)
        traces: list[list[Request]] = []
        try:
            for endpoint, source in self.traffic.items():
                if isinstance(source, Pattern):
                    traces.append(source.scaled(rate_scale).generate(endpoint, duration, rng))
                    continue
                trace = scale_rate(load_azure_csv(source.path, endpoint), rate_scale)
                span = trace_span_seconds(trace)
                if source.envelope is None:
                    traces.append(loop_to(trace, duration, span))
                    continue
                e = source.envelope
                envelope = Envelope(e.low, e.high, e.period_seconds * shrink)
                traces.append(under_envelope(trace, envelope, duration, span, rng))
        except TraceError as error:
            raise ScenarioError(f"{self.path}: traffic: {error}") from error
        return Scenario(self.spec, self.profile, merge(traces), duration)


def _fail(path: Path, message: str) -> ScenarioError:
    return ScenarioError(f"{path}: {message}")


def _pool(path: Path, value: Any) -> PoolSpec:
    where = "pool"
    if isinstance(value, str):
        where = f"pool {value}"
        try:
            value = yaml.safe_load((path.parent / value).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise _fail(path, f"{where}: cannot read: {error}") from error
    if not isinstance(value, dict) or value.get("kind") != "InferencePool":
        raise _fail(path, f"{where}: expected an InferencePool manifest")
    try:
        return PoolSpec.from_crd(value.get("spec") or {})
    except SpecError as error:
        raise _fail(path, f"{where}: {error}") from error


def _profile(path: Path, value: Any) -> Profile:
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        raise _fail(path, "profile: expected a path or {path: PATH, max_seq_len: N}")
    unknown = set(value) - {"path", "max_seq_len"}
    if unknown:
        raise _fail(path, f"profile: unknown field {', '.join(sorted(unknown))}")
    try:
        data = json.loads((path.parent / value["path"]).read_text())
        profile = Profile.from_dict(data)
        if "max_seq_len" in value:
            profile = Profile.from_dict({**profile.to_dict(), "max_seq_len": value["max_seq_len"]})
    except (OSError, ValueError, ProfileError) as error:
        raise _fail(path, f"profile {value['path']}: {error}") from error
    return profile


def _source(path: Path, endpoint: str, value: Any) -> Pattern | Recorded:
    try:
        if isinstance(value, str) and is_pattern(value):
            return parse_pattern(value)
        if isinstance(value, str):
            return Recorded(path.parent / value)
        if isinstance(value, dict) and set(value) <= {"trace", "envelope"} and "trace" in value:
            envelope = value.get("envelope")
            if envelope is None:
                return Recorded(path.parent / value["trace"])
            fields = ("low", "high", "period_seconds")
            if not isinstance(envelope, dict) or set(envelope) != set(fields):
                raise TraceError("envelope: expected {low, high, period_seconds}")
            return Recorded(
                path.parent / value["trace"], Envelope(*(float(envelope[f]) for f in fields))
            )
    except (TraceError, TypeError, ValueError) as error:
        raise _fail(path, f"traffic {endpoint}: {error}") from error
    raise _fail(
        path, f"traffic {endpoint}: expected a pattern, a trace path or {{trace, envelope}}"
    )


def _number(path: Path, document: dict, key: str, default: float | None = None) -> float:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _fail(path, f"{key}: expected a number > 0, got {value!r}")
    return float(value)


def load_scenario_file(path: str | Path) -> ScenarioFile:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise _fail(path, f"cannot read: {error}") from error
    if not isinstance(document, dict):
        raise _fail(path, "expected a mapping of scenario fields")
    unknown = set(document) - KEYS
    if unknown:
        raise _fail(path, f"unknown field {', '.join(sorted(unknown))}: use {', '.join(KEYS)}")
    for key in ("pool", "profile", "duration_seconds", "traffic"):
        if key not in document:
            raise _fail(path, f"{key}: required")
    spec = _pool(path, document["pool"])
    traffic = document["traffic"]
    if not isinstance(traffic, dict) or not traffic:
        raise _fail(path, "traffic: expected ENDPOINT: SOURCE entries")
    known = {e.name for e in spec.endpoints}
    for endpoint in traffic:
        if endpoint not in known:
            raise _fail(path, f"traffic {endpoint}: the pool has no such endpoint "
                              f"(it has {', '.join(sorted(known))})")  # fmt: skip
    scales = document.get("rate_scales", [1])
    if not isinstance(scales, list) or not scales:
        raise _fail(path, "rate_scales: expected a list of numbers > 0")
    seed = document.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(path, f"seed: expected an integer, got {seed!r}")
    target = _number(path, document, "sla_target", 0.99)
    if target >= 1.0:
        raise _fail(path, f"sla_target: expected a share below 1, got {target}")
    return ScenarioFile(
        name=str(document.get("name", path.stem)),
        description=str(document.get("description", "")),
        path=path,
        spec=spec,
        profile=_profile(path, document["profile"]),
        duration_seconds=_number(path, document, "duration_seconds"),
        seed=seed,
        rate_scales=tuple(_number(path, {"rate_scales": s}, "rate_scales") for s in scales),
        sla_target=target,
        traffic={e: _source(path, e, v) for e, v in traffic.items()},
        goal_vs_static=(
            _number(path, document, "goal_vs_static") if "goal_vs_static" in document else None
        ),
    )


def load_folder(folder: str | Path) -> list[ScenarioFile]:
    """Every `*.yaml` scenario in `folder`, by file name."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ScenarioError(f"{folder}: no scenario files (*.yaml)")
    return [load_scenario_file(f) for f in files]
