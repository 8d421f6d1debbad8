"""The serving peer of ``carpool bench serve``: transformers' continuous batching (paged KV cache)
serving the same token mix, in-process, on the same GPU.

Usage (from the repository root):

    python3 bench/hf_serve_peer.py --model bench-8b --rates 1,2,4 \\
        --requests 64 --seconds 60 --time-limit-seconds 120 [--json OUT.json]
    python3 bench/hf_serve_peer.py --model tiny --device cpu --rates 2 --requests 4 \\
        --max-prompt-tokens 256      # the CPU check: a 2-layer model, timings mean nothing

- Model: ``LlamaForCausalLM`` of a carpool preset's shape (``tiny``: 2 layers, hidden 64;
  ``bench-1b``; ``bench-8b``, the Llama-3.1-8B shape) with random weights, built on the device by
  the prefill benchmark's ``hf_peer`` (``carpool_worker.bench_prefill``); bf16 on CUDA, float32
  on CPU unless ``--dtype`` says.
- Requests: per rate, ``carpool_bench.serve.token_mix`` with the same trace, seed, bounds and
  prompt cap as ``carpool bench serve`` (so the same rate gets the same prompt and output
  lengths; prompt ids are random), submitted at their Poisson arrival times to one
  ``ContinuousBatchingManager`` (``model.init_continuous_batching()``, ``add_request``,
  ``get_result``) whose generation loop runs in its own thread. Greedy, EOS disabled: each request
  generates exactly its output length.
- Times: ``add_request(record_timestamps=True)`` stamps every generated token
  (``GenerationOutput.timestamps``, ``time.perf_counter``), so TTFT is the first stamp minus the
  submission and inter-token latency comes from the stamps. A transformers without
  ``record_timestamps`` is asked to stream instead (``streaming=True``) and each token is timed as
  it reaches the collecting thread; the output says which.
- Bounds: per rate at most ``--requests`` arrivals within ``--seconds``, and the whole rate
  stops ``--time-limit-seconds`` after its first arrival (a hard stop of the manager: requests not
  done are *unfinished*, and the row says how many completed).
- Output: the header, per-rate rows and capacity line of ``carpool bench serve`` (the same
  figures: ``carpool_bench.serve.rate_figures``), then one JSON line with the rows, the capacity,
  the attention implementation that ran, the cache's configuration and the warm-up time.

Attention: the manager accepts ``sdpa``, ``paged|eager`` or a flash implementation. The model is
built with ``sdpa``; transformers switches it to flash attention by itself when a flash package
is installed (``auto_switch_to_flash``), otherwise it runs SDPA over the paged cache with an
explicit attention mask (its cost grows with the tokens of the batch times the keys read).
``--attn`` picks another; each candidate that fails to start is reported and the next is tried
(older transformers spelled the paged ones ``sdpa_paged`` / ``paged_attention``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _source in ("bench", "operator", "replica", "worker"):  # an uninstalled checkout
    if str(REPO / _source) not in sys.path:
        sys.path.append(str(REPO / _source))

import torch  # noqa: E402
import transformers  # noqa: E402

from carpool_bench import serve  # noqa: E402
from carpool_bench.replay import Arrival, Outcome  # noqa: E402
from carpool_sim.trace import Request, load_azure_csv  # noqa: E402
from carpool_worker.bench_prefill import hf_peer  # noqa: E402
from carpool_worker.config import resolve_model_config  # noqa: E402

# (implementation, let transformers switch it to flash attention): the first that serves a smoke
# request runs. The flash switch needs a flash package (or the hub-fetched `kernels` one).
ATTN_CANDIDATES = (
    ("sdpa", True),
    ("sdpa", False),
    ("paged|eager", False),
    ("sdpa_paged", False),  # older transformers' spellings
    ("paged_attention", False),
)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bench-8b", help="tiny, bench-1b or bench-8b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on CUDA, float32 on CPU")
    serve.add_workload_arguments(p, REPO / serve.DEFAULT_TRACE, "1,2,4", requests=64)
    p.add_argument(
        "--time-limit-seconds",
        type=float,
        default=120.0,
        help="per rate, from its first arrival: then stop, the rest unfinished",
    )
    p.add_argument(
        "--attn",
        help="run this attention implementation as it is (default: sdpa, switched to flash "
        "attention by transformers where installed, then fallbacks)",
    )
    p.add_argument("--num-blocks", type=int,
                   help="KV cache blocks (default: transformers sizes it from free GPU memory; "
                   "on CPU, enough for 16 requests of the longest prompt)")  # fmt: skip
    p.add_argument("--max-batch-tokens", type=int, help="default: transformers' choice")
    p.add_argument("--no-warmup", action="store_true", help="skip the CUDA-graph warm-up")
    p.add_argument("--stop-after-miss", action="store_true", help="as carpool bench serve's")
    p.add_argument("--json", type=Path, help="also write the result here")
    return p


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def cb_config(args, requests_by_rate, auto_switch_to_flash: bool):
    """transformers' ContinuousBatchingConfig (None on versions without one)."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        return None
    kwargs = {}
    if "auto_switch_to_flash" in getattr(ContinuousBatchingConfig, "__dataclass_fields__", {}):
        kwargs["auto_switch_to_flash"] = auto_switch_to_flash
    if args.num_blocks:
        kwargs["num_blocks"] = args.num_blocks
    elif args.device == "cpu":  # transformers sizes the cache from GPU memory only
        longest = max(r.prompt_tokens + r.output_tokens for rs in requests_by_rate for r in rs)
        kwargs["num_blocks"] = max(16, 16 * (longest // 256 + 1))
    if args.max_batch_tokens:
        kwargs["max_batch_tokens"] = args.max_batch_tokens
    return ContinuousBatchingConfig(**kwargs)


def workload_hints(requests_by_rate):
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:
        return None
    every = [r for rs in requests_by_rate for r in rs]
    return WorkloadHints(
        max_prompt_length=max(r.prompt_tokens for r in every),
        max_generated_length=max(r.output_tokens for r in every),
        num_requests=max(len(rs) for rs in requests_by_rate),
    )


def open_manager(model, generation_config, config, hints):
    """A manager (the model's cached one after the first rate: its cache and CUDA graphs)."""
    kwargs = {"generation_config": generation_config}
    if config is not None:
        kwargs["continuous_batching_config"] = config
    if hints is not None:
        kwargs["workload_hints"] = hints
    return model.init_continuous_batching(**kwargs)


class Session:
    """Submits one rate's requests at their arrival times and collects what comes back."""

    def __init__(self, manager, vocab_size: int, streaming: bool, prefix: str):
        self.manager, self.streaming, self.prefix = manager, streaming, prefix
        self.vocab = min(250, vocab_size)
        self.sent: dict[str, float] = {}
        self.stream_times: dict[str, list[float]] = {}
        self.done: dict[str, tuple[object, float]] = {}  # id -> (output, when collected)
        self.stop = threading.Event()

    def collect(self) -> None:
        """Until ``stop`` is set and nothing is left to read."""
        while True:
            result = self.manager.get_result(timeout=0.05)
            if result is None:
                if self.stop.is_set():
                    return
                continue
            if not result.request_id.startswith(self.prefix):
                continue  # an earlier rate's, failed by its stop
            now = time.perf_counter()
            if self.streaming:
                seen = self.stream_times.setdefault(result.request_id, [])
                seen.extend([now] * (len(result.generated_tokens) - len(seen)))
            if result.is_finished():
                self.done[result.request_id] = (result, now)

    def prompts(self, requests: list[Request], seed: int) -> list[list[int]]:
        rng = random.Random(seed)
        return [[rng.randrange(1, self.vocab) for _ in range(r.prompt_tokens)] for r in requests]

    def submit(self, request_id: str, ids: list[int], max_new_tokens: int) -> None:
        kwargs = {"streaming": True} if self.streaming else {"record_timestamps": True}
        self.sent[request_id] = time.perf_counter()
        self.manager.add_request(
            ids, request_id=request_id, max_new_tokens=max_new_tokens, **kwargs
        )

    def outcomes(self, requests: list[Request], origin: float, stopped_at: float) -> list[Outcome]:
        """Completed and failed requests. One never sent, or failed by the stop at the time
        limit, is left out: unfinished."""
        out = []
        for i, r in enumerate(requests):
            rid = f"{self.prefix}{i}"
            if rid not in self.sent or rid not in self.done:
                continue
            result, collected = self.done[rid]
            failed = getattr(result, "error", None) is not None
            if failed and collected >= stopped_at:
                continue
            stamps = self.stream_times.get(rid) or getattr(result, "timestamps", None) or []
            times = [t - origin for t in stamps]
            out.append(
                Outcome(
                    Arrival(r.arrival_seconds, "default", r.prompt_tokens, r.output_tokens),
                    sent_at=self.sent[rid] - origin,
                    first_token_at=times[0] if times and not failed else None,
                    finished_at=times[-1] if times else collected - origin,
                    status=500 if failed else 200,
                    token_times=times,
                    output_tokens=len(result.generated_tokens),
                )
            )
        return out


def run_rate(model, args, rate, requests, generation_config, config, hints, streaming):
    """One rate: (outcomes, warm-up seconds, the manager, the attention implementation it ran).
    The manager stays cached on the model for the next rate, and is hard-stopped at the time
    limit (which puts the model's own attention implementation back)."""
    manager = open_manager(model, generation_config, config, hints)
    attn = model.config._attn_implementation  # as the manager switched it
    warmup = 0.0
    if not args.no_warmup and hasattr(manager, "warmup") and not manager.warmed_up:
        start = time.perf_counter()
        manager.warmup()
        warmup = time.perf_counter() - start
    with torch.inference_mode():
        manager.start()
    session = Session(manager, model.config.vocab_size, streaming, f"r{rate:g}-")
    collector = threading.Thread(target=session.collect, daemon=True)
    collector.start()
    prompts = session.prompts(requests, args.seed)  # made before the clock starts
    origin = time.perf_counter()
    limit = origin + args.time_limit_seconds
    try:
        for i, r in enumerate(requests):
            at = origin + r.arrival_seconds
            if at > limit:
                break
            time.sleep(max(0.0, at - time.perf_counter()))
            session.submit(f"{session.prefix}{i}", prompts[i], r.output_tokens)
        while len(session.done) < len(session.sent) and time.perf_counter() < limit:
            if not manager.is_running():
                note(f"rate {rate:g}: the generation loop stopped early")
                break
            time.sleep(0.05)
    finally:
        stopped_at = time.perf_counter()
        try:
            manager.stop(block=True, timeout=120, keep_for_next_session=True, hard_stop=True)
        except TypeError:  # a transformers without hard stops
            manager.stop(block=True, timeout=120, keep_for_next_session=True)
        session.stop.set()
        collector.join()
    return session.outcomes(requests, origin, stopped_at), warmup, manager, attn


def record_timestamps_supported() -> bool:
    import inspect

    from transformers.generation.continuous_batching import ContinuousBatchingManager

    parameters = inspect.signature(ContinuousBatchingManager.add_request).parameters
    return "record_timestamps" in parameters


def start_model(args, requests_by_rate, generation_config):
    """The model, and the first attention implementation under which continuous batching serves
    a smoke request (the warm-up happens there)."""
    config = resolve_model_config(args.model)
    device = torch.device(args.device)
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = hf_peer(config, device, DTYPES[args.dtype] if args.dtype else default)
    hints = workload_hints(requests_by_rate)
    streaming = not record_timestamps_supported()
    smoke = [Request("default", 0.0, 8, 2)]
    smoke_args = argparse.Namespace(**{**vars(args), "time_limit_seconds": 600.0, "seed": 0})
    failed = []
    for attn, auto_flash in [(args.attn, False)] if args.attn else ATTN_CANDIDATES:
        cfg = cb_config(args, requests_by_rate, auto_flash)
        try:
            model.set_attn_implementation(attn)
            results, warmup, _, running = run_rate(
                model, smoke_args, 0.0, smoke, generation_config, cfg, hints, streaming
            )
            if not results or results[0].status != 200:
                raise RuntimeError("the smoke request did not complete")
            return model, (attn, running), cfg, hints, streaming, failed, warmup
        except Exception as error:  # noqa: BLE001 - try the next implementation
            failed.append(
                {"attn": attn, "auto_switch_to_flash": auto_flash,
                 "error": f"{type(error).__name__}: {error}"[:300]}
            )  # fmt: skip
            with contextlib.suppress(Exception):
                model.destroy_cached_continuous_batching_manager()
    raise RuntimeError(f"no attention implementation ran continuous batching: {failed}")


def cache_settings(manager) -> dict:
    resolved = getattr(manager, "continuous_batching_config", None)
    names = ("page_size", "num_blocks", "max_batch_tokens", "max_requests_per_batch",
             "use_cuda_graph", "use_async_batching")  # fmt: skip
    settings = {name: getattr(resolved, name, None) for name in names}
    if isinstance(settings["use_cuda_graph"], tuple):
        settings["use_cuda_graph"] = list(settings["use_cuda_graph"])
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rates = serve.parse_rates(args.rates)
    trace = load_azure_csv(args.trace, "default")
    requests_by_rate = [
        serve.token_mix(trace, rate, args.seconds, args.requests, args.seed, args.max_prompt_tokens)
        for rate in rates
    ]
    if not any(requests_by_rate):
        print("hf_serve_peer: no rate has an arrival within --seconds", file=sys.stderr)
        return 2
    longest_output = max(r.output_tokens for rs in requests_by_rate for r in rs)
    generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=longest_output, eos_token_id=-1, pad_token_id=0
    )
    cuda = args.device.startswith("cuda")
    head = {
        "peer": "transformers continuous batching",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu",
        "model": args.model,
    }
    model, (attn, running), cfg, hints, streaming, failed, warmup = start_model(
        args, requests_by_rate, generation_config
    )
    head |= {
        "attn_requested": attn,
        "attn_running": running,
        "attn_failed": failed,
        "token_times": "streamed to a collecting thread" if streaming else "record_timestamps",
        "warmup_seconds": round(warmup, 3),
    }
    emit(head)
    sla = args.sla_ttft_ms / 1e3
    print(serve.table_header(sla), flush=True)
    rows, manager = [], None
    for rate, requests in zip(rates, requests_by_rate, strict=True):
        if not requests:
            note(serve.no_arrivals_note(rate))
            continue
        results, _, manager, _ = run_rate(
            model, args, rate, requests, generation_config, cfg, hints, streaming
        )
        row = serve.rate_figures(rate, len(requests), results, sla, args.time_limit_seconds)
        rows.append(row)
        print(serve.table_row(row), flush=True)
        if row["unfinished"]:
            note(
                f"rate {rate:g}: the time limit hit; {row['completed']} of {row['sent']} completed"
            )
        if args.stop_after_miss and not row["ttft_p95_within_sla"]:
            note(serve.stop_note(rate))
            break
    result = serve.capacity(rows)
    print(serve.capacity_line(result, sla), flush=True)
    settings = cache_settings(manager)
    with contextlib.suppress(Exception):
        model.destroy_cached_continuous_batching_manager()
    document = head | {
        "cache": settings,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_requests_per_rate": args.requests,
        "seconds_per_rate": args.seconds,
        "time_limit_seconds": args.time_limit_seconds,
        "seed": args.seed,
        "sla_ttft_seconds": sla,
        "rates": rows,
        "capacity": result,
    }
    emit(document)
    if args.json:
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
