"""The fuel ledger: what each endpoint's tokens cost in GPU time, at a price per GPU-hour.

Contract (pure):
- ``gpus_held(pods)`` counts the GPUs the pool's pods hold: every pod bound to a node and not
  finished, each with the whole-number ``*/gpu`` limits of its containers (``nvidia.com/gpu``,
  ``amd.com/gpu``). A pod still loading its model holds its GPU too.
- ``gpu_hour_price(spec, default)`` is ``spec.cost.gpuHourPrice`` (a decimal string) or else the
  operator's ``--gpu-hour-price``; None when neither is set.
- ``cost_per_million_tokens(usage, gpus, price)`` charges the pool's whole spend (GPUs x price,
  idle time included) to its endpoints in proportion to the engine time each used (a step's
  time is split evenly among its sequences; the worker's ``carpool_engine_seconds_total``), or to
  their tokens when no engine time was measured, and divides by each endpoint's tokens (prompt
  plus generated, as the simulator's report counts them). So the endpoints' costs add up to the
  pool's spend. An endpoint without tokens, or a pool without a GPU or a price, has no cost
  (absent, never zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from carpool_operator.prometheus import EndpointUsage


def _gpus(container: Mapping[str, Any]) -> int:
    limits = ((container.get("resources") or {}).get("limits")) or {}
    total = 0
    for name, value in limits.items():
        if name.endswith("/gpu"):
            try:
                total += int(Decimal(str(value)))
            except InvalidOperation:
                continue
    return total


def gpus_held(pods: Iterable[Mapping[str, Any]]) -> int:
    held = 0
    for pod in pods:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        held += sum(_gpus(c) for c in spec.get("containers") or [])
    return held


def gpu_hour_price(spec: Mapping[str, Any], default: str = "") -> float | None:
    text = ((spec.get("cost") or {}).get("gpuHourPrice")) or default
    try:
        price = float(Decimal(str(text))) if text else None
    except InvalidOperation:
        return None
    return price if price is not None and price >= 0 else None


def cost_per_million_tokens(
    usage: Mapping[str, EndpointUsage], gpus: int, price: float | None
) -> dict[str, float]:
    if price is None or gpus <= 0:
        return {}
    spend_per_second = gpus * price / 3600.0
    engine = {e: u.engine_seconds_per_second or 0.0 for e, u in usage.items()}
    tokens = {e: u.tokens_per_second or 0.0 for e, u in usage.items()}
    weights = engine if sum(engine.values()) > 0 else tokens
    total = sum(weights.values())
    if total <= 0:
        return {}
    return {
        endpoint: spend_per_second * weights[endpoint] / total / tokens[endpoint] * 1e6
        for endpoint in usage
        if tokens[endpoint] > 0
    }
