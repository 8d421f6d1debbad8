"""The worker profile (schema carpool.dev/profile/v1): one replica's measured speed.

Contract: `Profile.from_dict(data)` is the one parser of the profile JSON (docs/interfaces.md);
it raises `ProfileError` naming the bad field. `step_seconds(batch, context)` is the time of one
decode step with `batch` running sequences of mean context `context` tokens, interpolated
linearly in both (and extrapolated linearly past the largest measured batch or context, never
below the smallest measured time). `prefill_seconds(tokens)` is the time to prefill one prompt,
interpolated linearly and extrapolated linearly past the largest point; below the smallest point
it is that point's time (short prompts are dominated by fixed overhead). Both are monotone
non-decreasing when the measurements are.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

PROFILE_SCHEMA = "carpool.dev/profile/v1"


class ProfileError(ValueError):
    """A profile document that cannot be read; the message names the field."""


@dataclass(frozen=True)
class DecodePoint:
    batch_size: int
    context_tokens: int
    step_seconds: float


@dataclass(frozen=True)
class PrefillPoint:
    prompt_tokens: int
    seconds: float


@dataclass(frozen=True)
class Profile:
    model: str
    device: str
    kv_cache_tokens: int
    max_batch_size: int
    decode: tuple[DecodePoint, ...]
    prefill: tuple[PrefillPoint, ...]
    dtype: str = ""
    measured_at: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if not isinstance(data, Mapping):
            raise ProfileError("profile: must be a JSON object")
        if data.get("schema") != PROFILE_SCHEMA:
            raise ProfileError(f"schema: must be {PROFILE_SCHEMA!r}, got {data.get('schema')!r}")
        decode = tuple(
            DecodePoint(
                batch_size=_number(p, "batch_size", f"decode[{i}]", int),
                context_tokens=_number(p, "context_tokens", f"decode[{i}]", int, zero_ok=True),
                step_seconds=_number(p, "step_seconds", f"decode[{i}]", float),
            )
            for i, p in enumerate(_list(data, "decode"))
        )
        prefill = tuple(
            PrefillPoint(
                prompt_tokens=_number(p, "prompt_tokens", f"prefill[{i}]", int),
                seconds=_number(p, "seconds", f"prefill[{i}]", float),
            )
            for i, p in enumerate(_list(data, "prefill"))
        )
        return cls(
            model=str(data.get("model", "")),
            device=str(data.get("device", "")),
            dtype=str(data.get("dtype", "")),
            measured_at=str(data.get("measured_at", "")),
            kv_cache_tokens=_number(data, "kv_cache_tokens", "profile", int),
            max_batch_size=_number(data, "max_batch_size", "profile", int),
            decode=decode,
            prefill=prefill,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "measured_at": self.measured_at,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_batch_size": self.max_batch_size,
            "decode": [
                {
                    "batch_size": p.batch_size,
                    "context_tokens": p.context_tokens,
                    "step_seconds": p.step_seconds,
                }
                for p in self.decode
            ],
            "prefill": [
                {"prompt_tokens": p.prompt_tokens, "seconds": p.seconds} for p in self.prefill
            ],
        }

    def step_seconds(self, batch_size: float, context_tokens: float) -> float:
        """One decode step's time for `batch_size` sequences of mean context `context_tokens`."""
        curves = self._decode_curves
        contexts = [c for c, _ in curves]
        values = [_interpolate(curve, max(1.0, batch_size)) for _, curve in curves]
        return _interpolate(list(zip(contexts, values, strict=True)), max(0.0, context_tokens))

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """The time to prefill one prompt of `prompt_tokens` tokens."""
        return _interpolate(self._prefill_curve, max(0.0, prompt_tokens), proportional=True)

    @cached_property
    def _prefill_curve(self) -> list[tuple[float, float]]:
        return sorted((float(p.prompt_tokens), p.seconds) for p in self.prefill)

    @cached_property
    def _decode_curves(self) -> list[tuple[float, list[tuple[float, float]]]]:
        # One step-time-vs-batch curve per measured context length, sorted by context.
        by_context: dict[int, list[tuple[float, float]]] = {}
        for p in self.decode:
            by_context.setdefault(p.context_tokens, []).append(
                (float(p.batch_size), p.step_seconds)
            )
        return [(float(c), sorted(by_context[c])) for c in sorted(by_context)]


def _interpolate(
    points: Sequence[tuple[float, float]], x: float, proportional: bool = False
) -> float:
    """Piecewise-linear through (x, y) points; flat below, linear above the range.

    Extrapolation above the last point uses the last segment's slope and never goes below the
    last measured value. With a single point the curve is flat, or, when `proportional`,
    a line through the origin (prefill time grows with the prompt).
    """
    merged: dict[float, float] = {}
    for px, py in points:  # repeated measurements of one x: keep the slowest, to be safe
        merged[px] = max(py, merged.get(px, py))
    points = sorted(merged.items())
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return points[0][1]
    if x >= xs[-1]:
        x_last, y_last = points[-1]
        if len(points) == 1:
            return y_last * x / x_last if proportional and x_last > 0 else y_last
        x_prev, y_prev = points[-2]
        slope = (y_last - y_prev) / (x_last - x_prev)
        return max(y_last, y_last + slope * (x - x_last))
    i = bisect.bisect_right(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise ProfileError(f"{key}: must be a non-empty list")
    return value


def _number(data: Any, key: str, where: str, kind: type, zero_ok: bool = False) -> Any:
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: must be an object")
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ProfileError(f"{where}.{key}: must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ProfileError(f"{where}.{key}: must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ProfileError(f"{where}.{key}: must be positive, got {value!r}")
    return kind(value)
