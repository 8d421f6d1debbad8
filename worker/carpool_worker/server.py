"""Assembles a worker: settings -> model, runner, engine, limits watcher. No HTTP routes here.

Contract: ``Worker(settings)`` is cheap; ``load()`` (slow: weights, warm-up, CUDA graphs) builds
everything and sets ``ready``; ``close()`` stops the engine and the watcher. The HTTP layer
(app.py) reads ``ready``, ``engine``, ``codec`` and ``settings`` and nothing else.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from .config import resolve_model_config
from .limits import LimitsDocument, LimitsFileWatcher, default_limits, read_limits_file
from .metrics import WorkerMetrics
from .scheduler import StaleLimits

log = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    model: str = "tiny"
    device: str = "auto"  # cpu | cuda | auto
    max_batch_size: int = 64  # KV slots: sequences resident at once
    max_context: int = 1024  # tokens per slot (prompt + generated)
    prefill_token_budget: int = 0  # prompt tokens per step; 0 picks by device
    limits_path: Path | None = None
    limits_poll_seconds: float = 1.0
    admin_token: str | None = None
    cuda_graphs: bool = True
    kernels: bool = True  # fused Triton kernels on CUDA
    max_body_bytes: int = 1 << 20
    seed: int = 0


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
        self._watcher: LimitsFileWatcher | None = None

    def load(self) -> None:
        import torch

        from .engine import Engine
        from .model import load_model
        from .runner import ModelRunner
        from .tokenizer import load_tokenizer

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
        self.codec = load_tokenizer(self.config)
        runner = ModelRunner(
            model, s.max_batch_size, self.max_context, use_cuda_graphs=want_cuda and s.cuda_graphs
        )
        runner.warmup()
        budget = s.prefill_token_budget or (512 if want_cuda else 64)
        self.engine = Engine(
            runner,
            self.initial_limits,
            self.metrics,
            prefill_token_budget=budget,
            eos_token_ids=self.config.eos_token_ids,
        )
        self.engine.start()
        if s.limits_path is not None:
            self._watcher = LimitsFileWatcher(
                s.limits_path, self.apply_limits, s.limits_poll_seconds
            )
            self._watcher.check_once()  # records the digest of the file already applied
            self._watcher.start()
        self.ready = True
        log.info("ready: %d slots of %d tokens", s.max_batch_size, self.max_context)

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
