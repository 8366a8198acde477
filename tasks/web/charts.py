"""The index's charts: figures read from the Redis counters the workers keep
as they acknowledge (keys.rates, keys.latencies; see the ACK script), drawn
as inline SVG by the server so they show with JavaScript off.

Nothing here reads the history table: a chart costs a few Redis reads per
queue whatever the history holds.
"""

import math
from dataclasses import dataclass

from tasks.queue.backend import queue_for
from tasks.queue.reliable import RATES_WINDOW

# Seconds per plotted point: 300 one-second points would be mostly noise.
STEP = 5
PERCENTILES = (50, 90, 99)
WIDTH, HEIGHT = 600, 140
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 40, 20, 10


@dataclass(frozen=True)
class QueueChart:
    name: str
    ok: list  # tasks succeeded per second, one point per STEP seconds, oldest first
    err: list  # tasks failed (or retried) per second, likewise
    latency: dict  # percentile -> milliseconds; empty when no task ran lately
    samples: int  # latencies the percentiles are read from

    @property
    def total_ok(self):
        return round(sum(self.ok) * STEP)

    @property
    def total_err(self):
        return round(sum(self.err) * STEP)


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def per_second(series, step=STEP):
    """Seconds grouped by ``step``, as the mean rate of each group."""
    return [sum(series[i:i + step]) / step for i in range(0, len(series), step)]


def read_chart(name, now=None):
    queue = queue_for(name)
    rates = queue.rates(now)
    latencies = queue.latencies()
    latency = {p: percentile(latencies, p) for p in PERCENTILES} if latencies else {}
    return QueueChart(name, per_second(rates["ok"]), per_second(rates["err"]), latency, len(latencies))


def read_charts(names, now=None):
    return [read_chart(name, now) for name in names]


def _scale(peak):
    """A round top for the y axis, at least 1."""
    if peak <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(peak))
    for m in (1, 2, 5, 10):
        if peak <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def rate_polylines(chart):
    """SVG geometry of one queue's rate chart: {"top", "ok", "err", "window"}."""
    top = _scale(max([*chart.ok, *chart.err, 0]))
    inner_w, inner_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP

    def points(series):
        if len(series) < 2:
            return ""
        dx = inner_w / (len(series) - 1)
        return " ".join(f"{PAD_LEFT + i * dx:.1f},{PAD_TOP + inner_h - v / top * inner_h:.1f}" for i, v in enumerate(series))

    return {"top": top, "ok": points(chart.ok), "err": points(chart.err), "window": RATES_WINDOW // 60}


def bars(values):
    """[(label, value, percent of the largest value)], for bars drawn in CSS."""
    peak = max([v for _, v in values] + [0])
    return [(label, value, (value / peak * 100) if peak else 0) for label, value in values]
