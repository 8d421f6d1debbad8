"""The official ``openai`` client against a real worker (tiny model, CPU): completions, chat,
streaming with usage, stop strings, models, and refusals that surface as BadRequestError."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from carpool_worker.app import create_app
from carpool_worker.server import Worker, WorkerSettings

from .conftest import metric_value

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a fox."},
]
GREEDY = {"model": "tiny", "temperature": 0, "max_tokens": 12}


@pytest.fixture
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_completion_returns_text_and_usage(oai):
    completion = oai.completions.create(prompt="The quick brown fox", **GREEDY)
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens >= 1
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_chat_completion_returns_an_assistant_message_and_usage(oai):
    completion = oai.chat.completions.create(messages=MESSAGES, **GREEDY)
    assert completion.object == "chat.completion"
    message = completion.choices[0].message
    assert message.role == "assistant"
    assert isinstance(message.content, str)
    assert completion.usage.completion_tokens >= 1


def test_chat_prompt_is_the_rendered_template(oai, server):
    completion = oai.chat.completions.create(messages=MESSAGES, **GREEDY)
    rendered = server.worker.codec.chat_template.render(MESSAGES)
    # The tiny preset's default template: BOS (one token), then one byte per character.
    assert rendered == "<|begin_of_text|>system: You are terse.\nuser: Name a fox.\nassistant:"
    assert completion.usage.prompt_tokens == 1 + len(rendered) - len("<|begin_of_text|>")


def test_chat_stream_sends_the_same_text_and_ends_with_usage(oai):
    whole = oai.chat.completions.create(messages=MESSAGES, **GREEDY)
    chunks = list(
        oai.chat.completions.create(
            messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == (
        whole.choices[0].message.content
    )
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in text_chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage == whole.usage


def test_completion_stream_ends_with_usage_when_asked(oai):
    whole = oai.completions.create(prompt="The quick brown fox", **GREEDY)
    chunks = list(
        oai.completions.create(
            prompt="The quick brown fox",
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert "".join(c.choices[0].text for c in chunks[:-1]) == whole.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


def test_stream_without_include_usage_carries_no_usage(oai):
    chunks = list(oai.chat.completions.create(messages=MESSAGES, stream=True, **GREEDY))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)


def test_chat_stop_string_cuts_the_text(oai):
    long = GREEDY | {"max_tokens": 30}
    text = oai.chat.completions.create(messages=MESSAGES, **long).choices[0].message.content
    # The tiny model's weights are seeded, so greedy text is the same on every run.
    assert len(text) >= 4, f"too little text to pick a stop string from: {text!r}"
    stop = text[2:4]
    choice = oai.chat.completions.create(messages=MESSAGES, stop=[stop], **long).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == text[: text.find(stop)]


def test_chat_stop_string_cuts_the_stream(oai):
    long = GREEDY | {"max_tokens": 30}
    text = oai.chat.completions.create(messages=MESSAGES, **long).choices[0].message.content
    stop = text[2:4]
    chunks = list(oai.chat.completions.create(messages=MESSAGES, stop=stop, stream=True, **long))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_lists_the_served_model(oai):
    assert [m.id for m in oai.models.list()] == ["tiny"]
    assert oai.models.retrieve("tiny").id == "tiny"


def test_unknown_model_is_not_found(oai):
    with pytest.raises(openai.NotFoundError, match="no model 'gpt-4'"):
        oai.models.retrieve("gpt-4")


def test_endpoint_header_routes_a_chat_to_that_endpoint(oai, server):
    def ok_on_batch() -> float:
        text = openai.DefaultHttpxClient().get(server.url + "/metrics").text
        return metric_value(text, "carpool_requests_total", endpoint="batch", outcome="ok")

    before = ok_on_batch()
    oai.chat.completions.create(
        messages=MESSAGES, extra_headers={"X-Carpool-Endpoint": "batch"}, **GREEDY
    )
    assert ok_on_batch() == before + 1


REFUSED = [
    # (case, keyword arguments, a phrase the message must hold)
    ("two_choices", {"n": 2}, "n must be 1"),
    (
        "tools",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        "tools is not supported",
    ),
    ("tool_choice", {"tool_choice": "auto"}, "tool_choice is not supported"),
    ("json_mode", {"response_format": {"type": "json_object"}}, "response_format is not supported"),
    ("logprobs", {"logprobs": True}, "logprobs is not supported"),
    ("seed", {"seed": 7}, "seed is not supported"),
    (
        "image_part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        "tool_message",
        {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]},
        "messages[0].tool_call_id",
    ),
    ("empty_messages", {"messages": []}, "messages must be a non-empty list"),
    ("stop_too_long", {"stop": "x" * 300}, "stop must be"),
    ("both_token_limits", {"max_completion_tokens": 5}, "not both"),
    ("unknown_field", {"extra_body": {"colour": "red"}}, "unknown field 'colour'"),
]


@pytest.mark.parametrize(
    ("kwargs", "phrase"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_unsupported_chat_request_is_a_bad_request_that_names_the_field(oai, kwargs, phrase):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(**({"messages": MESSAGES} | GREEDY | kwargs))
    assert phrase in refused.value.message


def test_refused_field_is_named_in_param(oai):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(messages=MESSAGES, tool_choice="required", **GREEDY)
    assert refused.value.param == "tool_choice"


def test_template_refusal_is_a_bad_request(oai, server, monkeypatch):
    from carpool_worker.chat import ChatTemplate

    strict = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('the conversation must start with a user message') }}"
        "{% endif %}{{ messages[0]['content'] }}",
        "a test template",
        {},
    )
    monkeypatch.setattr(server.worker.codec, "chat_template", strict)
    with pytest.raises(openai.BadRequestError, match="must start with a user message"):
        oai.chat.completions.create(messages=MESSAGES, **GREEDY)


def test_completion_stream_options_without_stream_is_a_bad_request(oai):
    with pytest.raises(openai.BadRequestError, match="only allowed with stream: true"):
        oai.completions.create(
            prompt="hi", extra_body={"stream_options": {"include_usage": True}}, **GREEDY
        )


def test_worker_still_serves_after_refusals(oai):
    for _case, kwargs, _phrase in REFUSED:
        with pytest.raises(openai.BadRequestError):
            oai.chat.completions.create(**({"messages": MESSAGES} | GREEDY | kwargs))
    assert oai.chat.completions.create(messages=MESSAGES, **GREEDY).choices


def test_models_say_when_the_gpu_is_emulated(tmp_path):
    profile = {
        "schema": "carpool.dev/profile/v2",
        "model": "bench-8b",
        "device": "test GPU",
        "kv_cache_tokens": 4096,
        "max_batch_size": 4,
        "max_seq_len": 1024,
        "prefill_chunk_tokens": 256,
        "decode": [{"batch_size": 1, "context_tokens": 0, "step_seconds": 0.01}],
        "prefill_chunks": [{"chunk_tokens": 256, "offset_tokens": 0, "seconds": 0.02}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    worker = Worker(WorkerSettings(model="bench-8b", emulate=path))
    models = TestClient(create_app(worker, load_on_startup=False)).get("/v1/models").json()
    assert models["data"][0]["emulated"] == "bench-8b on test GPU"
