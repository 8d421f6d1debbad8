"""Prompt-chunk attention over the KV cache in place, and chunked prefill against one-shot.

The rules under test: a chunk of n tokens starting at position s attends to the s + n cached
keys causally from the bottom right; keys and values are read from the slot's cache as they lie
(grouped-query heads unrepeated, no materialised mask); and however a prompt is cut into
chunks, prefill leaves the same cache, the same logits and the same greedy continuation.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from carpool_worker import torch_ops
from carpool_worker.config import PRESETS
from carpool_worker.model import KVCache, LlamaModel
from carpool_worker.torch_ops import prefill_attention

# Four query heads per key/value head, so a wrong group mapping or a top-left mask shows.
GQA = replace(PRESETS["tiny"], num_heads=8, num_kv_heads=2, head_dim=16, hidden_size=64)
PROMPT_LEN = 300
NEW_TOKENS = 8


def masked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention with an explicit mask and repeated heads, in float64: the definition."""
    n, heads, d = q.shape
    length, kv_heads = k.shape[:2]
    groups = heads // kv_heads
    kr = k.double().repeat_interleave(groups, dim=1)  # (L, H, d)
    vr = v.double().repeat_interleave(groups, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), kr) * d**-0.5
    position = torch.arange(length - n, length)  # of each query
    visible = torch.arange(length)[None, :] <= position[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), vr).reshape(n, heads * d)


@pytest.mark.parametrize(
    ("n", "start", "heads", "kv_heads"),
    [(9, 0, 8, 2), (9, 40, 8, 2), (1, 57, 8, 2), (33, 5, 8, 2), (12, 20, 4, 4)],
)
def test_prefill_attention_matches_the_masked_reference(n, start, heads, kv_heads):
    gen = torch.Generator().manual_seed(n + start)
    q = torch.randn(n, heads, 16, generator=gen)
    k = torch.randn(start + n, kv_heads, 16, generator=gen)
    v = torch.randn(start + n, kv_heads, 16, generator=gen)
    got = prefill_attention(q, k, v)
    assert torch.allclose(got.double(), masked_reference(q, k, v), atol=1e-5)


def scaled_model(config, seed: int = 0) -> LlamaModel:
    """Random weights ten times the preset's scale, so logits are far from ties."""
    model = LlamaModel(config, torch.device("cpu"), torch.float32).init_random(seed)
    for weight in model.params.values():
        if weight.dim() == 2:
            weight.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def model():
    return scaled_model(GQA)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(
        0, GQA.vocab_size, (PROMPT_LEN,), generator=torch.Generator().manual_seed(7)
    )


def new_cache(slots: int = 1) -> KVCache:
    """Blocks of 16 tokens, interleaved across slots: every sequence is paged."""
    return KVCache.with_dedicated_blocks(
        GQA, slots, PROMPT_LEN + NEW_TOKENS, "cpu", torch.float32, block_tokens=16
    )


