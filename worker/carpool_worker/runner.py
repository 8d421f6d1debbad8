"""Executes a scheduler :class:`Step` on the model: prefill chunks, one batched decode, sampling.

Contract: ``ModelRunner.execute(step)`` returns ``{request id: sampled token}`` for every decode
row and every prefill chunk that completes its prompt. Host work per step is a few small tensor
copies and one device->host transfer of the sampled ids; there is no Python loop per token per
sequence on the device path. On CUDA the decode step replays a CUDA graph captured for the next
batch size up (rows past the real batch are padding that writes to the cache's scratch slot).
"""

from __future__ import annotations

import logging

import torch

from .model import KVCache, LlamaModel
from .sampling import sample
from .scheduler import Step

log = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    sizes += list(range(16, max_batch + 16, 16))
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


class DecodeGraphs:
    """One CUDA graph per padded batch size, sharing static input buffers and a memory pool."""

    def __init__(self, model: LlamaModel, cache: KVCache, batch_sizes: list[int]):
        self.model, self.cache = model, cache
        self.sizes = sorted(batch_sizes)
        largest = self.sizes[-1]
        device = model.device
        self.tokens = torch.zeros(largest, dtype=torch.long, device=device)
        self.slots = torch.full((largest,), cache.scratch_slot, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.host = torch.zeros((3, largest), dtype=torch.long).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: autotuning and lazy inits stay out of the capture
                model.decode(cache, self.tokens, self.slots, self.positions)
        torch.cuda.current_stream().wait_stream(stream)
        for size in reversed(self.sizes):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = model.decode(
                    cache, self.tokens[:size], self.slots[:size], self.positions[:size]
                )
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def run(self, tokens: list[int], slots: list[int], positions: list[int]) -> torch.Tensor:
        n = len(tokens)
        size = next(s for s in self.sizes if s >= n)
        host = self.host
        host[0, :n] = torch.tensor(tokens)
        host[1, :n] = torch.tensor(slots)
        host[2, :n] = torch.tensor(positions)
        host[0, n:size] = 0
        host[1, n:size] = self.cache.scratch_slot
        host[2, n:size] = 0
        self.tokens[:size].copy_(host[0, :size], non_blocking=True)
        self.slots[:size].copy_(host[1, :size], non_blocking=True)
        self.positions[:size].copy_(host[2, :size], non_blocking=True)
        self.graphs[size].replay()
        return self.outputs[size][:n]


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_slots: int,
        max_seq_len: int,
        use_cuda_graphs: bool | None = None,
        seed: int = 0,
    ):
        self.model = model
        self.device = model.device
        self.cache = KVCache(model.config, num_slots, max_seq_len, model.device, model.dtype)
        if use_cuda_graphs is None:
            use_cuda_graphs = model.device.type == "cuda"
        self.use_cuda_graphs = use_cuda_graphs
        self.graphs: DecodeGraphs | None = None
        self.generator = torch.Generator(device=model.device).manual_seed(seed)

    @property
    def num_slots(self) -> int:
        return self.cache.num_slots

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    def warmup(self) -> None:
        """Runs every path once (and captures the decode graphs) before the worker is ready."""
        with torch.inference_mode():
            slot = self.cache.scratch_slot
            prompt = torch.arange(1, 9, device=self.device) % self.model.config.vocab_size
            self.model.prefill(self.cache, prompt, slot, 0)
            if self.use_cuda_graphs:
                self.graphs = DecodeGraphs(
                    self.model, self.cache, graph_batch_sizes(self.num_slots)
                )
            self.decode_logits([1], [slot], [8])
            if self.device.type == "cuda":
                torch.cuda.synchronize()

    def decode_logits(self, tokens: list[int], slots: list[int], positions: list[int]):
        if self.graphs is not None:
            return self.graphs.run(tokens, slots, positions)
        dev = self.device
        return self.model.decode(
            self.cache,
            torch.tensor(tokens, device=dev),
            torch.tensor(slots, device=dev),
            torch.tensor(positions, device=dev),
            max_len=max(positions) + 1,
        )

    @torch.inference_mode()
    def execute(self, step: Step) -> dict[int, int]:
        rows: list[torch.Tensor] = []
        owners = []
        if step.decode:
            reqs = step.decode
            logits = self.decode_logits(
                [r.output_ids[-1] for r in reqs],
                [r.slot for r in reqs],
                [r.context_len - 1 for r in reqs],
            )
            rows.append(logits)
            owners.extend(reqs)
        for req, start, length in step.prefill:
            chunk = torch.tensor(req.prompt_ids[start : start + length], device=self.device)
            logits = self.model.prefill(self.cache, chunk, req.slot, start)
            if start + length >= len(req.prompt_ids):
                rows.append(logits[None, :])
                owners.append(req)
        if not owners:
            return {}
        logits = torch.cat(rows) if len(rows) > 1 else rows[0]
        ids = sample(
            logits,
            [r.temperature for r in owners],
            [r.top_p for r in owners],
            self.generator,
        ).tolist()
        return {req.id: token for req, token in zip(owners, ids, strict=True)}
