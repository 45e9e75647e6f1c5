"""Stability of a closed-loop step (perf_analyzer's rule): the last 3 measured windows agree within a tolerance
of their mean, for each chosen metric (``--stability-metric``: images/sec and p50 unless told); a step whose trials
run out first is UNSTABLE. A percentile is judged only when each of those windows holds the samples it needs
(100 / (1 - p), as for an objective): p99 over windows of 90 samples would be judging their maxima."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ipsbench.loadgen.report.schema import PERCENTILES
from ipsbench.loadgen.slo import min_samples
from ipsbench.loadgen.trials import STABLE_WINDOWS

LATENCY_METRICS = {name: percentile for name, percentile in PERCENTILES if name != "p99.9"}
STABILITY_METRICS = ("images_per_s", *LATENCY_METRICS, "mean")
DEFAULT_STABILITY_METRICS = ("images_per_s", "p50")

Window = dict
"""One window's figures: ``images_per_s``, ``requests`` (successes), and each of ``LATENCY_METRICS`` and ``mean``
in microseconds (None without a success)."""


def window_figures(images_ok: int, window_s: float, histogram) -> Window:
    """A window's figures from its images, length and successes' latency histogram (None: no success)."""
    count = histogram.get_total_count() if histogram is not None else 0
    figures = {"images_per_s": images_ok / window_s if window_s > 0 else 0.0, "requests": count}
    for name, percentile in LATENCY_METRICS.items():
        figures[name] = histogram.get_value_at_percentile(percentile) if count else None
    figures["mean"] = histogram.get_mean_value() if count else None
    return figures


def judged_metrics(windows: Sequence[Window], metrics: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Of ``metrics``, those ``windows`` can be judged on, and why each other cannot (too few samples)."""
    judged, unjudged = [], {}
    fewest = min((window["requests"] for window in windows), default=0)
    for metric in metrics:
        needed = min_samples(LATENCY_METRICS[metric]) if metric in LATENCY_METRICS else 1
        if metric != "images_per_s" and fewest < needed:
            unjudged[metric] = f"a window held {fewest} samples, {needed} needed to judge {metric}"
        else:
            judged.append(metric)
    return judged, unjudged


def _agree(values: Sequence[float], tolerance: float) -> bool:
    mean = sum(values) / len(values)
    return mean > 0 and all(abs(value - mean) <= tolerance * mean for value in values)


def is_stable(windows: Sequence[Window], tolerance: float, metrics: Sequence[str] = DEFAULT_STABILITY_METRICS) -> bool:
    """True when the last 3 windows agree within ``tolerance`` (e.g. 0.10) on every metric they can be judged on
    (images/sec always can, once each window has a success)."""
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    if any(window["requests"] == 0 for window in last):
        return False
    judged, _ = judged_metrics(last, metrics)
    return bool(judged) and all(_agree([window[metric] for window in last], tolerance) for metric in judged)


def stability_entry(windows: Sequence[Window], stable: bool | None, trials: int, tolerance: float,
                    metrics: Sequence[str] = DEFAULT_STABILITY_METRICS) -> dict:
    """The step's ``stability`` block in the report."""
    judged, unjudged = judged_metrics(windows[-STABLE_WINDOWS:], metrics)
    return {
        "stable": bool(stable),
        "trials": trials,
        "metrics": list(metrics),
        "judged_metrics": judged,
        "unjudged_metrics": unjudged,
        "windows": [
            {"images_per_s": round(window["images_per_s"], 3), "requests": window["requests"],
             **{f"{name}_us": window[name] for name in LATENCY_METRICS},
             "mean_us": None if window["mean"] is None else round(window["mean"], 1)}
            for window in windows
        ],
        "tolerance": tolerance,
    }


class MetricListError(argparse.ArgumentTypeError, ValueError):
    """A ``--stability-metric`` value that names no known metric: argparse prints its message as it is."""


def stability_metric_list(text: str) -> tuple[str, ...]:
    """``images_per_s,p50`` → the metrics; :class:`MetricListError` (a ValueError) naming the choices otherwise."""
    metrics = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [metric for metric in metrics if metric not in STABILITY_METRICS]
    if unknown or not metrics:
        raise MetricListError(f"stability metrics are a comma-separated choice of {', '.join(STABILITY_METRICS)}, got "
                         f"{text[:80]!r}")
    return metrics
