"""Assembles a worker: settings -> model, runner, engine, limits watcher. No HTTP routes here.

Contract: ``Worker(settings)`` is cheap; ``load()`` (slow: weights, warm-up, CUDA graphs) builds
everything and sets ``ready``; ``close()`` stops the engine and the watcher. The HTTP layer
(app.py) reads ``ready``, ``engine``, ``codec`` and ``settings`` and nothing else.

``uvicorn_config(worker, app, host, port)`` is the HTTP server around the app, with the
connection rules of ``WorkerSettings``: a connection must send its request line and headers
within ``header_timeout_seconds`` of connecting (or of its first byte after a keep-alive pause),
else it is answered 408 and closed; an idle keep-alive connection is closed after
``keep_alive_seconds``; past ``max_connections`` open connections, a new one is answered 503
(with Retry-After) and closed. Every response this layer writes itself (those, and the 400 for a
request that is not valid HTTP) carries the JSON error shape. The body deadline
(``body_timeout_seconds``) is kept by the app, which reads the body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from carpool_replica.scheduler import StaleLimits

from .api import error_body
from .config import default_prefill_chunk_tokens, resolve_model_config
from .limits import LimitsDocument, LimitsFileWatcher, default_limits, read_limits_file
from .metrics import WorkerMetrics

log = logging.getLogger(__name__)


def read_profile(path: Path):
    """The profile an emulated worker serves by; ProfileError (a ValueError) names the field."""
    from carpool_replica.profile import Profile, ProfileError

    try:
        return Profile.from_dict(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from exc


@dataclass
class WorkerSettings:
    model: str = "tiny"
    device: str = "auto"  # cpu | cuda | auto
    max_batch_size: int = 64  # slots: sequences in the batch at once
    max_context: int = 1024  # the longest sequence, prompt plus output (capped by the model's)
    kv_cache_tokens: int = 0  # the KV pool; 0 sizes it from free memory (see runner.py)
    prefill_token_budget: int = 0  # prompt tokens per step; 0 picks by device
    limits_path: Path | None = None
    limits_poll_seconds: float = 1.0
    admin_token: str | None = None
    cuda_graphs: bool = True
    kernels: bool = True  # fused Triton kernels on CUDA
    max_body_bytes: int = 1 << 20
    header_timeout_seconds: float = 10.0  # request line and headers, from the first byte
    body_timeout_seconds: float = 30.0  # the whole body, once the headers are in
    keep_alive_seconds: float = 5.0  # an idle connection between two requests
    max_connections: int = 1024  # open at once; each holds a socket and a little memory
    seed: int = 0
    # A profile JSON: serve through an emulated GPU that sleeps each step's measured time.
    emulate: Path | None = None


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.config = resolve_model_config(settings.model)
        self.metrics = WorkerMetrics()
        self.initial_limits: LimitsDocument = (
            read_limits_file(settings.limits_path)
            if settings.limits_path is not None
            else default_limits(settings.max_batch_size)
        )
        self.ready = False
        self.load_error: str | None = None
        self.engine = None
        self.codec = None
        self.max_context = min(settings.max_context, self.config.max_position_embeddings)
        # An emulated worker is sized by its profile: slots and context as measured.
        self.profile = None if settings.emulate is None else read_profile(settings.emulate)
        if self.profile is not None:
            self.max_context = self.profile.max_seq_len
            self.metrics.emulated.set(1)
        self._watcher: LimitsFileWatcher | None = None

    def load(self) -> None:
        from .engine import Engine
        from .tokenizer import load_tokenizer

        s = self.settings
        self.codec = load_tokenizer(self.config)
        if s.emulate is not None:
            runner, chunk, eos = self._emulated_runner()
        else:
            runner, chunk, eos = self._model_runner()
        self.engine = Engine(
            runner, self.initial_limits, self.metrics, prefill_token_budget=chunk, eos_token_ids=eos
        )
        self.engine.start()
        if s.limits_path is not None:
            self._watcher = LimitsFileWatcher(
                s.limits_path, self.apply_limits, s.limits_poll_seconds
            )
            self._watcher.check_once()  # records the digest of the file already applied
            self._watcher.start()
        self.ready = True
        log.info(
            "ready: %d slots, sequences of up to %d tokens, KV cache of %d tokens in blocks of %d",
            runner.num_slots,
            runner.max_seq_len,
            runner.kv_cache_tokens,
            runner.kv_block_tokens,
        )

    def _model_runner(self):
        """The model on this machine's GPU (or CPU): (runner, prefill chunk, EOS ids)."""
        import torch

        from .model import load_model
        from .runner import ModelRunner

        s = self.settings
        want_cuda = s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if want_cuda else "cpu")
        dtype = torch.bfloat16 if want_cuda else torch.float32
        ops = None
        if want_cuda and s.kernels:
            from .kernels import TritonOps

            ops = TritonOps()
        log.info("loading %s on %s (%s)", self.config.name, device, dtype)
        torch.manual_seed(s.seed)
        model = load_model(self.config, device, dtype, ops)
        runner = ModelRunner(
            model,
            s.max_batch_size,
            self.max_context,
            kv_cache_tokens=s.kv_cache_tokens or None,
            use_cuda_graphs=want_cuda and s.cuda_graphs,
        )
        runner.warmup()
        chunk = s.prefill_token_budget or default_prefill_chunk_tokens(want_cuda)
        return runner, chunk, self.config.eos_token_ids

    def _emulated_runner(self):
        """An emulated GPU sized and timed by the profile: (runner, its prefill chunk, no EOS)."""
        from .emulated import EmulatedRunner

        profile = self.profile
        log.warning(
            "EMULATED GPU: no model runs; each step sleeps its time from the profile of %s on %s",
            profile.model,
            profile.device,
        )
        runner = EmulatedRunner(profile, self.config.vocab_size)
        return runner, profile.prefill_chunk_tokens, ()

    def load_in_background(self) -> threading.Thread:
        def run() -> None:
            try:
                self.load()
            except Exception as exc:  # the process stays up to report it on /healthz
                log.exception("model load failed")
                self.load_error = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        thread.start()
        return thread

    def apply_limits(self, doc: LimitsDocument) -> bool:
        """The file watcher's entry point: a stale file is ignored, never an error."""
        try:
            self.engine.apply_limits(doc)
            return True
        except StaleLimits as exc:
            log.warning("limits file ignored: %s", exc)
            return False

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self.engine is not None:
            self.engine.stop()


