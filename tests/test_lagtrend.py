"""Issue 20 item 3: "cannot keep up" judged on the trend of the lag over a window of samples, not on one sample
taken a window earlier (pure functions, and the deliverer's recorder that feeds them)."""

from __future__ import annotations

import logging
import random

import pytest

from hub.deliver.engine import lagtrend
from hub.deliver.engine.context import Context
from hub.deliver.engine.counters import Recorder

WINDOW = 60.0


def poll(lags, every: float = 5.0, start: float = 1000.0) -> list[tuple[float, int]]:
    return [(start + i * every, lag) for i, lag in enumerate(lags)]


def test_the_trend_is_the_least_squares_slope():
    t = lagtrend.trend(poll([0, 10, 20, 30, 40]))
    assert t.slope_per_s == pytest.approx(2.0) and t.span_s == 20 and t.lag == 40 and t.low == 0 and t.mean == 20
    assert lagtrend.trend(poll([5])) is None and lagtrend.trend([(1.0, 3), (1.0, 4)]) is None


def test_steady_traffic_hovering_around_a_batch_is_not_behind():
    rng = random.Random(7)
    for _ in range(1000):  # lag between 30 and 70 at every poll: higher than 60 s ago about half the time
        samples = poll([rng.randint(30, 70) for _ in range(13)])
        assert lagtrend.behind(lagtrend.trend(samples), WINDOW) is None, samples


def test_a_growing_lag_is_behind_and_says_by_how_much():
    reason = lagtrend.behind(lagtrend.trend(poll([100 + 50 * i for i in range(13)])), WINDOW)
    assert reason == "700 statements behind, growing by 10.0/s over the last 60 s (lowest 100)"


def test_a_backlog_that_does_not_come_down_is_behind_a_draining_one_is_not():
    flat = lagtrend.behind(lagtrend.trend(poll([5000, 5003, 4998, 5001] * 3 + [5000])), WINDOW)
    assert flat and flat.startswith("5000 statements behind, not coming down")
    assert lagtrend.behind(lagtrend.trend(poll([5000 - 300 * i for i in range(13)])), WINDOW) is None


def test_a_burst_that_was_delivered_within_the_window_is_not_behind():
    # back to zero in between: the deliverer caught up, whatever the lag is now compared with 60 s ago
    assert lagtrend.behind(lagtrend.trend(poll([10, 40, 0, 0, 30, 60, 0, 20, 80, 120, 150, 170, 200])), WINDOW) is None


def test_too_short_a_window_says_nothing():
    assert lagtrend.behind(lagtrend.trend(poll([0, 100, 200])), WINDOW) is None  # 10 s of samples
    assert lagtrend.behind(None, WINDOW) is None


def recorder() -> Recorder:
    ctx = Context(nc=None, js=None, state=None, settings=None, metrics=None, process_id="p1", schedule=[],
                  max_retry_after=0, disable_after=0, allowed=[], spawn=None, restart=None, disable=None,
                  log_attempt=None, peers=None, publisher=None, leases=None, watch=None, starts=None)
    return Recorder(ctx, "g1")


def test_recorder_no_false_warning_under_steady_traffic(caplog):
    """The lag was 52 now and 48 a window ago, 20-80 in between: the single-sample rule said "cannot keep up"."""
    rec = recorder()
    caplog.set_level(logging.INFO, "rthub.deliver")
    for i, lag in enumerate([48, 80, 20, 75, 25, 70, 30, 65, 35, 60, 40, 55, 52, 30, 70, 45]):
        now = 1000.0 + 5 * i
        rec.stats.last_success = now
        rec.observe_lag(now, lag, WINDOW, delivering=True, answering=True)
        assert rec.stats.behind_since is None, (i, lag)
    assert "cannot keep up" not in caplog.text


def test_recorder_one_line_when_behind_starts_and_one_when_it_ends(caplog):
    rec = recorder()
    caplog.set_level(logging.INFO, "rthub.deliver")
    lags = [100 + 40 * i for i in range(20)] + [900 - 150 * i for i in range(7)] + [0]
    for i, lag in enumerate(lags):
        now = 1000.0 + 5 * i
        rec.stats.last_success = now
        rec.observe_lag(now, lag, WINDOW, delivering=True, answering=True)
        if i == 11:
            assert rec.stats.behind_since is None  # a window's worth of samples first
        if i == 13:
            assert rec.stats.behind_since is not None
    assert rec.stats.behind_since is None
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if "cannot keep up" in m] == [
        "integration g1 cannot keep up: 580 statements behind, growing by 8.0/s over the last 60 s (lowest 100)"]
    assert len([m for m in lines if "keeps up again" in m]) == 1


def test_recorder_a_failing_endpoint_is_not_behind():
    rec = recorder()
    for i in range(20):
        rec.observe_lag(1000.0 + 5 * i, 100 + 50 * i, WINDOW, delivering=True, answering=False)
    assert rec.stats.behind_since is None
