"""The preallocated KV cache: fixed slots of fixed length, one extra slot for padding rows.

Contract: ``KVCache(config, num_slots, max_seq_len, device, dtype)`` allocates keys and values
of shape (layers, num_slots + 1, max_seq_len, kv_heads, head_dim) once, at start; a sequence
owns one slot for its whole life, so admission "within the KV budget" is having a free slot.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    """Keys and values for ``num_slots`` sequences of up to ``max_seq_len`` tokens each.

    One extra slot (index ``num_slots``) is scratch space: padded rows of a captured decode
    batch write there, so padding never touches a live sequence.
    """

    def __init__(self, config: ModelConfig, num_slots: int, max_seq_len: int, device, dtype):
        shape = (
            config.num_layers,
            num_slots + 1,
            max_seq_len,
            config.num_kv_heads,
            config.head_dim,
        )
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.scratch_slot = num_slots

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
