"""The HTML report's plots, drawn with matplotlib from the report document and returned as inline SVG text.

A plot without data is not drawn; it comes back with a one-line note saying why. Figures are built with the
object API (no pyplot state), text stays text in the SVG (no embedded glyph paths, no fonts fetched), and each
figure's element ids are salted with its own name so several SVGs can share one HTML page.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from ipsbench.loadgen.report.cells import load_cell, load_header
from ipsbench.loadgen.report.schema import PERCENTILES
from ipsbench.loadgen.report.tables import BREAKDOWN_PARTS, gpu_watts, time_breakdown

FIGURE_WIDTH_IN = 7.5
_SVG_START = re.compile(r"<svg\b")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


@dataclass
class Plot:
    """One figure of the report: its SVG, or the note that says why it is left out."""

    name: str
    title: str
    svg: str | None = None
    note: str | None = None


def _svg(figure, name: str) -> str:
    """The figure as an ``<svg>`` element to inline: no XML prolog or DOCTYPE, no RDF metadata."""
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"ipsbench-{name}"}):
        figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = out.getvalue()
    text = text[_SVG_START.search(text).start():]
    return _METADATA.sub("", text, count=1).strip()


def _figure(rows: int = 1, height_in: float = 3.2):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(FIGURE_WIDTH_IN, height_in * rows), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, axes


def _plain_log_labels(ax) -> None:
    """Label a log axis 5, 10, 20 rather than 10^1, so milliseconds read as milliseconds."""
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def throughput_vs_p99(report: dict) -> Plot:
    plot = Plot("throughput-vs-p99", "Throughput vs p99 latency across steps")
    points = [(step["images_per_s"], step["latency_us"]["p99"] / 1000, load_cell(step),
               "p99" in step.get("unsupported_percentiles", []))
              for step in report["steps"] if step.get("images_per_s") and step.get("latency_us")]
    if not points:
        plot.note = "No step had a successful request in its measured window, so there is no throughput to plot."
        return plot
    figure, (ax,) = _figure()
    ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=1)
    claimed = [p for p in points if not p[3]]
    unclaimed = [p for p in points if p[3]]
    if claimed:
        ax.scatter([p[0] for p in claimed], [p[1] for p in claimed], color="tab:blue", zorder=2, label="p99")
    if unclaimed:
        ax.scatter([p[0] for p in unclaimed], [p[1] for p in unclaimed], facecolors="white", edgecolors="tab:blue",
                   zorder=2, label="p99 from too few samples to claim")
    for x, y, label, _ in points:
        ax.annotate(f"{load_header(report)} {label}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("images/sec (successful, measured window)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    plot.svg = _svg(figure, plot.name)
    return plot


def latency_percentiles(report: dict) -> Plot:
    plot = Plot("latency-percentiles", "Latency percentiles per step")
    steps = [step for step in report["steps"] if step.get("latency_us")]
    if not steps:
        plot.note = "No step recorded a successful request's latency."
        return plot
    figure, (ax,) = _figure()
    labels = [load_cell(step) for step in steps]
    positions = list(range(len(steps)))
    for name in [*(name for name, _ in PERCENTILES), "max"]:
        values = [step["latency_us"].get(name) for step in steps]
        ax.plot(positions, [None if v is None else v / 1000 for v in values], marker="o", label=name)
    ax.set_xticks(positions, labels)
    ax.set_xlabel(load_header(report))
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    _plain_log_labels(ax)
    ax.legend(fontsize=8, ncols=3)
    plot.svg = _svg(figure, plot.name)
    return plot


def _window_errors(step: dict) -> int:
    return sum(count for outcome, count in step["window_requests"].items() if outcome != "ok")


def timeline(report: dict) -> Plot:
    """images/sec, p99, errors, GPU utilization and power, each held over its step's measured window."""
    plot = Plot("timeline", "Timeline of the measured windows")
    steps = [step for step in report["steps"]
             if step.get("window_start_unix") is not None and step.get("window_end_unix") is not None]
    if not steps:
        plot.note = "The report has no wall-clock window bounds for its steps, so there is no timeline."
        return plot
    origin = min(step["window_start_unix"] for step in steps)

    def gpu(step: dict) -> dict:
        return (step.get("server") or {}).get("gpu") or {}

    utilization = [None if gpu(s).get("utilization_mean") is None else gpu(s)["utilization_mean"] * 100
                   for s in steps]
    series = [
        ("images/sec", [s.get("images_per_s") for s in steps], "tab:blue"),
        ("p99 ms", [None if not s.get("latency_us") else s["latency_us"]["p99"] / 1000 for s in steps], "tab:orange"),
        ("errors in window", [_window_errors(s) for s in steps], "tab:red"),
        ("GPU util %", utilization, "tab:green"),
        ("GPU power W", [gpu_watts(gpu(s)) for s in steps], "tab:purple"),
    ]
    drawn = [entry for entry in series if any(value is not None for value in entry[1])]
    missing = [entry[0] for entry in series if entry not in drawn]
    figure, axes = _figure(len(drawn), height_in=1.6)
    for ax, (label, values, color) in zip(axes, drawn):
        for step, value in zip(steps, values):
            if value is None:
                continue
            start, end = step["window_start_unix"] - origin, step["window_end_unix"] - origin
            ax.hlines(value, start, end, color=color, linewidth=2.5)
            ax.axvspan(start, end, color=color, alpha=0.06)
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("seconds since the first measured window opened")
    plot.svg = _svg(figure, plot.name)
    if missing:
        plot.note = f"Not drawn, no readings in this run: {', '.join(missing)}."
    return plot


