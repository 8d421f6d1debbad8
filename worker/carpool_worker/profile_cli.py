"""``carpool profile``: measure a model's step-time profile on this device (schema in profile.md).

Contract: ``main(argv) -> int``. Writes a ``carpool.dev/profile/v2`` JSON (docs/profile.md),
every step timed as the engine runs it: decode steps on a grid of batch sizes x context lengths,
prefill chunks on a grid of chunk lengths x offsets into the prompt, and mixed steps (a chunk
beside a decode batch) to check that a mixed step costs the sum of its parts; with the slots,
context and prefill chunk the worker serves with. Also a PNG of the Pareto curve: generated
tokens per second against p95 time to first token as the batch limit grows, measured through
the real engine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

SCHEMA = "carpool.dev/profile/v2"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpool profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--max-batch-size", type=int, default=128, help="sequences in a batch")
    p.add_argument("--max-context", type=int, default=2304, help="longest sequence, in tokens")
    p.add_argument("--batch-sizes", type=_ints, default=_ints("1,2,4,8,16,32,64,128"))
    p.add_argument("--contexts", type=_ints, default=_ints("128,512,1024,2048"))
    p.add_argument(
        "--prefill-chunk-tokens",
        type=int,
        default=0,
        help="prompt tokens per engine step, as the worker's flag (0: the worker's default)",
    )
    p.add_argument(
        "--chunk-sizes", type=_ints, default=_ints("16,64,128,256,512,1024,2048"),
        help="prefill chunk lengths measured (those above the chunk size are skipped)",
    )  # fmt: skip
    p.add_argument(
        "--offsets", type=_ints, default=_ints("0,512,1024,2048,4096,8192,16384"),
        help="offsets into the prompt at which chunks are measured (below --max-context)",
    )  # fmt: skip
    p.add_argument(
        "--mixed", type=_ints, default=_ints("1,16,64"),
        help="decode batch sizes measured beside a full chunk, to check additivity",
    )  # fmt: skip
    p.add_argument("--pareto-batch-sizes", type=_ints, default=_ints("1,2,4,8,16,32,64,128"))
    p.add_argument("--pareto-prompt-tokens", type=int, default=256)
    p.add_argument("--pareto-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="decode steps timed per grid point")
    p.add_argument("--no-kernels", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    p.add_argument("--plot", type=Path, help="Pareto PNG to write (default: OUT with .png)")
    return p


def build_runner(args):
    import torch

    from .config import resolve_model_config
    from .model import load_model
    from .runner import ModelRunner

    config = resolve_model_config(args.model)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    ops = None
    if cuda and not args.no_kernels:
        from .kernels import TritonOps

        ops = TritonOps()
    model = load_model(config, device, torch.bfloat16 if cuda else torch.float32, ops)
    runner = ModelRunner(
        model,
        args.max_batch_size,
        args.max_context,
        use_cuda_graphs=cuda and not args.no_cuda_graphs,
    )
    runner.warmup()
    return runner


def device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def measure(args, runner, log) -> dict:
    from . import profiling

    profiling.fill_cache_random(runner)
    decode = []
    for context in args.contexts:
        for batch in args.batch_sizes:
            if batch > runner.num_slots or context >= runner.max_seq_len:
                continue
            seconds = profiling.decode_step_seconds(runner, batch, context, args.steps)
            decode.append(
                {"batch_size": batch, "context_tokens": context, "step_seconds": round(seconds, 6)}
            )
            log.info("decode batch=%d context=%d %.3f ms", batch, context, seconds * 1e3)
    from .config import default_prefill_chunk_tokens

    chunk_tokens = args.prefill_chunk_tokens or default_prefill_chunk_tokens(
        runner.device.type == "cuda"
    )
    chunks = []
    for offset in args.offsets:
        for chunk in sorted({c for c in args.chunk_sizes if c <= chunk_tokens} | {chunk_tokens}):
            if offset + chunk > runner.max_seq_len:
                continue
            seconds = profiling.chunk_seconds(runner, chunk, offset)
            chunks.append(
                {"chunk_tokens": chunk, "offset_tokens": offset, "seconds": round(seconds, 6)}
            )
            log.info("prefill chunk=%d offset=%d %.3f ms", chunk, offset, seconds * 1e3)
    mixed = []
    for batch in args.mixed:
        for context, offset in ((512, 0), (2048, 2048)):
            if (
                batch + 1 > runner.num_slots
                or max(context, offset + chunk_tokens) > runner.max_seq_len
            ):
                continue
            seconds = profiling.mixed_seconds(runner, batch, context, chunk_tokens, offset)
            mixed.append({"batch_size": batch, "context_tokens": context,
                          "chunk_tokens": chunk_tokens, "offset_tokens": offset,
                          "seconds": round(seconds, 6)})  # fmt: skip
            log.info("mixed %s", mixed[-1])
    pareto = []
    for batch in args.pareto_batch_sizes:
        if batch > runner.num_slots:
            continue
        point = profiling.engine_pareto_point(
            runner,
            batch,
            args.pareto_prompt_tokens,
            args.pareto_new_tokens,
            2 * batch,
            chunk_tokens,
        )
        pareto.append(point)
        log.info("pareto %s", point)
    return {
        "schema": SCHEMA,
        "model": runner.model.config.name,
        "device": device_name(runner.device),
        "dtype": str(runner.model.dtype).removeprefix("torch."),
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kv_cache_tokens": runner.kv_cache_tokens,
        "kv_block_tokens": runner.kv_block_tokens,
        "max_batch_size": runner.num_slots,
        "max_seq_len": runner.max_seq_len,
        "prefill_chunk_tokens": chunk_tokens,
        "decode": decode,
        "prefill_chunks": chunks,
        "mixed": mixed,
        "pareto": {
            "prompt_tokens": args.pareto_prompt_tokens,
            "new_tokens": args.pareto_new_tokens,
            "points": pareto,
        },
    }


def plot_pareto(profile: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = profile["pareto"]["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["ttft_p95_seconds"] * 1e3 for p in points]
    ys = [p["tokens_per_second"] for p in points]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(str(p["max_batch_size"]), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("p95 time to first token (ms)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{profile['model']} on {profile['device']}: batch limit ->")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("carpool.profile")
    runner = build_runner(args)
    profile = measure(args, runner, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=1) + "\n")
    plot_pareto(profile, args.plot or args.out.with_suffix(".png"))
    log.info("wrote %s", args.out)
    return 0
