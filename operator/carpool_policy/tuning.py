"""`Tuning`: the policy's constants that are not in the InferencePool spec, with defaults.

Contract: every field has a default that is safe for production; the simulator may pass other
values to study the policy, the operator passes the defaults. All times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    # The model plans so that this quantile of TTFT fits the p95 budget: the margin absorbs
    # bursts between control intervals and while new pods start.
    planning_quantile: float = 0.99
    # Fraction of each queue budget the model may plan to use (the rest is safety margin); a
    # queue delay measured within it never lets the model scale up.
    budget_headroom: float = 0.85
    # Scale down only when the smaller pool would fit this tighter fraction (hysteresis).
    scale_down_headroom: float = 0.7
    # Squared coefficients of variation of inter-arrival and service times (Kingman); the
    # service's is at least this, more where an endpoint's measured prompt mix spreads more.
    arrival_scv: float = 1.0
    service_scv: float = 1.0
    # The planning-quantile prompt is at most this many times the mean prompt.
    max_prompt_tail_ratio: float = 4.0
    # Share of an SLA endpoint's spare budget given to its batch window.
    window_share_of_spare: float = 0.1
    # Highest GPU busy fraction planned for, even for throughput-only traffic.
    max_utilization: float = 0.9
    # Metrics older than this many control intervals are stale (hold).
    stale_after_intervals: float = 3.0
    # Queued requests beyond the steady-state queue must drain within this time.
    backlog_drain_seconds: float = 15.0
    # The service time is the median of the service-time p95s measured over this long.
    service_time_memory_seconds: float = 600.0
    # A queue delay p95 measured at or below this fraction of its budget is well inside it: only
    # then may the pool scale down (to what the model says holds the tighter headroom), and the
    # model is anchored at this fraction (a shorter p95 says only that the queue is short).
    queue_quiet_fraction: float = 0.5
    # When service time alone breaks the TTFT budget, the queue may still use this share of it:
    # replicas bound the queueing instead of chasing a number no replica count reaches.
    unreachable_queue_share: float = 0.15
    # Below this arrival rate (req/s) an endpoint's measured p95s are too noisy for feedback.
    min_feedback_rate: float = 0.2
    # At most this fraction of the replicas (and at least one) go in one scale-down, and at most
    # one scale-down per period (HPA's scale-down policy, `periodSeconds`). A pod takes about a
    # minute to come back, so a pool shrinks no faster than it can regrow: a quiet spell costs
    # it a step a minute, not its whole size before the traffic returns.
    max_scale_down_fraction: float = 0.25
    scale_down_period_seconds: float = 60.0
    # A scale-down stops where the highest arrival rate sustained over this long would still
    # find the pool's queueing within each SLA endpoint's whole TTFT budget (`burst_reserve`):
    # a step back up to a recent rate is then absorbed by the pods that serve, not by a queue
    # that grows for a pod's start-up.
    burst_memory_seconds: float = 3600.0
    # While pods start, a step up plans with the model's anchor of the last time every pod was
    # ready (`planner.anchor`), if it is at most this old: longer than pods take to start, short
    # enough that a pool stuck with pods that never start does not plan with an old level.
    anchor_hold_seconds: float = 300.0
    # A step up goes no further than the replica counts measured within budget over this long
    # need at the rates now (`operating_points`): as long as the service-time memory, over
    # which the prompt mix that sets a pod's capacity is taken to hold.
    operating_point_memory_seconds: float = 600.0
    # The operator's rate window (CARPOOL_RATE_WINDOW): what one observation's rates and p95s
    # cover, so a replica count measured by it must have served that long.
    rate_window_seconds: float = 60.0
    # Token lengths assumed for an endpoint that has never been measured.
    default_prompt_tokens: float = 512.0
    default_generated_tokens: float = 128.0


DEFAULT_TUNING = Tuning()
