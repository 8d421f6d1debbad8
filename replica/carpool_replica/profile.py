"""The worker profile (schema carpool.dev/profile/v2): one replica's step times, measured the
way the engine serves.

Contract: `Profile.from_dict(data)` is the one parser of the profile JSON (docs/profile.md); it
raises `ProfileError` naming the bad field.
- `step_seconds(batch, context)`: one decode step with `batch` running sequences of mean context
  `context` tokens, interpolated linearly in both (extrapolated linearly past the largest
  measured batch or context, never below the smallest measured time).
- `chunk_seconds(tokens, offset)`: one prefill chunk of `tokens` prompt tokens that starts
  `offset` tokens into its prompt (attention reads the `offset` tokens already cached, so the
  tenth chunk of a long prompt costs more than the first); interpolated the same way.
- `prefill_seconds(tokens)`: a whole prompt prefilled alone, in chunks of
  `prefill_chunk_tokens` as the engine runs it: the sum of its chunks.
- A step that mixes prefill chunks and decodes costs the sum of its parts; the profile's `mixed`
  points are measured to check that (`carpool fidelity` reports the error).
All are monotone non-decreasing when the measurements are.
`kv_block_tokens` is the KV cache's block (page) size; profiles from before paged KV lack it and
read as `DEFAULT_KV_BLOCK_TOKENS`.

Schema v1 (one-shot prefill times, no chunk size, no context limit) is converted on read, as
docs/profile.md says: a chunk at an offset costs what the one-shot curve adds between the two
lengths, the chunk size is 2,048 tokens, and the context is `kv_cache_tokens / max_batch_size`
(v1 workers had one slot of that size per sequence).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

PROFILE_SCHEMA = "carpool.dev/profile/v2"
PROFILE_SCHEMA_V1 = "carpool.dev/profile/v1"
# What v1 workers (and so v1 profiles) used on a GPU.
V1_PREFILL_CHUNK_TOKENS = 2048


# Tokens per KV block of the worker's paged cache, where a profile does not say.
DEFAULT_KV_BLOCK_TOKENS = 64


class ProfileError(ValueError):
    """A profile document that cannot be read; the message names the field."""


@dataclass(frozen=True)
class DecodePoint:
    batch_size: int
    context_tokens: int
    step_seconds: float


@dataclass(frozen=True)
class ChunkPoint:
    chunk_tokens: int
    offset_tokens: int
    seconds: float


@dataclass(frozen=True)
class MixedPoint:
    batch_size: int
    context_tokens: int
    chunk_tokens: int
    offset_tokens: int
    seconds: float


@dataclass(frozen=True)
class Profile:
    model: str
    device: str
    kv_cache_tokens: int
    max_batch_size: int
    max_seq_len: int
    prefill_chunk_tokens: int
    decode: tuple[DecodePoint, ...]
    chunks: tuple[ChunkPoint, ...]
    mixed: tuple[MixedPoint, ...] = ()
    dtype: str = ""
    measured_at: str = ""
    kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if not isinstance(data, Mapping):
            raise ProfileError("profile: must be a JSON object")
        schema = data.get("schema")
        if schema == PROFILE_SCHEMA_V1:
            return _from_v1(data)
        if schema != PROFILE_SCHEMA:
            raise ProfileError(
                f"schema: must be {PROFILE_SCHEMA!r} (or {PROFILE_SCHEMA_V1!r}, converted), "
                f"got {schema!r}; measure a new profile with `carpool profile`"
            )
        return cls(
            model=str(data.get("model", "")),
            device=str(data.get("device", "")),
            dtype=str(data.get("dtype", "")),
            measured_at=str(data.get("measured_at", "")),
            kv_cache_tokens=_number(data, "kv_cache_tokens", "profile", int),
            max_batch_size=_number(data, "max_batch_size", "profile", int),
            max_seq_len=_number(data, "max_seq_len", "profile", int),
            prefill_chunk_tokens=_number(data, "prefill_chunk_tokens", "profile", int),
            kv_block_tokens=(
                _number(data, "kv_block_tokens", "profile", int)
                if "kv_block_tokens" in data
                else DEFAULT_KV_BLOCK_TOKENS
            ),
            decode=_decode_points(data),
            chunks=tuple(
                ChunkPoint(
                    chunk_tokens=_number(p, "chunk_tokens", f"prefill_chunks[{i}]", int),
                    offset_tokens=_number(
                        p, "offset_tokens", f"prefill_chunks[{i}]", int, zero_ok=True
                    ),
                    seconds=_number(p, "seconds", f"prefill_chunks[{i}]", float),
                )
                for i, p in enumerate(_list(data, "prefill_chunks"))
            ),
            mixed=tuple(
                MixedPoint(
                    batch_size=_number(p, "batch_size", f"mixed[{i}]", int),
                    context_tokens=_number(p, "context_tokens", f"mixed[{i}]", int),
                    chunk_tokens=_number(p, "chunk_tokens", f"mixed[{i}]", int),
                    offset_tokens=_number(p, "offset_tokens", f"mixed[{i}]", int, zero_ok=True),
                    seconds=_number(p, "seconds", f"mixed[{i}]", float),
                )
                for i, p in enumerate(data.get("mixed") or [])
            ),
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
            "max_seq_len": self.max_seq_len,
            "prefill_chunk_tokens": self.prefill_chunk_tokens,
            "kv_block_tokens": self.kv_block_tokens,
            "decode": [vars(p) for p in self.decode],
            "prefill_chunks": [vars(p) for p in self.chunks],
            "mixed": [vars(p) for p in self.mixed],
        }

    def step_seconds(self, batch_size: float, context_tokens: float) -> float:
        """One decode step's time for `batch_size` sequences of mean context `context_tokens`."""
        return _bilinear(self._decode_curves, max(1.0, batch_size), max(0.0, context_tokens))

    def chunk_seconds(self, chunk_tokens: float, offset_tokens: float) -> float:
        """One prefill chunk of `chunk_tokens` tokens starting `offset_tokens` into its prompt."""
        return _bilinear(
            self._chunk_curves, max(1.0, chunk_tokens), max(0.0, offset_tokens), proportional=True
        )

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """A whole prompt prefilled alone, chunk by chunk as the engine runs it."""
        total, offset, remaining = 0.0, 0, max(1, round(prompt_tokens))
        while remaining > 0:
            chunk = min(remaining, self.prefill_chunk_tokens)
            total += self.chunk_seconds(chunk, offset)
            offset, remaining = offset + chunk, remaining - chunk
        return total

    @cached_property
    def _decode_curves(self) -> list[tuple[float, list[tuple[float, float]]]]:
        return _curves((p.context_tokens, p.batch_size, p.step_seconds) for p in self.decode)

    @cached_property
    def _chunk_curves(self) -> list[tuple[float, list[tuple[float, float]]]]:
        return _curves((p.offset_tokens, p.chunk_tokens, p.seconds) for p in self.chunks)


