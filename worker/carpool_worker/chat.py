"""Chat completions: messages -> prompt text through the checkpoint's chat template.

Contract: ``load_chat_template(checkpoint_dir, bos_token, eos_token)`` returns a
:class:`ChatTemplate` from the checkpoint's ``tokenizer_config.json`` (its ``chat_template``,
or the template named ``default`` when it holds several) or its ``chat_template.jinja``, and
:data:`DEFAULT_CHAT_TEMPLATE` when there is neither (the presets); a template that is not JSON
or does not compile raises :class:`ChatTemplateError` naming the file, so the worker fails to
load rather than serve a chat route that cannot work. ``ChatTemplate.render(messages)`` renders
as Hugging Face's ``apply_chat_template(add_generation_prompt=True, tokenize=False)`` does:
a sandboxed Jinja2 environment with ``raise_exception``, ``tojson``, ``strftime_now``, the
``generation`` tag and ``loopcontrols``, and the special tokens (``bos_token``, ``eos_token``,
...) in the context. ``parse_chat(body, codec, max_context)`` validates a chat request and
returns the same :class:`~carpool_worker.api.CompletionParams` a text completion does, or
raises :class:`~carpool_worker.api.ApiError` (400) naming the field: text content only, no
tools, one choice. ``CHAT_COMPLETION`` shapes the responses and stream chunks.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import api
from .api import ApiError, Shape

if TYPE_CHECKING:
    from .tokenizer import TextCodec

# For checkpoints without a template and the random-weight presets, which were never trained on
# any chat format: one line per message, then the assistant's turn.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

ROLES = ("system", "developer", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name")

# The chat fields honoured here; "model" and "user" are accepted and not used (api.HONOURED).
HONOURED = (
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "n",
    "model",
    "user",
)
# OpenAI chat fields not honoured: accepted only at the value that changes nothing (clients send
# them explicitly), refused by name otherwise. Tools, JSON mode and audio are not served.
NEUTRAL: dict[str, tuple] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "seed": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "store": (None, False),
    "metadata": (None,),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "web_search_options": (None,),
}


class ChatTemplateError(ValueError):
    """The checkpoint's chat template cannot be read or compiled."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks the assistant's tokens for training
    masks in Hugging Face; rendering a prompt needs only its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML; templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format):
    return datetime.now().strftime(format)


class _Dict:
    # ``dict(...)`` in a template without handing it the type itself (and its attributes).
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    # Templates come with checkpoints from anywhere: no dunder or private attributes on a
    # namespace, the way to reach the interpreter's internals from inside the sandbox.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not set the attribute {name!r} on a namespace"
            )


