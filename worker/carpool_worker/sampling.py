"""Batched next-token sampling: greedy, temperature and nucleus (top-p), all on the device.

Contract: ``sample(logits, temperatures, top_ps, generator)`` takes (B, vocab) logits and per-row
settings and returns (B,) token ids; a row with temperature 0 is greedy (argmax). There is no
Python loop over rows: one batch costs a handful of kernels whatever its size.

Every row samples from at least its most likely token, whatever its settings, so no row can
mask its whole distribution (which would make ``torch.multinomial`` fail the whole batch).
``MIN_TOP_P`` and ``MIN_TEMPERATURE`` are the smallest non-zero settings the sampler honours as
given: the HTTP layer refuses smaller ones (a ``top_p`` of 1e-300 is 0 in float32).
"""

from __future__ import annotations

import torch

from .sampling_floors import MIN_TEMPERATURE, MIN_TOP_P

__all__ = ["MIN_TEMPERATURE", "MIN_TOP_P", "sample"]


def sample(
    logits: torch.Tensor,
    temperatures: list[float],
    top_ps: list[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    greedy = logits.argmax(dim=-1)
    if all(t == 0.0 for t in temperatures):
        return greedy
    device = logits.device
    temps = torch.tensor(temperatures, device=device, dtype=torch.float32)
    top_p = torch.tensor(top_ps, device=device, dtype=torch.float32)
    probs = torch.softmax(logits.float() / temps.clamp_min(MIN_TEMPERATURE)[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it
    # already does. The first token always stays, even for a top_p that rounds to 0.
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = before >= top_p[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    sampled = order.gather(1, choice).squeeze(1)
    return torch.where(temps == 0.0, greedy, sampled)
