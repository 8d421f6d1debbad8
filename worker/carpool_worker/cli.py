"""``carpool worker``: serve a model over HTTP with per-endpoint continuous batching.

Contract: ``main(argv) -> int``. Binds only where told (``--host``, default 127.0.0.1); reads the
limits file (``--limits``) at start and whenever its content changes, and the admin bearer token
from ``--admin-token-file``. Connections have header, body and keep-alive deadlines and a bound
(``--max-connections``); see docs/worker.md. Exit status 2 on a bad argument, model or limits
file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import ModelSpecError
from .limits import LimitsError

# The longest sequence a worker serves when not told (the bench presets' own limit is 128k).
DEFAULT_MAX_CONTEXT = 32768


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpool worker", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="preset (tiny, bench-1b, bench-8b) or a path")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--limits", type=Path, help="limits JSON file (the operator's ConfigMap)")
    p.add_argument("--limits-poll-seconds", type=float, default=1.0)
    p.add_argument("--admin-token-file", type=Path, help="bearer token for PUT /admin/limits")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--max-batch-size", type=int, default=64, help="sequences in the batch at once (slots)"
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=0,
        help="longest sequence, prompt plus output (0: the model's limit, at most "
        f"{DEFAULT_MAX_CONTEXT})",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=0,
        help="KV cache size in tokens, one pool of blocks for all sequences (0: most of the "
        "GPU memory left after the weights; on CPU, 1 GiB)",
    )
    p.add_argument(
        "--prefill-chunk-tokens", type=int, default=0, help="prompt tokens per step (0: auto)"
    )
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-kernels", action="store_true", help="plain torch ops on CUDA")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--header-timeout-seconds",
        type=float,
        default=10.0,
        help="time to send a request line and headers (then 408 and close)",
    )
    p.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=30.0,
        help="time to send a whole body once the headers are in (then 408 and close)",
    )
    p.add_argument(
        "--keep-alive-seconds", type=float, default=5.0, help="idle time between two requests"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="connections open at once; past it a new one is answered 503 and closed",
    )
    p.add_argument(
        "--emulate",
        type=Path,
        metavar="PROFILE",
        help="serve through an emulated GPU: no model runs, each step sleeps its time from this "
        "profile JSON (slots and context come from it too)",
    )
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from .app import create_app
    from .server import Worker, WorkerSettings, uvicorn_config

    if args.max_batch_size < 1 or not (args.max_context == 0 or args.max_context >= 16):
        print("carpool worker: --max-batch-size must be >= 1 and --max-context >= 16 (or 0)")
        return 2
    if args.kv_cache_tokens < 0:
        print("carpool worker: --kv-cache-tokens must be >= 0 (0 sizes it from free memory)")
        return 2
    timeouts = (args.header_timeout_seconds, args.body_timeout_seconds, args.keep_alive_seconds)
    if min(timeouts) <= 0 or args.max_connections < 1:
        print("carpool worker: timeouts must be > 0 and --max-connections >= 1")
        return 2
    token = None
    if args.admin_token_file is not None:
        token = args.admin_token_file.read_text().strip()
        if not token:
            print(f"carpool worker: {args.admin_token_file} is empty")
            return 2
    settings = WorkerSettings(
        model=args.model,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_context=args.max_context or DEFAULT_MAX_CONTEXT,
        kv_cache_tokens=args.kv_cache_tokens,
        prefill_token_budget=args.prefill_chunk_tokens,
        limits_path=args.limits,
        limits_poll_seconds=args.limits_poll_seconds,
        admin_token=token,
        cuda_graphs=not args.no_cuda_graphs,
        kernels=not args.no_kernels,
        max_body_bytes=args.max_body_bytes,
        header_timeout_seconds=args.header_timeout_seconds,
        body_timeout_seconds=args.body_timeout_seconds,
        keep_alive_seconds=args.keep_alive_seconds,
        max_connections=args.max_connections,
        emulate=args.emulate,
    )
    try:
        worker = Worker(settings)
    except (ModelSpecError, LimitsError, ValueError, OSError) as exc:
        print(f"carpool worker: {exc}")
        return 2
    config = uvicorn_config(
        worker, create_app(worker), args.host, args.port, log_level=args.log_level.lower()
    )
    uvicorn.Server(config).run()
    return 0