def _from_v1(data: Mapping[str, Any]) -> Profile:
    """A v1 profile as v2: each chunk costs what the one-shot curve adds over its span."""
    one_shot = sorted(
        (
            _number(p, "prompt_tokens", f"prefill[{i}]", int),
            _number(p, "seconds", f"prefill[{i}]", float),
        )
        for i, p in enumerate(_list(data, "prefill"))
    )
    kv_cache_tokens = _number(data, "kv_cache_tokens", "profile", int)
    max_batch_size = _number(data, "max_batch_size", "profile", int)
    curve = [(float(n), t) for n, t in one_shot]
    chunks = []
    for chunk in sorted({n for n, _ in one_shot}):
        for offset in sorted({0} | {n for n, _ in one_shot}):
            seconds = _interpolate(curve, offset + chunk, proportional=True)
            if offset:
                seconds -= _interpolate(curve, offset, proportional=True)
            chunks.append(ChunkPoint(chunk, offset, max(seconds, 1e-6)))
    return Profile(
        model=str(data.get("model", "")),
        device=str(data.get("device", "")),
        dtype=str(data.get("dtype", "")),
        measured_at=str(data.get("measured_at", "")),
        kv_cache_tokens=kv_cache_tokens,
        max_batch_size=max_batch_size,
        max_seq_len=max(1, kv_cache_tokens // max_batch_size),
        prefill_chunk_tokens=V1_PREFILL_CHUNK_TOKENS,
        decode=_decode_points(data),
        chunks=tuple(chunks),
    )


def _decode_points(data: Mapping[str, Any]) -> tuple[DecodePoint, ...]:
    return tuple(
        DecodePoint(
            batch_size=_number(p, "batch_size", f"decode[{i}]", int),
            context_tokens=_number(p, "context_tokens", f"decode[{i}]", int, zero_ok=True),
            step_seconds=_number(p, "step_seconds", f"decode[{i}]", float),
        )
        for i, p in enumerate(_list(data, "decode"))
    )


def _curves(points) -> list[tuple[float, list[tuple[float, float]]]]:
    """(outer, inner, seconds) points -> one inner curve per measured outer value, sorted."""
    by_outer: dict[float, list[tuple[float, float]]] = {}
    for outer, inner, seconds in points:
        by_outer.setdefault(float(outer), []).append((float(inner), seconds))
    return [(o, sorted(by_outer[o])) for o in sorted(by_outer)]


def _bilinear(curves, inner: float, outer: float, proportional: bool = False) -> float:
    """Interpolates along each inner curve at `inner`, then across the outer values at `outer`."""
    values = [(o, _interpolate(curve, inner, proportional)) for o, curve in curves]
    return _interpolate(values, outer)


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