def _raw_error(status: int, reason: str, message: str, *extra: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, written without h11."""
    body = json.dumps(error_body(status, message)).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _over_limit_app(limit: int):
    body = json.dumps(
        error_body(503, f"the worker has its limit of {limit} connections open; retry shortly")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def http_protocol(settings: WorkerSettings, metrics: WorkerMetrics) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the header deadline, the connection bound and JSON errors."""

    class WorkerHttpProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            metrics.http_connections.inc()
            if len(self.connections) > settings.max_connections:
                metrics.http_dropped.labels("over_connection_limit").inc()
                self.app = _over_limit_app(settings.max_connections)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            metrics.http_connections.dec()
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                # Part of a request line or headers (a whole one would have moved h11 on):
                # the deadline runs from the first byte after a keep-alive pause.
                if self._header_timer is None:
                    self._arm_header_timer()
            else:
                self._disarm_header_timer()

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(
                settings.header_timeout_seconds, self._header_timeout
            )

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            metrics.http_dropped.labels("header_timeout").inc()
            log.info(
                "%s: no whole request line and headers within %g s; closing",
                self.client[0] if self.client else "?",
                settings.header_timeout_seconds,
            )
            message = f"no whole request within {settings.header_timeout_seconds:g} s"
            self.transport.write(_raw_error(408, "Request Timeout", message))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # h11 found no valid HTTP/1.1 request: a bad request line, header or
            # Content-Length. Its detail stays in uvicorn's one-line warning.
            message = "the request is not valid HTTP/1.1 (request line, headers or framing)"
            self.transport.write(_raw_error(400, "Bad Request", message))
            self.transport.close()

    return WorkerHttpProtocol


def uvicorn_config(worker: Worker, app, host: str, port: int, **kwargs) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` under the worker's connection rules."""
    s = worker.settings
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol(s, worker.metrics),
        timeout_keep_alive=s.keep_alive_seconds,
        **kwargs,
    )
