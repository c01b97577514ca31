"""Whether an integration cannot keep up, judged on the trend of its lag over a window of samples.

Comparing the lag with one sample taken a window earlier raised false "cannot keep up" warnings: under steady
traffic the lag (statements pending + in flight) hovers around a batch or two and is higher now than then about
half of the time. Here the lag is judged on every sample in the window: behind when it keeps growing (the
later half of the window entirely above the earlier half, a least-squares slope well above its standard error,
and a growth over the window of more than a batch or two) or when a real backlog does not come
down, and never when it touched zero (everything was delivered) within the window. Pure functions: the
deliverer feeds them the samples it polls (``Recorder.observe_lag``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_SAMPLES = 4  # fewer samples say nothing about a trend
MIN_GROWTH = 10  # statements: a rise smaller than this over the window is noise (a batch in flight or not)
SIGNIFICANT = 3.0  # the slope must be this many standard errors above zero
BACKLOG = 1000  # a lag that stays at least this high and does not come down is behind, even if flat


@dataclass(frozen=True, slots=True)
class Trend:
    """The lag over a window: samples, the time they span, the latest, lowest and mean lag, and its slope."""

    samples: int
    span_s: float
    lag: int
    low: int
    mean: float
    slope_per_s: float  # statements per second the lag grows (negative: it comes down)
    slope_se: float = 0.0  # standard error of the slope (from the residuals): how much of it noise could make
    rising: bool = False  # every sample of the later half is above every sample of the earlier half

    @property
    def growth(self) -> float:
        """How much the lag grew over the window, by the fitted line."""
        return self.slope_per_s * self.span_s


def trend(samples: Sequence[tuple[float, int]]) -> Trend | None:
    """The trend of ``(time, lag)`` samples (oldest first); None with fewer than two or no time between them."""
    n = len(samples)
    if n < 2:
        return None
    ts = [t for t, _ in samples]
    lags = [lag for _, lag in samples]
    mt, ml = sum(ts) / n, sum(lags) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    slope = sum((t - mt) * (lag - ml) for t, lag in samples) / var
    residual = sum((lag - ml - slope * (t - mt)) ** 2 for t, lag in samples)
    se = (residual / (n - 2) / var) ** 0.5 if n > 2 else 0.0
    half = n // 2
    return Trend(samples=n, span_s=ts[-1] - ts[0], lag=lags[-1], low=min(lags), mean=ml, slope_per_s=slope,
                 slope_se=se, rising=min(lags[-half:]) > max(lags[:half]))


def behind(t: Trend | None, window: float) -> str | None:
    """Why the lag says "cannot keep up" (a phrase for the log and the status), or None when it does not: the
    samples must cover the window, the lag must not have reached zero in it, and it
    must grow by more than noise or stay at a backlog that does not come down."""
    if t is None or t.samples < MIN_SAMPLES or t.span_s < window or t.low == 0:
        return None
    if (t.rising and t.slope_per_s > SIGNIFICANT * t.slope_se
            and t.growth >= MIN_GROWTH):
        return (f"{t.lag} statements behind, growing by {t.slope_per_s:.1f}/s over the last {t.span_s:.0f} s "
                f"(lowest {t.low})")
    if t.low >= BACKLOG and -t.growth < BACKLOG / 10:  # not draining
        return f"{t.lag} statements behind, not coming down over the last {t.span_s:.0f} s (lowest {t.low})"
    return None

