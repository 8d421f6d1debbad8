"""The model's elementwise and attention steps in plain torch: the reference implementation.

Contract: every method computes what the fused CUDA kernels of ``kernels.py`` compute, with
the same signatures, so ``LlamaModel`` can run either. Shapes: ``qkv`` is (N, (H + 2K) * d)
for N flat tokens, ``q`` is (N, H, d); one layer's cache is (blocks, B, K, d) in blocks of B
tokens, or (blocks * B, K, d) as flat rows, and a block table maps (slot, position // B) to a
block (see ``kv_cache.py``).

``prefill_attention`` is shared by both op sets: it is scaled-dot-product attention over one
sequence's keys and values (gathered from its blocks), causal from the bottom right, with
grouped-query heads read in place, so on CUDA it runs in SDPA's flash kernel at any chunk offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; x (N, heads, d), cos/sin (N, d/2) float32."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# SDPA's backends for prompt chunks, in order: never cuDNN's. Left to choose, SDPA may take
# cuDNN's attention on Hopper, which plans a graph on the host for every new shape, and a
# serving worker's chunks come in ever new (length, offset) shapes (docs/benchmarks.md).
PREFILL_SDPA_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of a prompt chunk; q (n, H, d), k and v (L, K, d) with L >= n; -> (n, H * d).

    ``k`` and ``v`` are the sequence's keys and values 0..L-1, the chunk's own last: query i sits
    at position L - n + i and sees keys 0..L - n + i. A lower-right causal bias says exactly
    that without a materialised mask, which keeps SDPA on its flash kernel; a square chunk
    (from position 0) is plain ``is_causal``. ``enable_gqa`` lets the kernel map each query
    head to its key/value head instead of copying keys and values once per group.
    """
    # Imported here: torch.nn.attention.bias imports Triton, which must not load before the
    # kernel tests have chosen Triton's interpreter (and the CPU path does not need it).
    from torch.nn.attention.bias import causal_lower_right

    n, heads, d = q.shape
    length, kv_heads = k.shape[0], k.shape[1]
    # (1, heads, seq, d) views of (seq, heads, d) rows: the layout the flash kernel reads.
    qt = q.transpose(0, 1).unsqueeze(0)
    kt = k.transpose(0, 1).unsqueeze(0)
    vt = v.transpose(0, 1).unsqueeze(0)
    bias = None if n == length else causal_lower_right(n, length)
    with sdpa_kernel(PREFILL_SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=bias, is_causal=bias is None, enable_gqa=heads != kv_heads
        )
    return out[0].transpose(0, 1).reshape(n, heads * d)


class TorchOps:
    name = "torch"

    def rmsnorm(self, x, weight, eps):
        return rmsnorm(x, weight, eps)

    def add_rmsnorm(self, residual, delta, weight, eps):
        residual = residual + delta
        return residual, rmsnorm(residual, weight, eps)

    def silu_mul(self, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def rope_and_cache(self, qkv, positions, rows, k_rows, v_rows, rope_cos, rope_sin, config):
        """RoPE on q and k; k and v written at the tokens' flat cache ``rows``; returns q."""
        n = qkv.shape[0]
        h, kh, d = config.num_heads, config.num_kv_heads, config.head_dim
        q, k, v = qkv.split([h * d, kh * d, kh * d], dim=-1)
        cos, sin = rope_cos[positions], rope_sin[positions]
        q = apply_rope(q.view(n, h, d), cos, sin)
        k = apply_rope(k.view(n, kh, d), cos, sin)
        k_rows[rows] = k
        v_rows[rows] = v.view(n, kh, d)
        return q

    def decode_attention(self, q, k_cache, v_cache, block_table, slots, positions, max_len):
        """Each row attends to its own sequence's keys at positions 0..positions[row]."""
        b, h, d = q.shape
        block, kh = k_cache.shape[1], k_cache.shape[2]
        at = torch.arange(max_len, device=q.device)
        rows = block_table[slots][:, at // block].long() * block + at % block  # (B, L)
        k = k_cache.flatten(0, 1)[rows].float()  # (B, L, K, d)
        v = v_cache.flatten(0, 1)[rows].float()
        qg = q.float().view(b, kh, h // kh, d)
        scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * (d**-0.5)
        dead = torch.arange(max_len, device=q.device)[None, :] > positions[:, None]
        scores = scores.masked_fill(dead[:, None, None, :], float("-inf"))
        out = torch.einsum("bkgl,blkd->bkgd", scores.softmax(-1), v)
        return out.to(q.dtype).reshape(b, h * d)

    def prefill_attention(self, q, k, v):
        return prefill_attention(q, k, v)

    def lm_head(self, h, weight):
        return F.linear(h, weight)
