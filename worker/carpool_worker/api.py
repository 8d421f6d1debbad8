"""The completion request and response shapes, validated by hand so every error names its field.

Contract: ``parse_completion(body, codec, max_context)`` returns :class:`CompletionParams` or
raises :class:`ApiError` (status 400 or 413) with a message for the client: a field this worker
does not know, or an OpenAI field it does not honour set to anything but its neutral value, is
refused by name. ``error_body`` is the JSON shape of every error the worker returns;
``completion_request_schema``, ``COMPLETION_SCHEMA`` and ``ERROR_SCHEMA`` describe the same
shapes for the OpenAPI document (schemathesis checks the two against each other).
``StopMatcher`` cuts generated text at the first stop string, holding back just enough text to
never stream half of one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .sampling import MIN_TEMPERATURE, MIN_TOP_P
from .tokenizer import TextCodec

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0
DEFAULT_MAX_TOKENS = 16

# The fields honoured here, with their JSON Schema. "model" and "user" are accepted and not
# used: one worker serves one model, and the endpoint comes from the X-Carpool-Endpoint header.
HONOURED = ("prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "n", "model", "user")
# OpenAI fields not honoured: accepted only at the value that changes nothing, which clients
# often send explicitly; any other value is refused rather than silently ignored.
NEUTRAL = {
    "logprobs": (None,),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None,),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "seed": (None,),
    "stream_options": (None,),
}


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


def _number(obj: dict, name: str, default: float, low: float, high: float):
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number", name)
    if value < low or value > high:
        raise ApiError(400, f"{name} must be in [{low}, {high}], got {value}", name)
    return float(value)


def _prompt_ids(prompt: Any, codec: TextCodec) -> list[int]:
    # OpenAI accepts a list of prompts; one request here carries exactly one.
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) > 1:
            raise ApiError(
                400,
                f"prompt holds {len(prompt)} prompts; only one prompt per request is supported "
                f"(send one request per prompt)",
                "prompt",
            )
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


def _check_fields(obj: dict) -> None:
    for name, value in obj.items():
        if name in ("model", "user"):
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string", name)
            continue
        if name in HONOURED:
            continue
        neutral = NEUTRAL.get(name)
        if neutral is None:
            raise ApiError(400, f"unknown field {name!r}", name)
        # bool is an int in Python: echo=true must not pass as best_of=1, nor 0 as false.
        if not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in neutral):
            allowed = " or ".join(json.dumps(v) for v in neutral)
            raise ApiError(
                400, f"{name} is not supported by this worker (only {allowed} is accepted)", name
            )


def _sampling(obj: dict) -> tuple[float, float]:
    temperature = _number(obj, "temperature", 1.0, 0.0, MAX_TEMPERATURE)
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise ApiError(
            400,
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], "
            f"got {temperature}",
            "temperature",
        )
    # A top_p below the floor would round to 0 on the device; ask for what was meant instead.
    top_p = _number(obj, "top_p", 1.0, MIN_TOP_P, 1.0)
    return temperature, top_p


def parse_completion(body: bytes, codec: TextCodec, max_context: int) -> CompletionParams:
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    _check_fields(obj)
    if "prompt" not in obj:
        raise ApiError(400, "prompt is required", "prompt")
    prompt_ids = _prompt_ids(obj["prompt"], codec)
    if len(prompt_ids) >= max_context:
        raise ApiError(
            400,
            f"prompt is {len(prompt_ids)} tokens; the context holds {max_context}",
            "prompt",
        )
    max_tokens = obj.get("max_tokens")
    if max_tokens is None:  # absent or null: OpenAI's "the default"
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ApiError(400, "max_tokens must be an integer", "max_tokens")
    if not 1 <= max_tokens <= max_context:
        raise ApiError(400, f"max_tokens must be in [1, {max_context}]", "max_tokens")
    # null is OpenAI's "the default" for every optional field.
    n = obj.get("n")
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise ApiError(400, "n must be 1: one completion per request", "n")
    stream = obj.get("stream")
    if stream is None:
        stream = False
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
    temperature, top_p = _sampling(obj)
    return CompletionParams(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        stream=stream,
    )


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def completion_request_schema(max_context: int, vocab_size: int) -> dict[str, Any]:
    """The JSON Schema of a completion request, for the OpenAPI document.

    What a schema cannot say is checked in ``parse_completion`` alone: a prompt plus max_tokens
    must fit the context, and a prompt string must not hold a lone surrogate.
    """
    text = {"type": "string", "minLength": 1}
    token_ids = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "integer", "minimum": 0, "maximum": vocab_size - 1},
    }
    stop_string = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
    properties: dict[str, Any] = {
        "prompt": {
            "description": "One prompt: a string, token ids, or a list holding one of those.",
            "anyOf": [
                text,
                token_ids,
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {"anyOf": [text, token_ids]},
                },
            ],
        },
        "max_tokens": _nullable(
            {"type": "integer", "minimum": 1, "maximum": max_context, "default": DEFAULT_MAX_TOKENS}
        ),
        "temperature": _nullable(
            {
                "anyOf": [
                    {"type": "number", "enum": [0]},
                    {"type": "number", "minimum": MIN_TEMPERATURE, "maximum": MAX_TEMPERATURE},
                ],
                "default": 1.0,
            }
        ),
        "top_p": _nullable({"type": "number", "minimum": MIN_TOP_P, "maximum": 1, "default": 1.0}),
        "stop": _nullable(
            {
                "anyOf": [
                    stop_string,
                    {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": stop_string},
                ]
            }
        ),
        "stream": _nullable({"type": "boolean", "default": False}),
        "n": _nullable({"type": "integer", "enum": [1]}),
        "model": _nullable({"type": "string", "description": "Accepted and not used."}),
        "user": _nullable({"type": "string", "description": "Accepted and not used."}),
    }
    for name, values in NEUTRAL.items():
        properties[name] = {"enum": list(values), "description": "Not supported: neutral only."}
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "additionalProperties": False,
    }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
        }
    },
}

COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["text_completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["index", "text", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "text": {"type": "string"},
                    "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                    "logprobs": {"type": "null"},
                },
            },
        },
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer", "minimum": 1},
                "completion_tokens": {"type": "integer", "minimum": 0},
                "total_tokens": {"type": "integer", "minimum": 1},
            },
        },
    },
}


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
