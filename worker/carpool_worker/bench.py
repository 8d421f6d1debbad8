"""``python -m carpool_worker.bench``: decode speed against the HBM roofline, one line per batch.

Contract: prints JSON lines (the device, the copy bandwidth, then one line per batch size with
tokens/s, step milliseconds, the roofline tokens/s and the fraction reached) and a table last.
The roofline is the anchor's: a decode step must read every weight once and each row's KV
context once, so ``step >= (weight bytes + batch * context * KV bytes per token) / bandwidth``.
``--check`` first compares the fused kernels with the plain torch ops on random inputs.
"""

from __future__ import annotations

import argparse
import json

import torch

from . import profiling
from .profile_cli import build_runner, device_name


def check_kernels() -> dict:
    """Relative error of each fused kernel against the torch reference on random bf16 inputs."""
    from .config import PRESETS
    from .kernels import TritonOps
    from .model import KVCache, load_model
    from .torch_ops import TorchOps

    dev = torch.device("cuda")
    cfg = PRESETS["bench-1b"]
    fused, ref = TritonOps(), TorchOps()
    errors = {}

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    x = torch.randn(37, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
    w = torch.randn(cfg.hidden_size, device=dev, dtype=torch.bfloat16)
    errors["rmsnorm"] = rel(fused.rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w, 1e-5))
    d = torch.randn_like(x)
    errors["add_rmsnorm"] = rel(
        fused.add_rmsnorm(x.clone(), d, w, 1e-5)[1], ref.add_rmsnorm(x, d, w, 1e-5)[1]
    )
    gu = torch.randn(37, 2 * cfg.intermediate_size, device=dev, dtype=torch.bfloat16)
    errors["silu_mul"] = rel(fused.silu_mul(gu), ref.silu_mul(gu))
    model = load_model(cfg, dev, torch.bfloat16)
    slots_n, seq = 9, 700
    # A paged cache whose blocks interleave across slots, as a serving cache's would.
    cache = KVCache.with_dedicated_blocks(cfg, slots_n, seq, dev, torch.bfloat16)
    kc, vc = (t[0].normal_() for t in (cache.k, cache.v))
    kc2, vc2 = kc.clone(), vc.clone()
    qkv = torch.randn(
        5, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, device=dev, dtype=torch.bfloat16
    )
    pos = torch.tensor([0, 5, 63, 64, 699], device=dev)
    slots = torch.tensor([3, 0, 8, 1, 2], device=dev)
    rows = cache.rows(slots, pos)
    args = (model.rope_cos, model.rope_sin, cfg)
    q1 = fused.rope_and_cache(qkv, pos, rows, kc.flatten(0, 1), vc.flatten(0, 1), *args)
    q2 = ref.rope_and_cache(qkv, pos, rows, kc2.flatten(0, 1), vc2.flatten(0, 1), *args)
    errors["rope_q"] = rel(q1, q2)
    errors["rope_k_cache"] = rel(kc, kc2)
    errors["rope_v_cache"] = rel(vc, vc2)
    table = cache.block_table
    for batch in (1, 5, 64):
        slots = torch.randperm(slots_n, device=dev)[: min(batch, slots_n)].repeat(batch)[:batch]
        pos = torch.randint(0, seq, (batch,), device=dev)
        q = torch.randn(batch, cfg.num_heads, cfg.head_dim, device=dev, dtype=torch.bfloat16)
        a = fused.decode_attention(q, kc, vc, table, slots, pos, seq)
        b = ref.decode_attention(q, kc, vc, table, slots, pos, seq)
        errors[f"decode_attention_b{batch}"] = rel(a, b)
    return errors


def check_graph_path(model, steps: int = 16) -> float:
    """Fraction of greedy tokens on which the CUDA-graph decode (5 rows padded to 8) agrees
    with eager decode through the same kernels, after one batched prefill of 5 prompts."""
    from .runner import ModelRunner

    streams = []
    for graphs in (True, False):
        runner = ModelRunner(model, 16, 512, kv_cache_tokens=16 * 512, use_cuda_graphs=graphs)
        runner.warmup()
        runner.cache.dedicate_blocks()  # no scheduler: each sequence takes blocks of its own
        prompts = [[(7 * i + 13 * j) % 5000 + 1 for j in range(20 + 37 * i)] for i in range(5)]
        chunks = [(torch.tensor(p, device=model.device), i, 0) for i, p in enumerate(prompts)]
        with torch.inference_mode():
            tokens = runner.model.prefill_many(runner.cache, chunks).argmax(-1).tolist()
            out = [tokens]
            for step in range(steps):
                positions = [len(p) + step for p in prompts]
                _, greedy = runner.decode_logits(tokens, list(range(5)), positions)
                tokens = greedy.tolist()
                out.append(tokens)
        streams.append(out)
        del runner
    same = sum(a == b for x, y in zip(*streams, strict=True) for a, b in zip(x, y, strict=True))
    return same / (5 * (steps + 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carpool_worker.bench")
    p.add_argument("--model", default="bench-1b")
    p.add_argument("--batches", default="1,8,16,32,64,128")
    p.add_argument("--context", type=int, default=192, help="mean context (anchor: 128 + 128/2)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--check", action="store_true")
    p.add_argument("--no-kernels", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true")
    args = p.parse_args(argv)
    if args.check:
        print(json.dumps({"kernel_rel_errors": check_kernels()}), flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    args.device, args.max_batch_size, args.max_context = "auto", max(batches), 1024
    runner = build_runner(args)
    if args.check:
        agree = check_graph_path(runner.model)
        print(json.dumps({"graph_vs_eager_greedy_agreement": agree}), flush=True)
    profiling.fill_cache_random(runner)
    bw = profiling.copy_bandwidth(runner.device)
    cfg = runner.model.config
    weights = runner.model.weight_bytes
    kv_per_token = cfg.kv_bytes_per_token_per_element * runner.model.dtype.itemsize
    print(
        json.dumps(
            {
                "device": device_name(runner.device),
                "hbm_copy_TBps": round(bw / 1e12, 3),
                "weight_GB": round(weights / 1e9, 3),
                "ops": runner.model.ops.name,
            }
        )
    )
    rows = []
    for batch in batches:
        step = profiling.decode_step_seconds(runner, batch, args.context, args.steps)
        floor = (weights + batch * args.context * kv_per_token) / bw
        row = {
            "batch": batch,
            "tok_per_s": round(batch / step),
            "step_ms": round(step * 1e3, 3),
            "roofline_tok_per_s": round(batch / floor),
            "fraction_of_roofline": round(floor / step, 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'batch':>6} {'tok/s':>9} {'ms/step':>8} {'roofline':>9} {'fraction':>8}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['tok_per_s']:>9} {r['step_ms']:>8} "
            f"{r['roofline_tok_per_s']:>9} {r['fraction_of_roofline']:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