def cached(cache: KVCache, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's keys and values of ``slot`` at positions 0..length-1, through its blocks."""
    pairs = [cache.gather(layer, slot, length) for layer in range(len(cache.k))]
    return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


def greedy_after(model, cache, last_logits: torch.Tensor, slot: int) -> list[int]:
    out = [int(last_logits.argmax())]
    for i in range(NEW_TOKENS - 1):
        logits = model.decode(
            cache, torch.tensor([out[-1]]), torch.tensor([slot]), torch.tensor([PROMPT_LEN + i])
        )
        out.append(int(logits[0].argmax()))
    return out


@pytest.fixture(scope="module")
def one_shot(model, prompt):
    """The whole prompt in one chunk: the cache, the last logits and the continuation."""
    cache = new_cache()
    with torch.inference_mode():
        logits = model.prefill(cache, prompt, 0, 0)
        tokens = greedy_after(model, cache, logits, 0)
    return cache, logits, tokens


# Chunk boundaries: the engine's fixed sizes, and uneven cuts with one-token chunks.
CUTS = {
    "by 64": list(range(0, PROMPT_LEN, 64)),
    "by 128": list(range(0, PROMPT_LEN, 128)),
    "by 37": list(range(0, PROMPT_LEN, 37)),
    "uneven": [0, 1, 2, 130, 131, 299],
}


@pytest.mark.parametrize("cuts", CUTS.values(), ids=CUTS.keys())
def test_chunked_prefill_matches_one_shot_in_cache_logits_and_tokens(model, prompt, one_shot, cuts):
    want_cache, want_logits, want_tokens = one_shot
    cache = new_cache()
    ends = cuts[1:] + [PROMPT_LEN]
    with torch.inference_mode():
        for start, end in zip(cuts, ends, strict=True):
            logits = model.prefill(cache, prompt[start:end], 0, start)
        (k, v), (want_k, want_v) = cached(cache, 0, PROMPT_LEN), cached(want_cache, 0, PROMPT_LEN)
        assert torch.allclose(k, want_k, atol=1e-4)
        assert torch.allclose(v, want_v, atol=1e-4)
        assert torch.allclose(logits, want_logits, atol=1e-3, rtol=1e-4)
        assert greedy_after(model, cache, logits, 0) == want_tokens


def test_each_chunks_logits_are_those_of_its_prompt_prefix(model, prompt):
    """A chunk at an offset sees exactly the prefix before it: its logits are the prefix's."""
    cuts = [0, 100, 101, 230]
    ends = cuts[1:] + [PROMPT_LEN]
    cache, alone = new_cache(), new_cache()
    with torch.inference_mode():
        for start, end in zip(cuts, ends, strict=True):
            chunked = model.prefill(cache, prompt[start:end], 0, start)
            whole = model.prefill(alone, prompt[:end], 0, 0)
            assert torch.allclose(chunked, whole, atol=1e-3, rtol=1e-4), (start, end)


def test_chunks_of_several_requests_in_one_step_match_each_alone(model, prompt):
    """One step mixing a first chunk, continuation chunks and a one-token chunk."""
    other = prompt.flip(0)
    cache = new_cache(slots=3)
    with torch.inference_mode():
        model.prefill(cache, prompt[:150], 1, 0)
        model.prefill(cache, other[:299], 2, 0)
        together = model.prefill_many(
            cache, [(other[:64], 0, 0), (prompt[150:], 1, 150), (other[299:], 2, 299)]
        )
        alone = torch.stack(
            [model.prefill(new_cache(), p, 0, 0) for p in (other[:64], prompt, other)]
        )
    assert torch.allclose(together, alone, atol=1e-3, rtol=1e-4)


def test_prefill_hands_attention_the_sequences_keys_unrepeated_and_unmasked(
    model, prompt, monkeypatch
):
    """Keys and values reach SDPA as the sequence's cached rows (read through its blocks) with
    the model's key/value head count (no repeated heads) and a causal flag or bias (no mask
    tensor), which is what keeps CUDA's SDPA on its flash kernel."""
    from torch.nn.attention.bias import CausalBias  # imports Triton: not at collection

    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((k, v, attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    # Only the worker's reference to SDPA is wrapped: torch's own dispatch stays as it is.
    wrapped = SimpleNamespace(**{**vars(F), "scaled_dot_product_attention": spy})
    monkeypatch.setattr(torch_ops, "F", wrapped)
    cache = new_cache()
    with torch.inference_mode():
        model.prefill(cache, prompt[:40], 0, 0)
        model.prefill(cache, prompt[40:90], 0, 40)
    assert len(calls) == 2 * GQA.num_layers
    want_k, want_v = cached(cache, 0, 90)
    for i, (k, v, _, _) in enumerate(calls[GQA.num_layers :]):
        # (1, K, L, d) as SDPA takes them: the layer's 90 cached rows of this sequence.
        assert torch.equal(k[0].transpose(0, 1), want_k[i])
        assert torch.equal(v[0].transpose(0, 1), want_v[i])
    for k, _, attn_mask, is_causal in calls:
        assert k.shape[1] == GQA.num_kv_heads
        assert is_causal or isinstance(attn_mask, CausalBias)
