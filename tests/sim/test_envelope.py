"""A recorded trace under a daily envelope: the swing follows the envelope, bursts stay bursts."""

from __future__ import annotations

import numpy as np
import pytest

from carpool_sim.envelope import Envelope, under_envelope
from carpool_sim.trace import Request, TraceError, loop_to

SPAN = 600.0


def bursty_trace() -> list[Request]:
    """One request a second, plus a burst of 40 requests in the 2 s after every 150th second."""
    steady = [Request("a", float(t), 100, 10) for t in range(int(SPAN))]
    bursts = [
        Request("a", start + i * 0.05, 3000, 5) for start in range(0, int(SPAN), 150)
        for i in range(40)
    ]  # fmt: skip
    return sorted(steady + bursts, key=lambda r: r.arrival_seconds)


def test_a_flat_envelope_of_one_replays_the_looped_trace():
    trace = bursty_trace()
    out = under_envelope(trace, Envelope(1.0, 1.0, 3600.0), 1800.0, SPAN,
                         np.random.default_rng(0))  # fmt: skip
    assert out == loop_to(trace, 1800.0, SPAN)


def test_the_rate_swings_by_the_envelope_ratio():
    day = Envelope(0.2, 3.0, 36_000.0)
    out = under_envelope(bursty_trace(), day, 36_000.0, SPAN, np.random.default_rng(1))
    times = np.array([r.arrival_seconds for r in out])
    night = np.sum(times < 1800.0)  # around the minimum, at t = 0
    noon = np.sum(np.abs(times - 18_000.0) < 900.0)  # around the maximum, half a period in
    assert noon / night == pytest.approx(day.at(18_000.0) / np.mean(
        [day.at(t) for t in np.arange(0.0, 1800.0, 10.0)]), rel=0.1)  # fmt: skip


def test_stacked_copies_do_not_burst_at_the_same_second():
    out = under_envelope(bursty_trace(), Envelope(3.0, 3.0, 3600.0), SPAN, SPAN,
                         np.random.default_rng(2))  # fmt: skip
    bursts = {int(r.arrival_seconds // 10) for r in out if r.prompt_tokens == 3000}
    # Three copies started 0, 200 and 400 s into the trace: 12 bursts in the 600 s, where
    # three aligned copies would stack into the trace's own 4.
    assert len(bursts) == 12


def test_bursts_stay_sub_minute_under_a_low_envelope():
    out = under_envelope(bursty_trace(), Envelope(0.5, 0.5, 3600.0), 6000.0, SPAN,
                         np.random.default_rng(3))  # fmt: skip
    burst = [r.arrival_seconds % 150 for r in out if r.prompt_tokens == 3000]
    # Thinned by half, every kept burst request still arrives within its 2-second burst.
    assert len(burst) == pytest.approx(0.5 * 40 * 40, rel=0.1)
    assert max(burst) < 2.0


@pytest.mark.parametrize(("low", "high", "period"), [(0.0, 1.0, 10.0), (2.0, 1.0, 10.0),
                                                     (0.5, 1.0, 0.0)])  # fmt: skip
def test_bad_envelopes_say_what_is_wrong(low, high, period):
    with pytest.raises(TraceError, match="envelope"):
        Envelope(low, high, period)
