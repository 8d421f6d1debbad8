"""Fused Triton kernels for the CUDA path, drop-in for :class:`~carpool_worker.torch_ops.TorchOps`.

Contract: ``TritonOps`` has TorchOps' methods and computes the same functions (to bf16
rounding) with fewer passes over memory:

- ``add_rmsnorm``: the residual add and the next RMSNorm in one pass (the residual is updated
  in place);
- ``silu_mul``: SwiGLU's activation and product over the fused gate/up GEMM output;
- ``rope_and_cache``: RoPE on q and k and the k/v write into the cache in one launch (for a
  prompt chunk, each program takes a block of tokens of one head, so an 8k-token chunk is not
  hundreds of thousands of one-warp programs);
- ``decode_attention``: split-K ("flash-decoding") attention that reads only each row's live
  context through the block table (one lookup per 64-key tile), each key/value once per group
  of query heads, then a small merge kernel;
- ``prefill_attention``: not a Triton kernel but the shared SDPA call of ``torch_ops`` (flash
  attention over the cache in place, bottom-right causal, native grouped-query heads).

All launches take device tensors only (no host values that change between steps), so a decode
step built from them can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .torch_ops import prefill_attention


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask)
    tl.store(out_ptr + row * n_cols + cols, (x * inv).to(w.dtype) * w, mask=mask)


@triton.jit
def _add_rmsnorm_kernel(res_ptr, delta_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    offs = row * n_cols + cols
    res = tl.load(res_ptr + offs, mask=mask, other=0.0)
    delta = tl.load(delta_ptr + offs, mask=mask, other=0.0)
    x = res + delta  # in the model dtype, as the reference adds
    tl.store(res_ptr + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask)
    tl.store(out_ptr + offs, (xf * inv).to(w.dtype) * w, mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_cache_kernel(
    qkv_ptr,
    pos_ptr,
    row_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    H: tl.constexpr,
    K: tl.constexpr,
    D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    half = tl.arange(0, D // 2)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos = tl.load(cos_ptr + pos * (D // 2) + half)
    sin = tl.load(sin_ptr + pos * (D // 2) + half)
    row = qkv_ptr + tok * (H + 2 * K) * D
    src = row + head * D
    x1 = tl.load(src + half).to(tl.float32)
    x2 = tl.load(src + D // 2 + half).to(tl.float32)
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    if head < H:
        dst = q_out_ptr + (tok * H + head) * D
        tl.store(dst + half, r1.to(q_out_ptr.dtype.element_ty))
        tl.store(dst + D // 2 + half, r2.to(q_out_ptr.dtype.element_ty))
    else:
        kh = head - H
        cache_row = tl.load(row_ptr + tok).to(tl.int64)
        at = (cache_row * K + kh) * D
        tl.store(k_cache_ptr + at + half, r1.to(k_cache_ptr.dtype.element_ty))
        tl.store(k_cache_ptr + at + D // 2 + half, r2.to(k_cache_ptr.dtype.element_ty))
        full = tl.arange(0, D)
        v = tl.load(row + (H + K + kh) * D + full)
        tl.store(v_cache_ptr + at + full, v)


@triton.jit
def _rope_cache_block_kernel(
    qkv_ptr,
    pos_ptr,
    row_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    n_tokens,
    H: tl.constexpr,
    K: tl.constexpr,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``_rope_cache_kernel`` over BLOCK_T tokens of one head per program (prompt chunks)."""
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)
    live = tok < n_tokens
    half = tl.arange(0, D // 2)
    both = live[:, None]
    pos = tl.load(pos_ptr + tok, mask=live, other=0).to(tl.int64)
    cos = tl.load(cos_ptr + pos[:, None] * (D // 2) + half[None, :], mask=both, other=0.0)
    sin = tl.load(sin_ptr + pos[:, None] * (D // 2) + half[None, :], mask=both, other=0.0)
    row = qkv_ptr + tok[:, None] * (H + 2 * K) * D
    src = row + head * D + half[None, :]
    x1 = tl.load(src, mask=both, other=0.0).to(tl.float32)
    x2 = tl.load(src + D // 2, mask=both, other=0.0).to(tl.float32)
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    if head < H:
        dst = q_out_ptr + (tok[:, None] * H + head) * D + half[None, :]
        tl.store(dst, r1.to(q_out_ptr.dtype.element_ty), mask=both)
        tl.store(dst + D // 2, r2.to(q_out_ptr.dtype.element_ty), mask=both)
    else:
        kh = head - H
        cache_row = tl.load(row_ptr + tok, mask=live, other=0).to(tl.int64)
        at = ((cache_row * K + kh) * D)[:, None]
        tl.store(k_cache_ptr + at + half[None, :], r1.to(k_cache_ptr.dtype.element_ty), mask=both)
        tl.store(
            k_cache_ptr + at + D // 2 + half[None, :],
            r2.to(k_cache_ptr.dtype.element_ty),
            mask=both,
        )
        full = tl.arange(0, D)[None, :]
        v = tl.load(row + (H + K + kh) * D + full, mask=both, other=0.0)
        tl.store(v_cache_ptr + at + full, v, mask=both)


@triton.jit
def _decode_attn_partial_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    table_width,
    slot_ptr,
    pos_ptr,
    o_ptr,
    lse_ptr,
    scale,
    PAGE: tl.constexpr,
    H: tl.constexpr,
    K: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLITS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    split = tl.program_id(2)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    seq_len = tl.load(pos_ptr + b).to(tl.int32) + 1
    # Each row splits its own live context: short rows do not pay for the longest one.
    chunk = tl.cdiv(tl.cdiv(seq_len, SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, D)
    q = tl.load(
        q_ptr + (b * H + kh * G + g)[:, None] * D + d[None, :], mask=(g < G)[:, None], other=0.0
    )
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    lsum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    table_row = table_ptr + slot * table_width
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        live = n < end
        # A tile starts on a multiple of BLOCK_N and PAGE is a multiple of BLOCK_N, so the whole
        # tile lies in one block of the sequence: one table lookup per tile.
        page = tl.load(table_row + n0 // PAGE).to(tl.int64)
        rows = page * PAGE + (n0 % PAGE) + tl.arange(0, BLOCK_N)
        offs = rows[:, None] * (K * D) + kh * D + d[None, :]
        k = tl.load(k_ptr + offs, mask=live[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(live[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        lsum = lsum * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + offs, mask=live[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    has = lsum > 0
    out = tl.where(has[:, None], acc / tl.where(has, lsum, 1.0)[:, None], 0.0)
    lse = tl.where(has, m + tl.log(tl.where(has, lsum, 1.0)), float("-inf"))
    heads = b * H + kh * G + g
    hmask = g < G
    tl.store(o_ptr + (heads[:, None] * SPLITS + split) * D + d[None, :], out, mask=hmask[:, None])
    tl.store(lse_ptr + heads * SPLITS + split, lse, mask=hmask)


@triton.jit
def _decode_attn_merge_kernel(o_ptr, lse_ptr, out_ptr, D: tl.constexpr, SPLITS: tl.constexpr):
    head = tl.program_id(0).to(tl.int64)  # b * H + h
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    lse = tl.load(lse_ptr + head * SPLITS + s)
    weight = tl.exp(lse - tl.max(lse, axis=0))
    weight = weight / tl.sum(weight, axis=0)
    parts = tl.load(o_ptr + (head * SPLITS + s)[:, None] * D + d[None, :])
    out = tl.sum(parts * weight[:, None], axis=0)
    tl.store(out_ptr + head * D + d, out.to(out_ptr.dtype.element_ty))


# Chunks of at least this many tokens take the token-blocked RoPE kernel, BLOCK_T tokens a
# program; below it (every decode batch of up to 256 rows) the per-token kernel stays.
PROMPT_ROPE_MIN_TOKENS = 257
ROPE_BLOCK_TOKENS = 16
# Keys per tile of decode attention; KV blocks must be a multiple of it.
DECODE_TILE_TOKENS = 64


def _splits_for(batch: int, kv_heads: int, sms: int) -> int:
    """Enough splits that batch x kv_heads x splits fills the SMs about twice."""
    want = max(2, min(32, (2 * sms) // max(1, batch * kv_heads)))
    return triton.next_power_of_2(want)


class TritonOps:
    name = "triton"

    def __init__(self) -> None:
        # Off CUDA (Triton's interpreter, in tests) any count works; 8 keeps the grid small.
        cuda = torch.cuda.is_available()
        self.sms = torch.cuda.get_device_properties(0).multi_processor_count if cuda else 8

    def rmsnorm(self, x, weight, eps):
        out = torch.empty_like(x)
        n_cols = x.shape[-1]
        _rmsnorm_kernel[(x.shape[0],)](
            x, weight, out, n_cols, eps, BLOCK=triton.next_power_of_2(n_cols), num_warps=8
        )
        return out

    def add_rmsnorm(self, residual, delta, weight, eps):
        out = torch.empty_like(residual)
        n_cols = residual.shape[-1]
        _add_rmsnorm_kernel[(residual.shape[0],)](
            residual,
            delta,
            weight,
            out,
            n_cols,
            eps,
            BLOCK=triton.next_power_of_2(n_cols),
            num_warps=8,
        )
        return residual, out

    def silu_mul(self, gate_up):
        rows, cols = gate_up.shape[0], gate_up.shape[1] // 2
        out = torch.empty((rows, cols), device=gate_up.device, dtype=gate_up.dtype)
        block = 1024
        _silu_mul_kernel[(rows, triton.cdiv(cols, block))](gate_up, out, cols, BLOCK=block)
        return out

    def rope_and_cache(self, qkv, positions, rows, k_rows, v_rows, rope_cos, rope_sin, config):
        n = qkv.shape[0]
        h, kh, d = config.num_heads, config.num_kv_heads, config.head_dim
        q = torch.empty((n, h, d), device=qkv.device, dtype=qkv.dtype)
        args = (qkv, positions, rows, rope_cos, rope_sin, q, k_rows, v_rows)
        if n >= PROMPT_ROPE_MIN_TOKENS:
            _rope_cache_block_kernel[(triton.cdiv(n, ROPE_BLOCK_TOKENS), h + kh)](
                *args, n, H=h, K=kh, D=d, BLOCK_T=ROPE_BLOCK_TOKENS, num_warps=4
            )
        else:  # decode batches (and short chunks): one token and head per program
            _rope_cache_kernel[(n, h + kh)](*args, H=h, K=kh, D=d, num_warps=1)
        return q

    def decode_attention(self, q, k_cache, v_cache, block_table, slots, positions, max_len):
        b, h, d = q.shape
        page, kh = k_cache.shape[1], k_cache.shape[2]
        if page % DECODE_TILE_TOKENS:
            raise ValueError(f"KV blocks of {page} tokens: the kernel needs a multiple of 64")
        splits = _splits_for(b, kh, self.sms)
        partial = torch.empty((b, h, splits, d), device=q.device, dtype=torch.float32)
        lse = torch.empty((b, h, splits), device=q.device, dtype=torch.float32)
        _decode_attn_partial_kernel[(b, kh, splits)](
            q,
            k_cache,
            v_cache,
            block_table,
            block_table.shape[1],
            slots,
            positions,
            partial,
            lse,
            d**-0.5,
            PAGE=page,
            H=h,
            K=kh,
            G=h // kh,
            D=d,
            BLOCK_G=max(16, triton.next_power_of_2(h // kh)),
            BLOCK_N=DECODE_TILE_TOKENS,
            SPLITS=splits,
            num_warps=4,
            num_stages=2,
        )
        out = torch.empty((b, h * d), device=q.device, dtype=q.dtype)
        _decode_attn_merge_kernel[(b * h,)](partial, lse, out, D=d, SPLITS=splits)
        return out

    def prefill_attention(self, q, k, v):
        return prefill_attention(q, k, v)

    def lm_head(self, h, weight):
        return F.linear(h, weight)
