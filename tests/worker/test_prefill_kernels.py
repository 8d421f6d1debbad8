"""The token-blocked RoPE + cache-write kernel of long prompt chunks against the torch reference,
run by Triton's CPU interpreter (on CUDA, ``python -m carpool_worker.bench --check`` compares
the same kernels and ``bench_prefill`` runs them)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are defined: @triton.jit reads it then.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from dataclasses import replace  # noqa: E402

from carpool_worker import kernels  # noqa: E402
from carpool_worker.config import PRESETS  # noqa: E402
from carpool_worker.model import LlamaModel  # noqa: E402
from carpool_worker.torch_ops import TorchOps  # noqa: E402

CONFIG = replace(PRESETS["tiny"], num_heads=8, num_kv_heads=2, head_dim=32, hidden_size=128)


def test_long_chunk_rope_and_cache_write_matches_the_reference():
    # Long enough for the blocked kernel, and not a whole number of token blocks: the tail of
    # the last block is masked.
    n = kernels.PROMPT_ROPE_MIN_TOKENS + kernels.ROPE_BLOCK_TOKENS // 2 + 1
    assert n % kernels.ROPE_BLOCK_TOKENS != 0
    slots_n, max_seq = 3, 2 * n
    model = LlamaModel(CONFIG, torch.device("cpu"), torch.float32)
    shape = (slots_n, max_seq, CONFIG.num_kv_heads, CONFIG.head_dim)
    k1, v1 = torch.randn(shape), torch.randn(shape)
    k2, v2 = k1.clone(), v1.clone()
    width = (CONFIG.num_heads + 2 * CONFIG.num_kv_heads) * CONFIG.head_dim
    qkv = torch.randn(n, width)
    # Two requests' chunks side by side: slot 1 from position 0, slot 2 at an offset.
    split = n // 3
    positions = torch.cat([torch.arange(split), torch.arange(n - split) + 100])
    slots = torch.cat([torch.full((split,), 1), torch.full((n - split,), 2)])
    rows = slots * max_seq + positions  # the kernels write flat cache rows
    k1, v1, k2, v2 = (t.flatten(0, 1) for t in (k1, v1, k2, v2))
    args = (model.rope_cos, model.rope_sin, CONFIG)
    q1 = kernels.TritonOps().rope_and_cache(qkv, positions, rows, k1, v1, *args)
    q2 = TorchOps().rope_and_cache(qkv, positions, rows, k2, v2, *args)
    assert torch.allclose(q1, q2, atol=1e-5)
    assert torch.allclose(k1, k2, atol=1e-5)  # written rows rotated alike, the rest untouched
    assert torch.equal(v1, v2)
