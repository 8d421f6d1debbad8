"""The completion request and response shapes, validated by hand so every error names its field.

Contract: ``parse_completion(body, codec, max_context)`` returns :class:`CompletionParams` or
raises :class:`ApiError` (status 400 or 413) with a message for the client: a field this worker
does not know, or an OpenAI field it does not honour set to anything but its neutral value, is
refused by name. The helpers the chat API shares (``check_fields``, ``parse_generation``) live
here too, so both routes refuse the same things with the same words. ``error_body`` is the JSON
shape of every error the worker returns; ``completion_request_schema``, ``COMPLETION_SCHEMA``
(from ``completion_response_schema``, the response envelope the chat route shares) and
``ERROR_SCHEMA`` describe the same shapes for the OpenAPI document (schemathesis checks the two
against each other). ``TEXT_COMPLETION`` shapes a text completion's responses and stream
chunks. ``StopMatcher`` cuts generated text at the first stop string, holding back just enough
text to never stream half of one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .sampling_floors import MIN_TEMPERATURE, MIN_TOP_P

if TYPE_CHECKING:  # the tokenizer imports the chat template, which imports this module
    from .tokenizer import TextCodec

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0
DEFAULT_MAX_TOKENS = 16

# The fields honoured here, with their JSON Schema. "model" and "user" are accepted and not
# used: one worker serves one model, and the endpoint comes from the X-Carpool-Endpoint header.
HONOURED = (
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "n",
    "model",
    "user",
)
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
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


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
        # Thousands of ids: the common case (all plain ints, all in range) is checked in C; the
        # id by id checks below only run to find what to complain about.
        if set(map(type, prompt)) != {int} and not all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")
        in_range = min(prompt) >= 0 and max(prompt) < codec.vocab_size
        bad = None if in_range else next(t for t in prompt if not 0 <= t < codec.vocab_size)
        if bad is not None:
            raise ApiError(
                400,
                f"prompt token id {bad} is outside the vocabulary [0, {codec.vocab_size})",
                "prompt",
            )
        return list(prompt)
    raise ApiError(400, "prompt must be a non-empty string or list of token ids", "prompt")


def check_fields(obj: dict, honoured: tuple[str, ...], neutral_values: dict) -> None:
    """Refuses, by name, an unknown field and a not-honoured one at a value that would matter."""
    for name, value in obj.items():
        if name in ("model", "user"):
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string", name)
            continue
        if name in honoured:
            continue
        neutral = neutral_values.get(name)
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


def parse_object(body: bytes) -> dict:
    obj = parse_json(body)
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    return obj


def parse_completion(body: bytes, codec: TextCodec, max_context: int) -> CompletionParams:
    obj = parse_object(body)
    check_fields(obj, HONOURED, NEUTRAL)
    if "prompt" not in obj:
        raise ApiError(400, "prompt is required", "prompt")
    prompt_ids = _prompt_ids(obj["prompt"], codec)
    if len(prompt_ids) >= max_context:
        raise ApiError(
            400, f"prompt is {len(prompt_ids)} tokens; the context holds {max_context}", "prompt"
        )
    return parse_generation(obj, prompt_ids, max_context, DEFAULT_MAX_TOKENS)


def parse_max_tokens(obj: dict, name: str, max_context: int, default: int) -> int:
    value = obj.get(name)
    if value is None:  # absent or null: OpenAI's "the default"
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer", name)
    if not 1 <= value <= max_context:
        raise ApiError(400, f"{name} must be in [1, {max_context}]", name)
    return value


def _stream(obj: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = obj.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = obj.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    for key in options:
        if key != "include_usage":
            raise ApiError(
                400,
                f"stream_options.{key} is not supported (only include_usage is)",
                "stream_options",
            )
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", "stream_options")
    return stream, bool(include)


def _stop(obj: dict) -> list[str]:
    stop = obj.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
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
    return stop


def parse_generation(
    obj: dict, prompt_ids: list[int], max_context: int, default_max_tokens: int, name="max_tokens"
) -> CompletionParams:
    """The fields every generating route shares, read from a checked request object."""
    max_tokens = parse_max_tokens(obj, name, max_context, default_max_tokens)
    # null is OpenAI's "the default" for every optional field.
    n = obj.get("n")
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise ApiError(400, "n must be 1: one completion per request", "n")
    stream, include_usage = _stream(obj)
    stop = _stop(obj)
    temperature, top_p = _sampling(obj)
    return CompletionParams(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        stream=stream,
        include_usage=include_usage,
    )


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def completion_request_schema(max_context: int, vocab_size: int) -> dict[str, Any]:
    """The JSON Schema of a completion request, for the OpenAPI document.

    What a schema cannot say is checked in ``parse_completion`` alone: a prompt plus max_tokens
    must fit the context, a prompt string must not hold a lone surrogate, and stream_options
    needs stream: true.
    """
    text = {"type": "string", "minLength": 1}
    token_ids = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "integer", "minimum": 0, "maximum": vocab_size - 1},
    }
    prompt = {
        "description": "One prompt: a string, token ids, or a list holding one of those.",
        "anyOf": [
            text,
            token_ids,
            {"type": "array", "minItems": 1, "maxItems": 1, "items": {"anyOf": [text, token_ids]}},
        ],
    }
    properties = {"prompt": prompt} | generation_properties(
        max_context, DEFAULT_MAX_TOKENS, NEUTRAL
    )
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "additionalProperties": False,
    }


def generation_properties(
    max_context: int, default_max_tokens: int | None, neutral_values: dict
) -> dict[str, Any]:
    """The JSON Schema of the fields ``parse_generation`` reads, and of the neutral-only ones."""
    stop_string = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
    max_tokens = {"type": "integer", "minimum": 1, "maximum": max_context}
    if default_max_tokens is not None:
        max_tokens["default"] = default_max_tokens
    properties: dict[str, Any] = {
        "max_tokens": _nullable(max_tokens),
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
        "stream_options": _nullable(
            {
                "type": "object",
                "description": "Only with stream: true. include_usage adds a last chunk with "
                "the usage (and empty choices).",
                "properties": {"include_usage": _nullable({"type": "boolean"})},
                "additionalProperties": False,
            }
        ),
        "n": _nullable({"type": "integer", "enum": [1]}),
        "model": _nullable({"type": "string", "description": "Accepted and not used."}),
        "user": _nullable({"type": "string", "description": "Accepted and not used."}),
    }
    for name, values in neutral_values.items():
        properties[name] = {"enum": list(values), "description": "Not supported: neutral only."}
    return properties


USAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 1},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 1},
    },
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


def completion_response_schema(
    object_name: str, content: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The OpenAI response envelope of one kind of completion: `object_name` in its `object`
    field, one choice whose `content` (field name: schema) carries the text."""
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": [object_name]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", *content, "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        **content,
                        "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                        "logprobs": {"type": "null"},
                    },
                },
            },
            "usage": USAGE_SCHEMA,
        },
    }


COMPLETION_SCHEMA = completion_response_schema("text_completion", {"text": {"type": "string"}})


class Shape:
    """How one kind of completion looks on the wire: the whole response and its stream chunks."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl"

    def choice(self, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}

    def whole_choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        return self.choice(text, finish_reason, first=True)


TEXT_COMPLETION = Shape()


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
