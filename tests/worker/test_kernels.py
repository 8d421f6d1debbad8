"""The fused Triton kernels against the torch reference, run by Triton's CPU interpreter.

On a machine with CUDA the same comparisons run in ``python -m carpool_worker.bench --check``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are defined: @triton.jit reads it then.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from dataclasses import replace  # noqa: E402

import triton  # noqa: E402, F401  (torch's CUDA wheels bring it; the kernels need it)

from carpool_worker.config import PRESETS  # noqa: E402
from carpool_worker.kernels import TritonOps  # noqa: E402
from carpool_worker.model import LlamaModel  # noqa: E402
from carpool_worker.torch_ops import TorchOps  # noqa: E402

CONFIG = replace(PRESETS["tiny"], num_heads=8, num_kv_heads=2, head_dim=64, hidden_size=128)
SLOTS, MAX_SEQ, PAGE = 4, 200, 64
PAGES_PER_SLOT = -(-MAX_SEQ // PAGE)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def ops():
    return TritonOps(), TorchOps()


@pytest.fixture
def caches():
    """Paged keys and values (blocks, PAGE, K, d) and a block table that scatters each slot's
    pages over the pool in a shuffled order."""
    blocks = SLOTS * PAGES_PER_SLOT + 1
    shape = (blocks, PAGE, CONFIG.num_kv_heads, CONFIG.head_dim)
    order = torch.randperm(blocks - 1, generator=torch.Generator().manual_seed(5))
    table = torch.full((SLOTS + 1, PAGES_PER_SLOT), blocks - 1, dtype=torch.int32)
    table[:SLOTS] = order.view(SLOTS, PAGES_PER_SLOT).to(torch.int32)
    return torch.randn(shape), torch.randn(shape), table


def flat_rows(table, slots, positions):
    return table[slots, positions // PAGE].long() * PAGE + positions % PAGE


def test_rmsnorm_matches(ops):
    fused, ref = ops
    x, w = torch.randn(5, 128), torch.randn(128)
    assert rel(fused.rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w, 1e-5)) < 1e-5


def test_add_rmsnorm_matches_and_updates_the_residual(ops):
    fused, ref = ops
    x, d, w = torch.randn(5, 128), torch.randn(5, 128), torch.randn(128)
    residual, out = fused.add_rmsnorm(x.clone(), d, w, 1e-5)
    want_residual, want_out = ref.add_rmsnorm(x, d, w, 1e-5)
    assert rel(residual, want_residual) < 1e-6
    assert rel(out, want_out) < 1e-5


def test_silu_mul_matches(ops):
    fused, ref = ops
    gate_up = torch.randn(5, 2 * 1100)  # not a multiple of the block: the tail is masked
    assert rel(fused.silu_mul(gate_up), ref.silu_mul(gate_up)) < 1e-5


def test_rope_and_cache_write_matches(ops, caches):
    fused, ref = ops
    model = LlamaModel(CONFIG, torch.device("cpu"), torch.float32)
    k1, v1, table = caches
    k1, v1 = k1.flatten(0, 1), v1.flatten(0, 1)
    k2, v2 = k1.clone(), v1.clone()
    qkv = torch.randn(3, (CONFIG.num_heads + 2 * CONFIG.num_kv_heads) * CONFIG.head_dim)
    pos, slots = torch.tensor([0, 63, MAX_SEQ - 1]), torch.tensor([2, 0, 3])
    rows = flat_rows(table, slots, pos)
    args = (model.rope_cos, model.rope_sin, CONFIG)
    q1 = fused.rope_and_cache(qkv, pos, rows, k1, v1, *args)
    q2 = ref.rope_and_cache(qkv, pos, rows, k2, v2, *args)
    assert rel(q1, q2) < 1e-6
    assert torch.equal(k1, k2) or rel(k1, k2) < 1e-6
    assert torch.equal(v1, v2)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_decode_attention_reads_each_rows_live_context(ops, caches, batch):
    fused, ref = ops
    k, v, table = caches
    gen = torch.Generator().manual_seed(batch)
    slots = torch.randint(0, SLOTS, (batch,), generator=gen)
    pos = torch.randint(0, MAX_SEQ, (batch,), generator=gen)
    q = torch.randn(batch, CONFIG.num_heads, CONFIG.head_dim, generator=gen)
    got = fused.decode_attention(q, k, v, table, slots, pos, MAX_SEQ)
    assert rel(got, ref.decode_attention(q, k, v, table, slots, pos, MAX_SEQ)) < 1e-5
