"""Executes a scheduler :class:`Step` on the model: prefill chunks, one batched decode, sampling.

Contract: ``ModelRunner(model, num_slots, max_seq_len, kv_cache_tokens=None)`` owns the paged
KV cache: ``num_slots`` sequences decode at once, each of up to ``max_seq_len`` tokens, out of
one pool of ``kv_cache_tokens`` in blocks of ``kv_block_tokens`` (by default most of the GPU
memory left after the weights; on CPU, ``CPU_KV_CACHE_BYTES``). The scheduler hands out the
blocks (``Request.blocks``); a prefill chunk at position 0 points the request's slot at them.

``execute(step)`` returns ``{request id: sampled token}`` for every decode row and every
prefill chunk that completes its prefill. Host work per step is a few small tensor copies and
one device->host transfer of the sampled ids; there is no Python loop per token per sequence on
the device path. On CUDA the decode step replays a CUDA graph captured for the next batch size
up (rows past the real batch are padding that writes to the cache's scratch block).
"""

from __future__ import annotations

import logging

import torch

from carpool_replica.profile import DEFAULT_KV_BLOCK_TOKENS
from carpool_replica.scheduler import Step

from .model import KVCache, LlamaModel
from .sampling import sample

log = logging.getLogger(__name__)

# The share of the GPU memory free after the weights that the KV cache may take, and what it
# leaves besides for activations (an 8k-token prefill chunk of bench-8b needs about 1 GiB),
# the decode graphs' pool and the allocator's slack.
GPU_KV_MEMORY_FRACTION = 0.9
GPU_ACTIVATION_RESERVE_BYTES = 4 << 30
# On CPU there is no device memory to measure; the cache takes this much.
CPU_KV_CACHE_BYTES = 1 << 30


def default_kv_cache_tokens(model: LlamaModel, num_slots: int, max_seq_len: int) -> int:
    """KV tokens the cache holds when not told: what the memory allows, and never more than
    every slot at the full context could use."""
    per_token = KVCache.bytes_per_token(model.config, model.dtype)
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        budget = int(free * GPU_KV_MEMORY_FRACTION) - GPU_ACTIVATION_RESERVE_BYTES
    else:
        budget = CPU_KV_CACHE_BYTES
    return max(0, min(budget // per_token, num_slots * max_seq_len))


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
        kv_cache_tokens: int | None = None,
        kv_block_tokens: int = DEFAULT_KV_BLOCK_TOKENS,
        use_cuda_graphs: bool | None = None,
        seed: int = 0,
    ):
        self.model = model
        self.device = model.device
        if kv_cache_tokens is None:
            kv_cache_tokens = default_kv_cache_tokens(model, num_slots, max_seq_len)
        num_blocks = kv_cache_tokens // kv_block_tokens
        if num_blocks < 1:
            raise ValueError(
                f"the KV cache holds {kv_cache_tokens} tokens, less than one block of "
                f"{kv_block_tokens}: free GPU memory, or set --kv-cache-tokens"
            )
        self.cache = KVCache(
            model.config,
            num_slots,
            max_seq_len,
            num_blocks,
            kv_block_tokens,
            model.device,
            model.dtype,
        )
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

    @property
    def kv_cache_tokens(self) -> int:
        return self.cache.capacity_tokens

    @property
    def kv_block_tokens(self) -> int:
        return self.cache.block_tokens

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
            for r, s, _ in step.prefill:
                if s == 0:  # a sequence (or a preempted one, resumed) starts on its blocks
                    self.cache.assign(r.slot, r.blocks)
            chunks = [
                (torch.tensor(r.prefill_ids[s : s + n], device=self.device), r.slot, s)
                for r, s, n in step.prefill
            ]
            logits = self.model.prefill_many(self.cache, chunks)
            done = [i for i, (r, s, n) in enumerate(step.prefill) if s + n >= len(r.prefill_ids)]
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
