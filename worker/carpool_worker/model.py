"""A Llama-family decoder in plain torch, over a paged KV cache.

Contract: ``LlamaModel(config, device, dtype)`` holds the weights (random, or loaded from a
Hugging Face checkpoint by ``load_model``). ``prefill`` runs a chunk of one sequence's prompt
and returns the logits of its last position; ``decode`` runs one token for each of a batch of
sequences and returns their logits. Both write keys and values into the :class:`KVCache` block
that the slot's table row names for each position. The arithmetic matches ``transformers``'
``LlamaForCausalLM``: RMSNorm in float32, rotate-half RoPE (with Llama 3 frequency scaling),
grouped-query attention, SwiGLU. The elementwise and attention steps go through an ``ops``
object so that CUDA can swap in fused kernels (see ``kernels.py``) while the CPU and the tests
use the plain torch reference in ``torch_ops.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import KVCache
from .rope import rope_inverse_frequencies
from .torch_ops import TorchOps

__all__ = ["KVCache", "LlamaModel", "load_model"]


class LlamaModel:
    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype, ops=None):
        self.config = config
        self.device = device
        self.dtype = dtype
        self.ops = ops or TorchOps()
        c = config
        qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.shapes: dict[str, tuple[int, ...]] = {
            "embed": (c.vocab_size, c.hidden_size),
            "norm": (c.hidden_size,),
        }
        if not c.tie_word_embeddings:
            self.shapes["lm_head"] = (c.vocab_size, c.hidden_size)
        for i in range(c.num_layers):
            self.shapes |= {
                f"{i}.attn_norm": (c.hidden_size,),
                f"{i}.wqkv": (qkv_rows, c.hidden_size),
                f"{i}.wo": (c.hidden_size, c.num_heads * c.head_dim),
                f"{i}.mlp_norm": (c.hidden_size,),
                f"{i}.w_gate_up": (2 * c.intermediate_size, c.hidden_size),
                f"{i}.w_down": (c.hidden_size, c.intermediate_size),
            }
        self.params: dict[str, torch.Tensor] = {}
        positions = torch.arange(c.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inverse_frequencies(c))
        # (max_pos, head_dim/2) each, float32: the rotation is computed in float32 and the
        # result cast, as transformers does.
        self.rope_cos = freqs.cos().to(device)
        self.rope_sin = freqs.sin().to(device)

    # -- weights ----------------------------------------------------------------------------

    def init_random(self, seed: int = 0) -> LlamaModel:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for name, shape in self.shapes.items():
            if len(shape) == 1:
                self.params[name] = torch.ones(shape, device=self.device, dtype=self.dtype)
            else:
                weight = torch.empty(shape, device=self.device, dtype=self.dtype)
                weight.normal_(0.0, 0.02, generator=generator)
                self.params[name] = weight
        return self

    def load_state(self, tensors: dict[str, torch.Tensor]) -> LlamaModel:
        """Takes Hugging Face parameter names; fuses q/k/v and gate/up for one GEMM each."""
        c = self.config

        def take(name: str) -> torch.Tensor:
            if name not in tensors:
                raise ValueError(f"checkpoint lacks the tensor {name!r}")
            return tensors[name].to(device=self.device, dtype=self.dtype)

        self.params["embed"] = take("model.embed_tokens.weight")
        self.params["norm"] = take("model.norm.weight")
        if not c.tie_word_embeddings:
            self.params["lm_head"] = take("lm_head.weight")
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            attn = [take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]
            self.params[f"{i}.wqkv"] = torch.cat(attn, dim=0).contiguous()
            self.params[f"{i}.wo"] = take(p + "self_attn.o_proj.weight")
            self.params[f"{i}.attn_norm"] = take(p + "input_layernorm.weight")
            self.params[f"{i}.mlp_norm"] = take(p + "post_attention_layernorm.weight")
            gate_up = [take(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")]
            self.params[f"{i}.w_gate_up"] = torch.cat(gate_up, dim=0).contiguous()
            self.params[f"{i}.w_down"] = take(p + "mlp.down_proj.weight")
        for name, shape in self.shapes.items():
            if tuple(self.params[name].shape) != shape:
                raise ValueError(f"tensor {name} has shape {tuple(self.params[name].shape)}")
        return self

    @property
    def lm_head(self) -> torch.Tensor:
        return self.params.get("lm_head", self.params["embed"])

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values())

    # -- forward ----------------------------------------------------------------------------

    def _layers(self, x, cache: KVCache, rows, positions, attend, keep=None):
        """Runs all layers over flat tokens ``x`` (N, hidden); ``attend(layer, q)`` -> (M, H*d).

        ``rows`` are the tokens' flat cache rows (``KVCache.rows``), where their keys go.

        ``keep`` (row indices, or None for all) names the rows whose output is wanted. The last
        layer still writes every row's key and value, but past that write only the kept rows
        matter, so its attention, o projection and MLP run on those alone: for a prompt chunk
        that saves a whole layer's GEMMs but one row. ``attend`` then gets the kept rows' q.
        """
        c, ops, p = self.config, self.ops, self.params
        eps = c.rms_norm_eps
        residual = x
        h = ops.rmsnorm(residual, p["0.attn_norm"], eps)
        for i in range(c.num_layers):
            qkv = F.linear(h, p[f"{i}.wqkv"])
            k_rows, v_rows = cache.layer_rows(i)
            q = ops.rope_and_cache(
                qkv, positions, rows, k_rows, v_rows, self.rope_cos, self.rope_sin, c
            )
            if keep is not None and i == c.num_layers - 1:
                q, residual = q[keep], residual[keep]
            attn = attend(i, q)
            residual, h = ops.add_rmsnorm(
                residual, F.linear(attn, p[f"{i}.wo"]), p[f"{i}.mlp_norm"], eps
            )
            mlp = F.linear(ops.silu_mul(F.linear(h, p[f"{i}.w_gate_up"])), p[f"{i}.w_down"])
            next_norm = p[f"{i + 1}.attn_norm"] if i + 1 < c.num_layers else p["norm"]
            residual, h = ops.add_rmsnorm(residual, mlp, next_norm, eps)
        return h

    def decode(
        self,
        cache: KVCache,
        token_ids: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        max_len: int | None = None,
    ) -> torch.Tensor:
        """One new token for each row; ``positions`` is where it goes. Returns (B, vocab) logits.

        ``max_len`` bounds how much cache the reference attention reads (the longest live
        context); kernels that read each row's own length ignore it.
        """
        max_len = cache.max_seq_len if max_len is None else max_len
        x = self.params["embed"][token_ids]

        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.decode_attention(
                q, cache.k[layer], cache.v[layer], cache.block_table, slots, positions, max_len
            )

        h = self._layers(x, cache, cache.rows(slots, positions), positions, attend)
        return self.ops.lm_head(h, self.lm_head)

    def prefill(self, cache: KVCache, token_ids: torch.Tensor, slot: int, start: int):
        """Prompt tokens ``token_ids`` at positions ``start..``; returns the last row's logits."""
        return self.prefill_many(cache, [(token_ids, slot, start)])[0]

    def prefill_many(self, cache: KVCache, chunks: list[tuple[torch.Tensor, int, int]]):
        """Several prompt chunks ``(token ids, slot, start)`` in one pass over the weights.

        The GEMMs and elementwise kernels run once over all chunks' tokens; only attention
        goes chunk by chunk, each chunk reading its own sequence's keys 0..start+n-1 (its own
        written just before), gathered from its blocks. Returns (len(chunks), vocab): each
        chunk's last-row logits.
        """
        dev = self.device
        lengths = [int(ids.shape[0]) for ids, _, _ in chunks]
        if min(lengths) < 1:
            raise ValueError("every prefill chunk needs at least one token")
        positions = torch.cat(
            [
                torch.arange(st, st + n, device=dev)
                for (_, _, st), n in zip(chunks, lengths, strict=True)
            ]
        )
        slots = torch.cat(
            [
                torch.full((n,), slot, device=dev, dtype=torch.long)
                for (_, slot, _), n in zip(chunks, lengths, strict=True)
            ]
        )
        x = self.params["embed"][torch.cat([ids for ids, _, _ in chunks])]
        ends = [st + n for (_, _, st), n in zip(chunks, lengths, strict=True)]
        last = torch.tensor(lengths, device=dev).cumsum(0) - 1

        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
            # All rows of every chunk, or (last layer) one row per chunk: its last.
            rows = lengths if q.shape[0] == sum(lengths) else [1] * len(chunks)
            outs, offset = [], 0
            for (_, slot, _), n, end in zip(chunks, rows, ends, strict=True):
                k, v = cache.gather(layer, slot, end)
                outs.append(self.ops.prefill_attention(q[offset : offset + n], k, v))
                offset += n
            return torch.cat(outs) if len(outs) > 1 else outs[0]

        h = self._layers(x, cache, cache.rows(slots, positions), positions, attend, keep=last)
        return self.ops.lm_head(h, self.lm_head)


def load_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, ops=None):
    """Random weights for a preset; the safetensors of ``config.checkpoint_dir`` otherwise."""
    model = LlamaModel(config, device, dtype, ops)
    if config.checkpoint_dir is None:
        return model.init_random()
    from safetensors.torch import load_file

    files = sorted(Path(config.checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors in {config.checkpoint_dir}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors |= load_file(str(file), device="cpu")
    return model.load_state(tensors)
