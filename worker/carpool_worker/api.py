"""The completion request and response shapes, validated by hand so every error names its field.

Contract: ``parse_completion(body, codec, max_context)`` returns :class:`CompletionParams` or
raises :class:`ApiError` (status 400 or 413) with a message for the client. ``error_body``
is the JSON shape of every error the worker returns. ``StopMatcher`` cuts generated text at
the first stop string, holding back just enough text to never stream half of one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .tokenizer import TextCodec

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, **headers: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "unavailable_error",
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": status,
        }
    }


@dataclass
class CompletionParams:
    prompt_ids: list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stream: bool = False


def _reject_constant(name: str) -> float:
    raise ApiError(400, f"the body holds {name}, which is not valid JSON")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ApiError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "the body is nested too deeply") from exc


def _number(obj: dict, name: str, default: float, low: float, high: float, low_open=False):
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number", name)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(400, f"{name} must be in {bracket}{low}, {high}], got {value}", name)
    return float(value)


def _prompt_ids(prompt: Any, codec: TextCodec) -> list[int]:
    # OpenAI accepts a list of prompts; one request here carries exactly one.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt is empty", "prompt")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(
                400, "prompt is not valid Unicode (it holds a lone surrogate)", "prompt"
            ) from exc
        return codec.encode(prompt)
    if isinstance(prompt, list) and prompt:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")
        bad = next((t for t in prompt if not 0 <= t < codec.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400,
                f"prompt token id {bad} is outside the vocabulary [0, {codec.vocab_size})",
                "prompt",
            )
        return list(prompt)
    raise ApiError(400, "prompt must be a non-empty string or list of token ids", "prompt")


def parse_completion(body: bytes, codec: TextCodec, max_context: int) -> CompletionParams:
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    if "prompt" not in obj:
        raise ApiError(400, "prompt is required", "prompt")
    prompt_ids = _prompt_ids(obj["prompt"], codec)
    if len(prompt_ids) >= max_context:
        raise ApiError(
            400,
            f"prompt is {len(prompt_ids)} tokens; the context holds {max_context}",
            "prompt",
        )
    max_tokens = obj.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ApiError(400, "max_tokens must be an integer", "max_tokens")
    if not 1 <= max_tokens <= max_context:
        raise ApiError(400, f"max_tokens must be in [1, {max_context}]", "max_tokens")
    n = obj.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ApiError(400, "n must be 1: one completion per request", "n")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    stop = obj.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)
    ):
        raise ApiError(
            400,
            f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings "
            f"of at most {MAX_STOP_CHARS} characters",
            "stop",
        )
    return CompletionParams(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=_number(obj, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(obj, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=stop,
        stream=stream,
    )


class StopMatcher:
    """Feeds text deltas; returns what may be sent and whether a stop string was reached."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        self.pending += delta
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        # Keep the tail that could still be the start of a stop string.
        safe = max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:safe], self.pending[safe:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