def compile_template(source: str) -> jinja2.Template:
    """Compiles ``source`` in the environment Hugging Face's ``apply_chat_template`` uses."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env.from_string(source)


class ChatTemplate:
    """A compiled chat template and the special tokens it sees."""

    def __init__(self, source: str, origin: str, special_tokens: dict[str, str]):
        self.source, self.origin, self.special_tokens = source, origin, special_tokens
        try:
            self.template = compile_template(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"{origin}: the chat template does not compile: {exc}") from exc

    def render(self, messages: list[dict]) -> str:
        """The prompt text; ApiError 400 when the template refuses the messages."""
        try:
            return self.template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=True,
                **self.special_tokens,
            )
        except jinja2.TemplateError as exc:  # raise_exception, and the sandbox's refusals
            message = f"the chat template refused the messages: {exc}"
            raise ApiError(400, message, "messages") from exc
        except Exception as exc:  # the template's own code failing on what the client sent
            raise ApiError(
                400,
                f"the chat template failed on the messages: {type(exc).__name__}: {exc}",
                "messages",
            ) from exc


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json holds a token as a string or as an AddedToken {"content": ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_template(checkpoint_dir: Path | None, bos_token: str, eos_token: str) -> ChatTemplate:
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    if checkpoint_dir is None:
        return ChatTemplate(DEFAULT_CHAT_TEMPLATE, "the default chat template", tokens)
    config_path = checkpoint_dir / "tokenizer_config.json"
    source, origin = None, str(config_path)
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"{config_path}: not JSON: {exc}") from exc
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if (text := _token_text(config.get(name))) is not None:
                tokens[name] = text
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the one called "default"
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
            if source is None:
                raise ChatTemplateError(f"{config_path}: no chat template named 'default'")
    jinja_path = checkpoint_dir / "chat_template.jinja"
    if source is None and jinja_path.is_file():
        source, origin = jinja_path.read_text(), str(jinja_path)
    if source is None:
        return ChatTemplate(DEFAULT_CHAT_TEMPLATE, "the default chat template", tokens)
    if not isinstance(source, str):
        raise ChatTemplateError(f"{origin}: chat_template must be a string")
    return ChatTemplate(source, origin, tokens)


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or text parts joined by newlines (as vLLM joins them)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"{where} must be a string or a non-empty list of text parts", where)
    texts = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{at} must be an object", at)
        kind = part.get("type")
        if kind != "text":
            raise ApiError(
                400,
                f"{at}.type is {json.dumps(kind)}: only text content is supported "
                "(no images, audio or files)",
                f"{at}.type",
            )
        extra = sorted(set(part) - {"type", "text"})
        if extra:
            raise ApiError(400, f"{at}.{extra[0]} is not supported", f"{at}.{extra[0]}")
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{at}.text must be a string", f"{at}.text")
        texts.append(part["text"])
    return "\n".join(texts)


def _message(value: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(value, dict):
        raise ApiError(400, f"{where} must be an object", where)
    for key, item in value.items():
        if (key, item) in (("tool_calls", None), ("tool_calls", []), ("function_call", None)):
            continue  # what some clients send on an assistant message without calls
        if key not in MESSAGE_KEYS:
            why = "tool calls are not supported" if "call" in key else "not a known message field"
            raise ApiError(400, f"{where}.{key} is not supported ({why})", f"{where}.{key}")
    role = value.get("role")
    if role not in ROLES:
        detail = ""
        if role in ("tool", "function"):
            detail = f" ({role} messages answer tool calls, which are not supported)"
        raise ApiError(
            400, f"{where}.role must be one of {', '.join(ROLES)}{detail}", f"{where}.role"
        )
    if "content" not in value:
        raise ApiError(400, f"{where}.content is required", f"{where}.content")
    message = {"role": role, "content": _content(value["content"], f"{where}.content")}
    name = value.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise ApiError(400, f"{where}.name must be a string", f"{where}.name")
        message["name"] = name
    return message


def parse_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    return [_message(m, i) for i, m in enumerate(value)]


def parse_chat(body: bytes, codec: TextCodec, max_context: int) -> api.CompletionParams:
    obj = api.parse_object(body)
    api.check_fields(obj, HONOURED, NEUTRAL)
    if "messages" not in obj:
        raise ApiError(400, "messages is required", "messages")
    messages = parse_messages(obj["messages"])
    text = codec.chat_template.render(messages)
    # The template writes the BOS token itself when the model wants one, as Hugging Face's
    # tokenize step (add_special_tokens=False) assumes.
    prompt_ids = codec.encode(text, add_bos=False)
    if not prompt_ids:
        raise ApiError(400, "the messages render to an empty prompt", "messages")
    if len(prompt_ids) >= max_context:
        raise ApiError(
            400,
            f"the messages render to {len(prompt_ids)} tokens; the context holds {max_context}",
            "messages",
        )
    limit = "max_tokens"
    if obj.get("max_completion_tokens") is not None:
        if obj.get("max_tokens") is not None:
            raise ApiError(
                400, "give max_completion_tokens or max_tokens, not both", "max_completion_tokens"
            )
        limit = "max_completion_tokens"
    # OpenAI's default for chat: as much as the context has left.
    return api.parse_generation(obj, prompt_ids, max_context, max_context - len(prompt_ids), limit)


class ChatShape(Shape):
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def choice(self, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
        # The first chunk says who speaks, as OpenAI's streams do; the last may carry no text.
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text or first:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def whole_choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": None,
        }


CHAT_COMPLETION = ChatShape()

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
    "additionalProperties": False,
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": list(ROLES)},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": _TEXT_PART},
            ]
        },
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "tool_calls": {"enum": [None, []], "description": "Not supported: empty only."},
        "function_call": {"enum": [None], "description": "Not supported."},
    },
    "additionalProperties": False,
}


def chat_request_schema(max_context: int) -> dict[str, Any]:
    """The JSON Schema of a chat request, for the OpenAPI document.

    What a schema cannot say is checked in ``parse_chat`` alone: the rendered prompt plus
    max_tokens must fit the context, the template may refuse an order of roles, and
    stream_options needs stream: true.
    """
    properties = {
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
    } | api.generation_properties(max_context, None, NEUTRAL)
    properties["max_completion_tokens"] = properties["max_tokens"]
    return {
        "type": "object",
        "required": ["messages"],
        "properties": properties,
        "additionalProperties": False,
    }


CHAT_COMPLETION_SCHEMA = api.completion_response_schema(
    "chat.completion",
    {
        "message": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"enum": ["assistant"]},
                "content": {"type": "string"},
            },
        }
    },
)
