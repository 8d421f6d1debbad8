"""``python -m carpool_worker.bench_prefill``: prefill against the compute roofline and a peer.

Contract: for each prompt length it prints one JSON line with carpool's prefill time one-shot
(the whole prompt in one chunk), chunked at ``--chunk`` tokens (the total and each chunk's time
at its offset) and, in the same process on the same device, the time of Hugging Face
``LlamaForCausalLM`` (SDPA attention, random weights of the same shape, one prompt, logits of
the last position only, as ``generate`` asks for); each with its share of the roofline and its
cost per token. The roofline is ``2 x parameters x tokens / matmul peak``, the peak measured in
the same run (a bf16 8192^3 product on CUDA). The peer is given carpool's weights, so each line
also says how far the two last-position logits are apart and whether the argmax agrees (and
chunked against one-shot): a check of the device path, not only a timing. A header line gives
the device, versions, the peak and whether the prefill attention runs on SDPA's flash kernel; a
summary line and a table end the run. It imports only the model side of the worker (no HTTP,
no engine), so it runs where torch, triton and transformers are installed and nothing else is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from carpool_replica.profile import DEFAULT_KV_BLOCK_TOKENS

from .config import default_prefill_chunk_tokens, resolve_model_config
from .kv_cache import KVCache
from .model import load_model
from .profile_cli import device_name
from .torch_ops import prefill_attention

# The worker's prompt tokens per step on CUDA.
ENGINE_CHUNK_TOKENS = default_prefill_chunk_tokens(cuda=True)


class Clock:
    """Marks on the device's stream (CUDA events) or the host clock; seconds between marks."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()  # an empty stream: the first mark is now
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, reps: int = 10) -> float:
    """FLOP/s of a square ``size``^3 product on random data, after three warm-up products."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    clock = Clock(device)
    clock.mark()
    for _ in range(reps):
        a @ b
    clock.mark()
    return 2 * size**3 * reps / clock.intervals()[0]


def flash_attention_usable(config, device, dtype) -> dict[str, bool] | None:
    """Whether the prefill attention runs with SDPA restricted to its flash kernel, for a first
    chunk and for a chunk at an offset (None off CUDA, where there is no flash kernel)."""
    if device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h, kh, d = config.num_heads, config.num_kv_heads, config.head_dim
    result = {}
    for name, (n, length) in {"first_chunk": (256, 256), "at_offset": (256, 1024)}.items():
        q = torch.randn(n, h, d, device=device, dtype=dtype)
        kv = torch.randn(length, kh, d, device=device, dtype=dtype)
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                prefill_attention(q, kv, kv)
            result[name] = True
        except RuntimeError:
            result[name] = False
    return result


@torch.inference_mode()
def time_carpool(model, cache, prompt: torch.Tensor, chunk: int, reps: int):
    """Median seconds of the whole prefill and of each (start, seconds) chunk, and the last
    logits; ``chunk`` >= len(prompt) is one-shot. One untimed run first (Triton compiles, cuBLAS
    picks its kernels)."""
    starts = list(range(0, prompt.shape[0], chunk))
    runs = []
    for _ in range(reps + 1):
        clock = Clock(model.device)
        clock.mark()
        for start in starts:
            logits = model.prefill(cache, prompt[start : start + chunk], 0, start)
            clock.mark()
        int(logits.argmax())  # the first token's id reaches the host, as the engine needs
        runs.append(clock.intervals())
    runs = runs[1:]
    total = statistics.median(sum(run) for run in runs)
    per_chunk = [statistics.median(run[i] for run in runs) for i in range(len(starts))]
    return total, list(zip(starts, per_chunk, strict=True)), logits


def hf_peer(config, device, dtype):
    """transformers' LlamaForCausalLM of the same shape, built on the device."""
    import transformers

    kwargs = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        attn_implementation="sdpa",
    )
    if config.rope_scaling is not None:
        s = config.rope_scaling
        kwargs["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    hf_config = transformers.LlamaConfig(**kwargs)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Built where it runs: an 8B model initialised on the host would take minutes.
        with torch.device(device):
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(hf_config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


@torch.no_grad()
def copy_weights(peer, model) -> None:
    """carpool's fused q/k/v and gate/up weights, split into the peer's separate projections."""
    c, p = model.config, model.params
    peer.model.embed_tokens.weight.copy_(p["embed"])
    peer.model.norm.weight.copy_(p["norm"])
    if not c.tie_word_embeddings:
        peer.lm_head.weight.copy_(p["lm_head"])
    widths = [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
    for i, layer in enumerate(peer.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for proj, weight in zip(
            (attn.q_proj, attn.k_proj, attn.v_proj), p[f"{i}.wqkv"].split(widths), strict=True
        ):
            proj.weight.copy_(weight)
        attn.o_proj.weight.copy_(p[f"{i}.wo"])
        layer.input_layernorm.weight.copy_(p[f"{i}.attn_norm"])
        layer.post_attention_layernorm.weight.copy_(p[f"{i}.mlp_norm"])
        gate, up = p[f"{i}.w_gate_up"].chunk(2)
        mlp.gate_proj.weight.copy_(gate)
        mlp.up_proj.weight.copy_(up)
        mlp.down_proj.weight.copy_(p[f"{i}.w_down"])


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    a, b = ours.float(), theirs.float()
    return {
        "rel_err": float(f"{float((a - b).norm() / b.norm()):.3g}"),
        "argmax_agrees": bool(a.argmax() == b.argmax()),
    }


@torch.inference_mode()
def time_peer(peer, prompt: torch.Tensor, reps: int):
    ids = prompt[None, :]
    times = []
    for _ in range(reps + 1):
        clock = Clock(prompt.device)
        clock.mark()
        logits = peer(input_ids=ids, logits_to_keep=1).logits
        clock.mark()
        int(logits[0, -1].argmax())
        times.append(clock.intervals()[0])
    return statistics.median(times[1:]), logits[0, -1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m carpool_worker.bench_prefill")
    p.add_argument("--model", default="bench-8b")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--lengths", default="1024,2048,4096,8000,16384", help="prompt tokens")
    p.add_argument(
        "--chunk",
        type=int,
        default=ENGINE_CHUNK_TOKENS,
        help="tokens per chunk for the chunked prefill (0: one-shot only)",
    )
    p.add_argument("--reps", type=int, default=3, help="timed runs per point (median)")
    p.add_argument("--peak-size", type=int, default=0, help="matmul size (0: 8192 CUDA, 512 CPU)")
    p.add_argument("--no-peer", action="store_true", help="skip Hugging Face")
    p.add_argument("--no-kernels", action="store_true", help="plain torch ops on CUDA")
    return p


def share(roofline: float, seconds: float | None) -> float | None:
    return None if seconds is None else round(roofline / seconds, 3)


def per_token_us(seconds: float | None, tokens: int) -> float | None:
    return None if seconds is None else round(seconds / tokens * 1e6, 3)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_model_config(args.model)
    lengths = [int(v) for v in args.lengths.split(",") if v]
    if max(lengths) > config.max_position_embeddings:
        raise SystemExit(f"{args.model} has {config.max_position_embeddings} positions at most")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    ops = None
    if cuda and not args.no_kernels:
        from .kernels import TritonOps

        ops = TritonOps()
    peak = matmul_peak(device, dtype, args.peak_size or (8192 if cuda else 512))
    model = load_model(config, device, dtype, ops)
    cache = KVCache.with_dedicated_blocks(
        config, 1, max(lengths), device, dtype, DEFAULT_KV_BLOCK_TOKENS
    )
    peer = None
    if not args.no_peer:
        peer = hf_peer(config, device, dtype)
        copy_weights(peer, model)
    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "model": config.name,
        "dtype": str(dtype).removeprefix("torch."),
        "ops": model.ops.name,
        "params": config.num_params,
        "matmul_peak_TFLOPs": float(f"{peak / 1e12:.4g}"),
        "prefill_attention_on_flash": flash_attention_usable(config, device, dtype),
    }
    if peer is not None:
        import transformers

        header["transformers"] = transformers.__version__
        header["peer_params"] = sum(t.numel() for t in peer.parameters())
        header["peer_attention"] = peer.config._attn_implementation
    print(json.dumps(header), flush=True)
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for tokens in lengths:
        prompt = torch.randint(0, config.vocab_size, (tokens,), device=device, generator=gen)
        roofline = 2 * config.num_params * tokens / peak
        one_shot, _, logits = time_carpool(model, cache, prompt, tokens, args.reps)
        row = {
            "prompt_tokens": tokens,
            "roofline_seconds": round(roofline, 6),
            "carpool_seconds": round(one_shot, 6),
            "carpool_share": share(roofline, one_shot),
            "carpool_us_per_token": per_token_us(one_shot, tokens),
        }
        if 0 < args.chunk < tokens:
            total, chunks, chunked_logits = time_carpool(
                model, cache, prompt, args.chunk, args.reps
            )
            row |= {
                "chunked_vs_one_shot": compare(chunked_logits, logits),
                "chunk_tokens": args.chunk,
                "chunked_seconds": round(total, 6),
                "chunked_share": share(roofline, total),
                "chunked_us_per_token": per_token_us(total, tokens),
                "chunk_ms_at_offset": [[s, round(t * 1e3, 3)] for s, t in chunks],
            }
        if peer is not None:
            hf, hf_logits = time_peer(peer, prompt, args.reps)
            row |= {
                "one_shot_vs_hf": compare(logits, hf_logits),
                "hf_seconds": round(hf, 6),
                "hf_share": share(roofline, hf),
                "hf_us_per_token": per_token_us(hf, tokens),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_summary(rows)
    return 0


def print_summary(rows: list[dict]) -> None:
    # Cost per token of one-shot prefill from 1k to 8k tokens: max over min, less one.
    band = [r["carpool_us_per_token"] for r in rows if 1000 <= r["prompt_tokens"] <= 8192]
    spread = round(max(band) / min(band) - 1, 3) if band else None
    print(json.dumps({"carpool_per_token_spread_1k_8k": spread}), flush=True)
    columns = [
        ("tokens", "prompt_tokens"),
        ("carpool_s", "carpool_seconds"),
        ("share", "carpool_share"),
        ("us/tok", "carpool_us_per_token"),
        ("chunked_s", "chunked_seconds"),
        ("share", "chunked_share"),
        ("hf_s", "hf_seconds"),
        ("hf_share", "hf_share"),
    ]
    print(" ".join(f"{title:>10}" for title, _ in columns))
    for r in rows:
        print(" ".join(f"{r.get(key, '-')!s:>10}" for _, key in columns))


if __name__ == "__main__":
    raise SystemExit(main())
