"""The paged KV cache: one pool of fixed-size blocks shared by every sequence, and a block table.

Contract: ``KVCache(config, num_slots, max_seq_len, num_blocks, block_tokens, device, dtype)``
allocates keys and values of shape (layers, num_blocks + 1, block_tokens, kv_heads, head_dim)
once, at start, and a block table of (num_slots + 1, ceil(max_seq_len / block_tokens)) block ids.
Memory is token-granular: a sequence holds only the blocks the scheduler gave it
(``Request.blocks``, block i holding positions i*B .. i*B+B-1), so short and long requests share
one pool instead of each reserving the longest context. A slot is a row of the block table (a
row of the decode batch), nothing more: ``assign(slot, blocks)`` points it at a sequence's blocks.

The last block (index ``num_blocks``) and the last table row (``scratch_slot``) are scratch:
every entry of the scratch row names the scratch block, so the padded rows of a captured decode
batch write there and never touch a live sequence.

Positions map to cache rows through the table, on the device: ``rows(slots, positions)`` gives
the flat row (block * B + offset) of each token, which is where the kernels write and read.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_slots: int,
        max_seq_len: int,
        num_blocks: int,
        block_tokens: int,
        device,
        dtype,
    ):
        if num_blocks < 1 or block_tokens < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        shape = (
            config.num_layers,
            num_blocks + 1,
            block_tokens,
            config.num_kv_heads,
            config.head_dim,
        )
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.scratch_slot = num_slots
        self.scratch_block = num_blocks
        width = -(-max_seq_len // block_tokens)
        self.block_table = torch.full(
            (num_slots + 1, width), self.scratch_block, device=device, dtype=torch.int32
        )
        # The host's copy of each slot's row, pinned where there is a GPU: a new sequence's
        # row goes over without waiting for the device (the engine syncs on every step's
        # sampled ids, so a row is never rewritten while its last copy is in flight).
        self._host_table = torch.empty(
            (num_slots + 1, width), dtype=torch.int32, pin_memory=self.k.is_cuda
        )
        self._host_rows = self._host_table.numpy()

    @classmethod
    def with_dedicated_blocks(
        cls, config, num_slots: int, max_seq_len: int, device, dtype, block_tokens: int = 64
    ) -> KVCache:
        """A cache in which every slot owns blocks for its whole context, without a scheduler
        (benchmarks and tests). The blocks interleave across slots (slot s holds s, s + n,
        s + 2n, ...), so no sequence sits in contiguous memory: paging is exercised."""
        per_slot = -(-max_seq_len // block_tokens)
        cache = cls(
            config, num_slots, max_seq_len, num_slots * per_slot, block_tokens, device, dtype
        )
        cache.dedicate_blocks()
        return cache

    def dedicate_blocks(self) -> None:
        """Gives every slot blocks of its own for its whole context, interleaved across slots;
        the cache must hold that many (``with_dedicated_blocks`` sizes one to fit)."""
        per_slot = self.block_table.shape[1]
        total = self.num_slots * per_slot
        if total > self.num_blocks:
            raise ValueError(f"{self.num_slots} slots of {per_slot} blocks exceed the cache")
        for slot in range(self.num_slots):
            self.assign(slot, range(slot, total, self.num_slots))

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype) -> int:
        """Keys plus values of one token over all layers."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_tokens

    def assign(self, slot: int, blocks) -> None:
        """Points ``slot``'s table row at ``blocks`` (entries past them are never read)."""
        if len(blocks) > self.block_table.shape[1]:
            raise ValueError(f"{len(blocks)} blocks exceed the context of {self.max_seq_len}")
        count = len(blocks)
        self._host_rows[slot, :count] = blocks
        self.block_table[slot, :count].copy_(self._host_table[slot, :count], non_blocking=True)

    def rows(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The flat cache row of each (slot, position): graph-safe device arithmetic."""
        b = self.block_tokens
        blocks = self.block_table[slots, torch.div(positions, b, rounding_mode="floor")]
        return blocks.long() * b + positions % b

    def layer_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s keys and values as flat rows (blocks * B, kv_heads, head_dim)."""
        k, v = self.k[layer], self.v[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])

    def gather(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``slot``'s keys and values at positions 0..length-1, contiguous (length, K, d).

        A copy of the sequence's blocks: prefill attention then runs on dense rows. Per layer it
        moves 2 x length x K x d elements, small beside the chunk's attention and GEMMs.
        """
        count = -(-length // self.block_tokens)
        blocks = self.block_table[slot, :count]
        k = self.k[layer].index_select(0, blocks).flatten(0, 1)[:length]
        v = self.v[layer].index_select(0, blocks).flatten(0, 1)[:length]
        return k, v
