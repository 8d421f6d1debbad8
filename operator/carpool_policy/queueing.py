"""Queueing formulas the capacity model is built from; plain floats in, plain floats out.

Contract: every function is total on non-negative inputs: an overloaded queue answers
`math.inf`, never raises or returns a negative number. Quantiles use the exponential-tail
approximation P(W > t) = P(W > 0) * exp(-t * P(W > 0) / E[W]), exact for M/M/1 and the usual
heavy-traffic shape for M/G/1 (Kingman).
"""

from __future__ import annotations

import math


def priority_mean_wait(
    residual_seconds: float, higher_utilization: float, through_own_utilization: float
) -> float:
    """Mean queue wait of one class in a non-preemptive priority M/G/1 queue (Cobham).

    `residual_seconds` is the mean residual work an arrival finds in service (all classes),
    `higher_utilization` the load of strictly higher classes, `through_own_utilization` that
    plus the class's own (and its equal-priority peers').
    """
    if through_own_utilization >= 1.0 or higher_utilization >= 1.0:
        return math.inf
    return residual_seconds / ((1.0 - higher_utilization) * (1.0 - through_own_utilization))


def exponential_tail_quantile(mean_wait: float, wait_probability: float, quantile: float) -> float:
    """The `quantile` of a wait that is zero with probability 1 - `wait_probability` and
    otherwise exponential with mean `mean_wait / wait_probability`."""
    if math.isinf(mean_wait):
        return math.inf
    tail = 1.0 - quantile
    if wait_probability <= tail or mean_wait <= 0.0:
        return 0.0
    return mean_wait / wait_probability * math.log(wait_probability / tail)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/`servers` queue with `offered_load` Erlangs."""
    if offered_load <= 0.0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    blocking = 1.0  # Erlang B by its stable recursion, then converted to Erlang C
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return servers * blocking / (servers - offered_load * (1.0 - blocking))


def slot_wait_quantile(
    slots: int, offered_load: float, holding_seconds: float, quantile: float
) -> float:
    """The `quantile` of the wait for a free batch slot: M/M/c with `slots` servers, each
    request holding one for `holding_seconds` (Erlang C with its exponential tail)."""
    if offered_load >= slots:
        return math.inf
    waiting = erlang_c(slots, offered_load)
    tail = 1.0 - quantile
    if waiting <= tail:
        return 0.0
    return holding_seconds / (slots - offered_load) * math.log(waiting / tail)


def combine_quantiles(parts: list[tuple[float, float]]) -> float:
    """Approximate quantile of a sum of independent parts, each given as (mean, quantile):
    the means add and the excesses over the means add in quadrature."""
    if any(math.isinf(q) for _, q in parts):
        return math.inf
    mean = sum(m for m, _ in parts)
    excess = math.sqrt(sum(max(0.0, q - m) ** 2 for m, q in parts))
    return mean + excess
