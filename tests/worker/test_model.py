"""The torch model against transformers' LlamaForCausalLM, and batched against one-at-a-time."""

from __future__ import annotations

import pytest
import torch
import transformers  # the dev extra's test-only oracle

from carpool_worker.config import PRESETS, resolve_model_config
from carpool_worker.model import KVCache, load_model

PROMPTS = [[3, 17, 42, 99, 5], [250, 1, 77], [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]]
NEW_TOKENS = 12


def paged_cache(config, num_slots: int, max_seq_len: int) -> KVCache:
    """Blocks of 16 tokens, interleaved across slots: every sequence is paged."""
    return KVCache.with_dedicated_blocks(
        config, num_slots, max_seq_len, "cpu", torch.float32, block_tokens=16
    )


def keys(cache: KVCache, slot: int, length: int) -> torch.Tensor:
    """Every layer's keys of ``slot`` at positions 0..length-1, read through its blocks."""
    return torch.stack([cache.gather(layer, slot, length)[0] for layer in range(len(cache.k))])


def greedy(model, cache, prompt: list[int], slot: int, new_tokens: int) -> list[int]:
    logits = model.prefill(cache, torch.tensor(prompt), slot, 0)
    out = [int(logits.argmax())]
    for i in range(new_tokens - 1):
        position = len(prompt) + i
        logits = model.decode(
            cache, torch.tensor([out[-1]]), torch.tensor([slot]), torch.tensor([position])
        )
        out.append(int(logits[0].argmax()))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random Llama checkpoint saved by transformers itself (safetensors + config.json)."""
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    # A larger init than the default 0.02 so that logits are far from ties.
    config.initializer_range = 0.2
    hf = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path, safe_serialization=True)
    return path, hf


def test_greedy_output_equals_transformers(checkpoint):
    path, hf = checkpoint
    model = load_model(resolve_model_config(str(path)), torch.device("cpu"), torch.float32)
    cache = paged_cache(model.config, 1, 64)
    for prompt in PROMPTS:
        with torch.inference_mode():
            ours = greedy(model, cache, prompt, 0, NEW_TOKENS)
            theirs = hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert ours == theirs


def test_logits_close_to_transformers(checkpoint):
    path, hf = checkpoint
    model = load_model(resolve_model_config(str(path)), torch.device("cpu"), torch.float32)
    cache = paged_cache(model.config, 1, 64)
    prompt = PROMPTS[2]
    with torch.inference_mode():
        ours = model.prefill(cache, torch.tensor(prompt), 0, 0)
        theirs = hf(torch.tensor([prompt])).logits[0, -1]
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_chunked_prefill_equals_whole_prefill():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    cache = paged_cache(model.config, 2, 64)
    prompt = torch.arange(40) * 7 % 256
    with torch.inference_mode():
        whole = model.prefill(cache, prompt, 0, 0)
        for start in range(0, 40, 16):
            chunked = model.prefill(cache, prompt[start : start + 16], 1, start)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(keys(cache, 0, 40), keys(cache, 1, 40), atol=1e-6)


def test_batched_decode_equals_one_at_a_time():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    model.init_random(seed=3)
    cache = paged_cache(model.config, 4, 64)
    alone = []
    with torch.inference_mode():
        for slot, prompt in enumerate(PROMPTS):
            alone.append(greedy(model, cache, prompt, slot, NEW_TOKENS))
        # Again, all three at once, different lengths side by side in one decode batch.
        outs = []
        for slot, prompt in enumerate(PROMPTS):
            logits = model.prefill(cache, torch.tensor(prompt), slot, 0)
            outs.append([int(logits.argmax())])
        for i in range(NEW_TOKENS - 1):
            logits = model.decode(
                cache,
                torch.tensor([o[-1] for o in outs]),
                torch.tensor(range(len(PROMPTS))),
                torch.tensor([len(p) + i for p in PROMPTS]),
            )
            for o, row in zip(outs, logits, strict=True):
                o.append(int(row.argmax()))
    assert outs == alone


def test_prefill_of_several_prompts_at_once_equals_one_by_one():
    model = load_model(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    cache = paged_cache(model.config, 6, 64)
    prompts = [torch.tensor(p) for p in PROMPTS]
    with torch.inference_mode():
        alone = torch.stack([model.prefill(cache, p, slot, 0) for slot, p in enumerate(prompts)])
        # Slots 3..5: the same prompts together, the last one as a continuation chunk.
        model.prefill(cache, prompts[2][:4], 5, 0)
        together = model.prefill_many(
            cache, [(prompts[0], 3, 0), (prompts[1], 4, 0), (prompts[2][4:], 5, 4)]
        )
    assert torch.allclose(alone, together, atol=1e-5)
    assert torch.allclose(keys(cache, 2, 11), keys(cache, 5, 11), atol=1e-6)
