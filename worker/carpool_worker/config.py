"""Model shapes: the built-in random-weight presets and Hugging Face ``config.json`` parsing.

Contract: ``resolve_model_config(spec)`` takes a preset name (``tiny``, ``bench-1b``,
``bench-8b``) or a checkpoint directory and returns a :class:`ModelConfig`. It never touches the
network. Presets carry random weights: ``tiny`` for CPU tests, ``bench-1b`` with the
Llama-3.2-1B shape and ``bench-8b`` with the Llama-3.1-8B shape for benchmarks and profiles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency-dependent RoPE scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    rope_scaling: RopeScaling | None = None
    checkpoint_dir: Path | None = field(default=None, compare=False)

    @property
    def num_params(self) -> int:
        attention = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attention + mlp + norms) + embeddings + self.hidden_size

    @property
    def kv_bytes_per_token_per_element(self) -> int:
        """KV cache elements one token occupies across all layers (keys and values)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


_LLAMA3_ROPE = RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)

PRESETS: dict[str, ModelConfig] = {
    # Small enough that a CPU test suite runs a full server in seconds; the vocabulary is the
    # byte-level tokenizer's 256 bytes plus BOS/EOS (see tokenizer.py).
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=256,
        eos_token_ids=(257,),
    ),
    "bench-1b": ModelConfig(
        name="bench-1b",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
        rope_scaling=_LLAMA3_ROPE,
    ),
    "bench-8b": ModelConfig(
        name="bench-8b",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
        rope_scaling=_LLAMA3_ROPE,
    ),
}


def default_prefill_chunk_tokens(cuda: bool) -> int:
    """Prompt tokens per engine step when not set: the one default of the worker, `carpool
    profile` and the prefill benchmark (a profile records the chunk it was measured with).

    On a GPU, 4,096: a bench-8b chunk that size runs near the compute roofline, and fewer,
    larger chunks cut the host's launches per prompt token. On an H200 512-token chunks reached
    0.57 of the roofline at an 8k offset, and the simulator, driven by the measured profile,
    puts the code trace's capacity at p95 TTFT <= 1 s about 2 requests/s higher with 4,096 than
    with 2,048 (docs/benchmarks.md). The price: a step with a full chunk holds the decodes
    beside it for about 100 ms."""
    return 4096 if cuda else 64


class ModelSpecError(ValueError):
    """The --model argument names neither a preset nor a usable checkpoint directory."""


def _as_tuple(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def config_from_hf(data: dict, name: str, checkpoint_dir: Path | None = None) -> ModelConfig:
    """Builds a ModelConfig from the fields of a Llama-family ``config.json``."""
    try:
        num_heads = int(data["num_attention_heads"])
        hidden = int(data["hidden_size"])
        # transformers 5 writes `rope_parameters` (theta included); 4.x wrote `rope_scaling`.
        scaling = data.get("rope_parameters") or data.get("rope_scaling") or None
        theta = (scaling or {}).get("rope_theta", data.get("rope_theta", 10000.0))
        rope = None
        if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
            rope = RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            )
        elif scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ModelSpecError(f"unsupported rope_scaling {scaling!r}")
        return ModelConfig(
            name=name,
            vocab_size=int(data["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(data["intermediate_size"]),
            num_layers=int(data["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(data.get("num_key_value_heads") or num_heads),
            head_dim=int(data.get("head_dim") or hidden // num_heads),
            max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
            rope_theta=float(theta),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            bos_token_id=data.get("bos_token_id"),
            eos_token_ids=_as_tuple(data.get("eos_token_id")),
            rope_scaling=rope,
            checkpoint_dir=checkpoint_dir,
        )
    except KeyError as exc:
        raise ModelSpecError(f"config.json lacks the field {exc.args[0]!r}") from exc


def resolve_model_config(spec: str) -> ModelConfig:
    """A preset by name, or the config of a Hugging Face checkpoint directory."""
    if spec in PRESETS:
        return PRESETS[spec]
    directory = Path(spec)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelSpecError(
            f"--model {spec!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor a directory holding config.json"
        )
    data = json.loads(config_path.read_text())
    archs = data.get("architectures") or ["LlamaForCausalLM"]
    if not any(a in ("LlamaForCausalLM", "MistralForCausalLM") for a in archs):
        raise ModelSpecError(f"unsupported architecture {archs!r}: a Llama-family model expected")
    return config_from_hf(data, name=directory.name, checkpoint_dir=directory)
