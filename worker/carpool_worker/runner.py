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

from carpool_replica.scheduler import Step

from .model import KVCache, LlamaModel
from .sampling import sample

log = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    sizes += list(range(16, max_batch + 16, 16))
    return sorted({s for s in sizes if s < max_batch} | {max_batch})


class DecodeGraphs:
    """One CUDA graph per padded batch size; each also takes the greedy argmax on the device.

    A graph of size ``n`` reads its inputs from one packed buffer (tokens, slots, positions:
    ``3n`` longs), so a step costs a single host-to-device copy before the replay.
    """

    def __init__(self, model: LlamaModel, cache: KVCache, batch_sizes: list[int]):
        self.model, self.cache = model, cache
        self.sizes = sorted(batch_sizes)
        device = model.device
        self.packed: dict[int, torch.Tensor] = {}
        self.host = torch.zeros(3 * self.sizes[-1], dtype=torch.long).pin_memory()
        self.host_np = self.host.numpy()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for size in self.sizes:
            packed = torch.zeros(3 * size, dtype=torch.long, device=device)
            packed[size : 2 * size] = cache.scratch_slot
            self.packed[size] = packed
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in self.sizes:  # warm up: autotuning and lazy inits stay out of the capture
                self._forward(size)
        torch.cuda.current_stream().wait_stream(stream)
        pool = None
        for size in reversed(self.sizes):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def _forward(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.packed[size]
        logits = self.model.decode(self.cache, p[:size], p[size : 2 * size], p[2 * size :])
        return logits, logits.argmax(dim=-1)

    def run(self, tokens: list[int], slots: list[int], positions: list[int]):
        """Returns (logits, greedy ids) of the first ``len(tokens)`` rows."""
        n = len(tokens)
        size = next(s for s in self.sizes if s >= n)
        h = self.host_np
        h[:n] = tokens
        h[n:size] = 0
        h[size : size + n] = slots
        h[size + n : 2 * size] = self.cache.scratch_slot
        h[2 * size : 2 * size + n] = positions
        h[2 * size + n : 3 * size] = 0
        self.packed[size].copy_(self.host[: 3 * size], non_blocking=True)
        self.graphs[size].replay()
        logits, greedy = self.outputs[size]
        return logits[:n], greedy[:n]


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
        """(logits, greedy ids) for one decode row per sequence."""
        if self.graphs is not None:
            return self.graphs.run(tokens, slots, positions)
        dev = self.device
        logits = self.model.decode(
            self.cache,
            torch.tensor(tokens, device=dev),
            torch.tensor(slots, device=dev),
            torch.tensor(positions, device=dev),
            max_len=max(positions) + 1,
        )
        return logits, logits.argmax(dim=-1)

    @torch.inference_mode()
    def execute(self, step: Step) -> dict[int, int]:
        rows: list[torch.Tensor] = []
        owners = []
        if step.decode:
            reqs = step.decode
            logits, greedy = self.decode_logits(
                [r.output_ids[-1] for r in reqs],
                [r.slot for r in reqs],
                [r.context_len - 1 for r in reqs],
            )
            if not step.prefill and all(r.temperature == 0.0 for r in reqs):
                # The common decode-only greedy step: the argmax already ran in the graph.
                return {r.id: t for r, t in zip(reqs, greedy.tolist(), strict=True)}
            rows.append(logits)
            owners.extend(reqs)
        if step.prefill:
            chunks = [
                (torch.tensor(r.prompt_ids[s : s + n], device=self.device), r.slot, s)
                for r, s, n in step.prefill
            ]
            logits = self.model.prefill_many(self.cache, chunks)
            done = [i for i, (r, s, n) in enumerate(step.prefill) if s + n >= len(r.prompt_ids)]
            if done:
                rows.append(logits[done] if len(done) < len(chunks) else logits)
                owners.extend(step.prefill[i][0] for i in done)
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
