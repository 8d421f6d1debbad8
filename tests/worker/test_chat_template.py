"""The chat template: found in the checkpoint, rendered as Hugging Face renders it, sandboxed."""

from __future__ import annotations

import json

import pytest
from transformers import PreTrainedTokenizerFast

from carpool_worker.api import ApiError
from carpool_worker.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplateError,
    load_chat_template,
    parse_chat,
)
from carpool_worker.config import resolve_model_config
from carpool_worker.tokenizer import BYTE_BOS, BYTE_EOS, byte_level_tokenizer, load_tokenizer

# Llama 3's template, shortened: the BOS token, headers per turn, a refusal by raise_exception,
# a namespace, loop controls and the generation tag all appear in templates on the Hub.
LLAMA3 = (
    "{{ bos_token }}{% set ns = namespace(system=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
    "{% if message['role'] == 'system' %}{% set ns.system = true %}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim }}{% endif %}<|eot_id|>"
    "{% if loop.index > 8 %}{% break %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    "{{ dict(system_seen=ns.system, first=messages[0]['content']) | tojson }}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief. <b>&</b> ünïcode"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "A fox?"},
]


def checkpoint(tmp_path, **tokenizer_config):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp_path


def test_render_matches_hugging_face_apply_chat_template(tmp_path):
    hf = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_tokenizer(), bos_token=BYTE_BOS, eos_token=BYTE_EOS
    )
    expected = hf.apply_chat_template(
        CONVERSATION, chat_template=LLAMA3, add_generation_prompt=True, tokenize=False
    )
    ours = load_chat_template(checkpoint(tmp_path, chat_template=LLAMA3), BYTE_BOS, BYTE_EOS)
    assert ours.render(CONVERSATION) == expected


def test_raise_exception_in_the_template_is_a_400_naming_messages(tmp_path):
    template = load_chat_template(checkpoint(tmp_path, chat_template=LLAMA3), "", "")
    with pytest.raises(ApiError, match="no tools here") as refused:
        template.render([{"role": "tool", "content": "42"}])
    assert (refused.value.status, refused.value.param) == (400, "messages")


def test_the_sandbox_refuses_reaching_python_internals(tmp_path):
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    template = load_chat_template(checkpoint(tmp_path, chat_template=escape), "", "")
    with pytest.raises(ApiError) as refused:
        template.render(CONVERSATION)
    assert refused.value.status == 400
    assert "is unsafe" in refused.value.message


def test_a_namespace_refuses_private_attributes(tmp_path):
    sneaky = "{% set ns = namespace() %}{% set ns._hidden = 1 %}"
    template = load_chat_template(checkpoint(tmp_path, chat_template=sneaky), "", "")
    with pytest.raises(ApiError, match="may not set the attribute '_hidden'"):
        template.render(CONVERSATION)


def test_special_tokens_come_from_the_tokenizer_config(tmp_path):
    path = checkpoint(
        tmp_path,
        chat_template="{{ bos_token }}|{{ eos_token }}",
        bos_token={"content": "<s>", "__type": "AddedToken"},
        eos_token="</s>",
    )
    assert load_chat_template(path, BYTE_BOS, BYTE_EOS).render(CONVERSATION) == "<s>|</s>"


def test_named_templates_use_the_default_one(tmp_path):
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
    path = checkpoint(tmp_path, chat_template=named)
    assert load_chat_template(path, "", "").render(CONVERSATION) == "plain"


def test_chat_template_jinja_file_is_read_when_the_config_has_none(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("from the file")
    assert load_chat_template(tmp_path, "", "").render(CONVERSATION) == "from the file"


def test_checkpoint_without_a_template_gets_the_default(tmp_path):
    template = load_chat_template(checkpoint(tmp_path, eos_token="</s>"), "", "")
    assert template.source == DEFAULT_CHAT_TEMPLATE


def test_template_that_does_not_compile_names_the_file(tmp_path):
    path = checkpoint(tmp_path, chat_template="{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="tokenizer_config.json"):
        load_chat_template(path, "", "")


def test_tokenizer_config_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{")
    with pytest.raises(ChatTemplateError, match="tokenizer_config.json: not JSON"):
        load_chat_template(tmp_path, "", "")


def test_default_template_gives_each_role_a_line_and_opens_the_assistant_turn():
    codec = load_tokenizer(resolve_model_config("tiny"))
    assert codec.chat_template.render(CONVERSATION[:2]) == (
        f"{BYTE_BOS}system: Be brief. <b>&</b> ünïcode\nuser: Hi\nassistant:"
    )


def test_text_parts_are_joined_by_newlines():
    codec = load_tokenizer(resolve_model_config("tiny"))
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    body = json.dumps({"messages": [{"role": "user", "content": parts}]}).encode()
    params = parse_chat(body, codec, 256)
    assert codec.decode(params.prompt_ids) == "user: one\ntwo\nassistant:"


def test_chat_prompt_starts_with_one_bos_token():
    codec = load_tokenizer(resolve_model_config("tiny"))
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
    prompt_ids = parse_chat(body, codec, 256).prompt_ids
    assert prompt_ids[0] == codec.bos_token_id
    assert prompt_ids[1] != codec.bos_token_id


def test_chat_max_tokens_defaults_to_what_the_context_has_left():
    codec = load_tokenizer(resolve_model_config("tiny"))
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
    params = parse_chat(body, codec, 256)
    assert params.max_tokens == 256 - len(params.prompt_ids)


def test_messages_longer_than_the_context_are_refused_by_name():
    codec = load_tokenizer(resolve_model_config("tiny"))
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 300}]}).encode()
    with pytest.raises(ApiError, match="the context holds 256") as refused:
        parse_chat(body, codec, 256)
    assert refused.value.param == "messages"