def breakdown(report: dict) -> Plot:
    plot = Plot("time-breakdown", "Where the time went, mean per request")
    parts = [(load_cell(step), time_breakdown(step)) for step in report["steps"]]
    parts = [(label, part) for label, part in parts if part]
    if not parts:
        plot.note = "No server figures (the run did not scrape the server's metrics), so no breakdown."
        return plot
    figure, (ax,) = _figure(height_in=max(1.2 + 0.35 * len(parts), 2.0))
    labels = [f"{load_header(report)} {label}" for label, _ in parts]
    left = [0.0] * len(parts)
    colors = dict(client_network_ms="tab:gray", pre_queue_ms="tab:purple", queue_ms="tab:orange",
                  compute_ms="tab:blue", post_compute_ms="tab:green")
    for key, name in BREAKDOWN_PARTS:
        widths = [part[key] or 0.0 for _, part in parts]
        if key in ("pre_queue_ms", "post_compute_ms") and all(part[key] is None for _, part in parts):
            continue  # a server without its front end's series: that time is in client + network
        ax.barh(labels, widths, left=left, color=colors[key], label=name)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per request (client + network = end-to-end mean − the server's parts)")
    ax.legend(fontsize=8, loc="lower right")
    plot.svg = _svg(figure, plot.name)
    return plot


def stability_windows(report: dict) -> Plot:
    plot = Plot("stability", "Stability windows per step")
    steps = [step for step in report["steps"] if (step.get("stability") or {}).get("windows")]
    if not steps:
        plot.note = "No stability windows in this run (the scenario does not repeat windows per step)."
        return plot
    figure, axes = _figure(2, height_in=1.9)
    for step in steps:
        windows = step["stability"]["windows"]
        trials = list(range(1, len(windows) + 1))
        marker = "o" if step["stability"].get("stable") else "x"
        label = f"{load_cell(step)}" + ("" if step["stability"].get("stable") else " (UNSTABLE)")
        axes[0].plot(trials, [w.get("images_per_s") for w in windows], marker=marker, label=label)
        axes[1].plot(trials, [None if w.get("p99_us") is None else w["p99_us"] / 1000 for w in windows],
                     marker=marker)
    axes[0].set_ylabel("images/sec", fontsize=8)
    axes[1].set_ylabel("p99 ms", fontsize=8)
    axes[1].set_xlabel("window (trial)")
    axes[0].legend(title=load_header(report), fontsize=8, ncols=4)
    plot.svg = _svg(figure, plot.name)
    return plot


def all_plots(report: dict) -> list[Plot]:
    return [throughput_vs_p99(report), latency_percentiles(report), timeline(report), breakdown(report),
            stability_windows(report)]
