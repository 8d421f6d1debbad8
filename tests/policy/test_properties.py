"""Properties of decide() over generated observations and states."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from carpool_policy import EndpointObservation, Observation, PolicyState, decide
from carpool_policy.state import OperatingPoint

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

rates = st.floats(min_value=0.0, max_value=80.0, allow_nan=False)
maybe = st.none() | st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@st.composite
def endpoint_observations(draw, rate=rates):
    return EndpointObservation(
        arrival_rate_per_second=draw(st.none() | rate),
        mean_prompt_tokens=draw(st.none() | st.floats(1, 8000)),
        mean_generated_tokens=draw(st.none() | st.floats(1, 500)),
        queue_wait_p95_seconds=draw(maybe),
        ttft_p95_seconds=draw(maybe),
        waiting=draw(st.none() | st.floats(0, 1000)),
        running=draw(st.none() | st.floats(0, 100)),
        rejected_rate_per_second=draw(maybe),
    )


@st.composite
def states(draw, now):
    history = draw(st.lists(st.tuples(st.floats(now - 900, now), st.integers(0, 40)), max_size=8))
    return PolicyState(
        recommendations=tuple(sorted(history)),
        last_observed_at=draw(st.none() | st.floats(now - 60, now - 1)),
        service_times={
            "inline": tuple(
                sorted(draw(st.lists(st.tuples(st.floats(now - 900, now), rates), max_size=4)))
            )
        },
        # Peaks up to 400 req/s (more than 12 pods serve): the burst reserve at every size.
        sustained_rates={
            "inline": tuple(
                sorted(
                    draw(
                        st.lists(
                            st.tuples(st.floats(now - 3600, now), st.floats(0.0, 400.0)),
                            max_size=4,
                        )
                    )
                )
            )
        },
        # Operating points of any count and rate, recent or forgotten: a step up's bound.
        operating_points=tuple(
            draw(
                st.lists(
                    st.builds(
                        lambda at, n, rate: OperatingPoint(at, n, {"inline": rate}),
                        st.floats(now - 900, now),
                        st.integers(1, 40),
                        st.floats(0.0, 400.0),
                    ),
                    max_size=3,
                )
            )
        ),
        # A held anchor of any level, recent or expired, for the decisions taken while pods start.
        anchor_scales=draw(
            st.just({})
            | st.builds(
                lambda at, scale: {"inline": (at, scale)},
                st.floats(now - 900, now),
                st.floats(1.0, 1000.0),
            )
        ),
    )


@st.composite
def observations(draw, now, inline=None):
    replicas = draw(st.integers(0, 24))
    return Observation(
        sampled_at=draw(st.none() | st.floats(now - 200, now)),
        available=draw(st.booleans()),
        desired_replicas=replicas,
        ready_replicas=draw(st.integers(0, replicas)),
        pending_unschedulable_replicas=draw(st.integers(0, 3)),
        endpoints={
            "inline": inline if inline is not None else draw(endpoint_observations()),
            "offline": draw(endpoint_observations()),
        },
    )


@FAST
@given(data=st.data(), with_profile=st.booleans(), mode=st.sampled_from(["Auto", "Recommend"]))
def test_replicas_and_limits_always_stay_inside_the_spec(w, data, with_profile, mode):
    spec = w.spec(min_replicas=2, max_replicas=12, mode=mode)
    observation = data.draw(observations(w.NOW))
    decision = decide(
        observation,
        spec,
        data.draw(states(w.NOW)),
        w.NOW,
        profile=w.profile if with_profile else None,
    )
    assert spec.min_replicas <= decision.replicas <= spec.max_replicas
    assert spec.min_replicas <= decision.recommended_replicas <= spec.max_replicas
    for endpoint in spec.endpoints:
        limits = decision.limits[endpoint.name]
        assert endpoint.max_batch_size.min <= limits.max_batch_size <= endpoint.max_batch_size.max
        window = endpoint.batch_window_milliseconds
        assert window.min <= limits.batch_window_milliseconds <= window.max


@FAST
@given(data=st.data(), with_profile=st.booleans())
def test_missing_data_never_scales_down(w, data, with_profile):
    spec = w.spec(min_replicas=1, max_replicas=24)
    missing = data.draw(st.sampled_from(["unavailable", "stale", "no timestamp", "no inline rate"]))
    inline = EndpointObservation() if missing == "no inline rate" else None
    observation = data.draw(observations(w.NOW, inline=inline))
    changes = {
        "unavailable": {"available": False},
        "stale": {"available": True, "sampled_at": w.NOW - 3600},
        "no timestamp": {"available": True, "sampled_at": None},
        "no inline rate": {},
    }[missing]
    observation = Observation(**{**observation.__dict__, **changes})
    decision = decide(
        observation,
        spec,
        data.draw(states(w.NOW)),
        w.NOW,
        profile=w.profile if with_profile else None,
    )
    assert decision.replicas >= min(observation.desired_replicas, spec.max_replicas)


@FAST
@given(low=rates, extra=st.floats(0.0, 40.0), replicas=st.integers(1, 16))
def test_more_load_never_yields_fewer_replicas(w, low, extra, replicas):
    spec = w.spec(min_replicas=1, max_replicas=32)

    def replicas_for(rate: float) -> int:
        observation = w.observe(replicas=replicas, inline=w.traffic(rate=rate, ttft=None))
        return decide(observation, spec, PolicyState(), w.NOW, profile=w.profile).replicas

    assert replicas_for(low + extra) >= replicas_for(low)


@FAST
@given(data=st.data())
def test_returned_state_survives_serialization(w, data):
    observation = data.draw(observations(w.NOW))
    decision = decide(observation, w.spec(), data.draw(states(w.NOW)), w.NOW, profile=w.profile)
    assert PolicyState.from_dict(decision.state.to_dict()) == decision.state


@FAST
@given(
    rate=st.floats(0.5, 40.0),
    prompt=st.floats(256, 8192),
    queue=st.floats(0.0, 1.2),
    service=st.floats(0.1, 0.9),
    replicas=st.integers(1, 12),
    settled=st.booleans(),
)
# A pool that the step up would shrink to 4 and the scale-down model holds at 5 (hysteresis).
@example(rate=24.0, prompt=2048.0, queue=0.02, service=0.4, replicas=5, settled=True)
def test_a_decision_that_departs_from_the_models_need_names_the_rule_that_moved_it(
    w, rate, prompt, queue, service, replicas, settled
):
    # The reason a person reads says what the model needs; where the pool ends elsewhere (held,
    # stopped short, stepped, capped), some rule did that, and the reason must name it. Fresh
    # metrics and a known service time, so that every rule can act; with a history spanning
    # the stabilization window or none.
    spec = w.spec(min_replicas=1, max_replicas=12)
    inline = w.traffic(rate=rate, ttft=queue + service, queue=queue, service=service, prompt=prompt)
    state = PolicyState(
        recommendations=((w.NOW - 1000, 1),) if settled else (),
        last_observed_at=w.NOW - 15,
        service_times={"inline": ((w.NOW - 60, service),)},
    )
    decision = decide(w.observe(replicas, inline), spec, state, w.NOW, profile=w.profile)
    assert decision.needed_replicas is not None, decision.reason
    # The reason says the same count in words, in the plan's own clause ("model needs N
    # replicas for ..." or "the measured queue delays need N replicas"; "more than" the
    # maximum), not the scale-down model's "needs N replicas within ...".
    count = decision.needed_replicas
    words = f"more than {spec.max_replicas}" if count > spec.max_replicas else str(count)
    assert (
        f"model needs {words} replicas for" in decision.reason
        or f"queue delays need {words} replicas" in decision.reason
    ), decision.reason
    needed = spec.replicas.clamp(decision.needed_replicas)
    if decision.replicas != needed:
        assert decision.rules, decision.reason
