"""The simulated Prometheus answers as PromQL would, from scrapes only."""

from __future__ import annotations

import numpy as np
import pytest

from carpool_sim.metrics import BUCKETS, EndpointSeries, RunRecorder
from carpool_sim.prometheus import Prometheus, Sample, histogram_quantile, observation
from carpool_sim.trace import Request


def counts_at(*values: float) -> np.ndarray:
    counts = np.zeros(len(BUCKETS) + 1)
    for v in values:
        counts[np.searchsorted(BUCKETS, v)] += 1
    return counts


def test_quantile_interpolates_inside_the_bucket():
    counts = np.zeros(len(BUCKETS) + 1)
    i = 20
    counts[i] = 100  # all in (BUCKETS[i-1], BUCKETS[i]]
    lower, upper = BUCKETS[i - 1], BUCKETS[i]
    assert histogram_quantile(0.95, counts) == pytest.approx(lower + 0.95 * (upper - lower))


def test_quantile_of_no_observations_is_none():
    assert histogram_quantile(0.95, np.zeros(len(BUCKETS) + 1)) is None


def test_quantile_in_the_inf_bucket_is_the_largest_bound():
    assert histogram_quantile(0.95, counts_at(1000.0, 1000.0)) == BUCKETS[-1]


def test_a_controller_sees_only_the_last_scrape():
    prometheus = Prometheus()
    for t in (0.0, 15.0, 30.0):
        prometheus.scrape(Sample(t, {}))
    assert prometheus.latest(29.9).time == 15.0


def series(started: int, rejected: int, ttfts: list[float]) -> EndpointSeries:
    s = EndpointSeries()
    s.requests["rejected"] = rejected
    s.queue_wait.counts = counts_at(*([0.01] * started))
    s.ttft.counts = counts_at(*ttfts)
    return s


def test_observation_rates_span_the_window_between_scrapes():
    prometheus = Prometheus()
    prometheus.scrape(Sample(0.0, {"chat": series(0, 0, [])}))
    ttft = BUCKETS[25]
    prometheus.scrape(Sample(60.0, {"chat": series(100, 20, [ttft] * 100)}, waiting={"chat": 7}))
    obs = observation(prometheus, 70.0, 60.0, ["chat"], 2, 2, {})
    chat = obs.endpoints["chat"]
    assert obs.sampled_at == 60.0
    assert chat.arrival_rate_per_second == pytest.approx(120 / 60)
    assert chat.rejected_rate_per_second == pytest.approx(20 / 60)
    assert chat.waiting == 7
    assert BUCKETS[24] < chat.ttft_p95_seconds <= ttft


def test_the_burst_window_reads_the_arrivals_of_the_last_15_s_and_nothing_when_scraped_rarer():
    prometheus = Prometheus()
    for t, started in ((0.0, 0), (15.0, 15), (30.0, 15), (45.0, 75)):  # 60 in the last 15 s
        prometheus.scrape(Sample(t, {"chat": series(started, 0, [])}))
    chat = observation(prometheus, 50.0, 45.0, ["chat"], 2, 2, {}).endpoints["chat"]
    assert chat.arrival_rate_per_second == pytest.approx(75 / 45)
    assert chat.burst_arrival_rate_per_second == pytest.approx(60 / 15)
    sparse = Prometheus()  # a scrape every 30 s: no two samples within 15 s
    for t, started in ((0.0, 0), (30.0, 30), (60.0, 90)):
        sparse.scrape(Sample(t, {"chat": series(started, 0, [])}))
    chat = observation(sparse, 60.0, 60.0, ["chat"], 2, 2, {}).endpoints["chat"]
    assert chat.arrival_rate_per_second == pytest.approx(90 / 60)
    assert chat.burst_arrival_rate_per_second is None  # as PromQL's rate() over [15s]


def test_no_window_yet_means_no_sample():
    prometheus = Prometheus()
    prometheus.scrape(Sample(0.0, {}))
    assert observation(prometheus, 5.0, 60.0, ["chat"], 1, 1, {}).sampled_at is None


def test_service_time_p95_comes_from_its_own_histogram():
    prometheus = Prometheus()
    prometheus.scrape(Sample(0.0, {"chat": series(0, 0, [])}))
    later = series(100, 0, [BUCKETS[30]] * 100)
    later.service_time.counts = counts_at(*([BUCKETS[10]] * 100))
    prometheus.scrape(Sample(60.0, {"chat": later}))
    chat = observation(prometheus, 60.0, 60.0, ["chat"], 1, 1, {}).endpoints["chat"]
    assert BUCKETS[9] < chat.service_time_p95_seconds <= BUCKETS[10]
    assert chat.ttft_p95_seconds > BUCKETS[29]


def test_the_recorder_splits_ttft_into_queue_wait_and_service_time():
    request = Request(arrival_seconds=1.0, endpoint="chat", prompt_tokens=10, output_tokens=5)
    recorder = RunRecorder([request])
    recorder.started(request, 1.5)
    recorder.first_token(request, 1.7)
    series = recorder.series["chat"]
    assert series.queue_wait.total == pytest.approx(0.5)
    assert series.service_time.total == pytest.approx(0.2)
    assert series.ttft.total == pytest.approx(0.7)


def test_a_prompt_too_long_for_the_context_is_invalid_not_an_arrival_turned_away():
    # As the worker counts it (400, `invalid`): the operator's arrivals (started + rejected)
    # leave it out, since no replica count would serve it.
    long, full = (Request("chat", 0.0, 10, 5), Request("chat", 0.0, 10, 5))
    recorder = RunRecorder([long, full])
    recorder.rejected(long, 0.0, "too-long")
    recorder.rejected(full, 0.0, "queue-full")
    assert recorder.series["chat"].requests == {"ok": 0, "rejected": 1, "invalid": 1, "error": 0}


def test_prompt_lengths_are_counted_when_the_prefill_starts_and_read_per_bucket():
    short = Request(arrival_seconds=0.0, endpoint="chat", prompt_tokens=100, output_tokens=5)
    long = Request(arrival_seconds=0.0, endpoint="chat", prompt_tokens=5000, output_tokens=5)
    recorder = RunRecorder([short, long])
    prometheus = Prometheus()
    prometheus.scrape(Sample(0.0, recorder.snapshot()))
    recorder.started(short, 1.0)
    recorder.started(long, 2.0)
    prometheus.scrape(Sample(60.0, recorder.snapshot()))
    buckets = observation(prometheus, 60.0, 60.0, ["chat"], 1, 1, {}).endpoints["chat"]
    per_bucket = dict(buckets.prompt_length_buckets)
    assert per_bucket[128] == pytest.approx(1 / 60)  # 100 tokens: the (96, 128] bucket
    assert per_bucket[6144] == pytest.approx(1 / 60)  # 5,000 tokens: (4096, 6144]
    assert sum(per_bucket.values()) == pytest.approx(2 / 60)
