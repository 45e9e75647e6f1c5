"""The live progress line in the terminal while a run goes on: current step, images/sec, p99, errors (and how many
of them found no server: a dead target shows at once).

Only shown when stdout is a terminal (a pipe or file gets the final table alone)."""

from __future__ import annotations

from collections.abc import Callable

import gevent
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ipsbench.loadgen.outcomes import ERRORS, Outcome
from ipsbench.loadgen.recorder import StepRecord

REFRESH_S = 0.5


def progress_text(step: StepRecord | None, number: int, planned: int, now_ns: int) -> str:
    """One line about the step being issued into."""
    if step is None:
        return f"step {number}/{planned}: between steps"
    load = f"{step.rate_per_s:g} requests/s" if step.open_loop else f"concurrency {step.concurrency}"
    errors = f"{sum(step.counts[o] for o in ERRORS)} errors"
    if unreachable := step.counts[Outcome.UNREACHABLE]:
        errors += f" ({unreachable} unreachable)"
    if now_ns < step.window_start_ns:
        return f"step {number}/{planned} {load}: warming up, {step.issued} issued, {errors}"
    elapsed_s = (min(now_ns, step.window_end_ns) - step.window_start_ns) / 1e9
    rate = step.window_images_ok / elapsed_s if elapsed_s > 0 else 0.0
    histogram = step.histograms[Outcome.OK]
    p99 = f"{histogram.get_value_at_percentile(99.0) / 1000:.1f} ms" if histogram.get_total_count() else "–"
    trial = ""
    if step.trials_max > 1:
        trial = f" window {int(elapsed_s // step.window_s) + 1}/{step.trials_max}"
    return f"step {number}/{planned} {load}{trial}: {rate:,.1f} images/s, p99 {p99}, {errors}"


class Progress:
    """Refreshes the line every ``REFRESH_S`` from ``live_step`` until stopped."""

    def __init__(self, shape, live_step: Callable[[], StepRecord | None], console: Console | None = None) -> None:
        self.shape = shape
        self.live_step = live_step
        self._live = Live(Text(""), console=console or Console(), auto_refresh=False, transient=True)
        self._live.start()
        self._greenlet = gevent.spawn(self._refresh)

    def _refresh(self) -> None:
        while True:
            gevent.sleep(REFRESH_S)
            text = progress_text(self.live_step(), self.shape.step_count, self.shape.planned_step_count,
                                 self.shape.recorder.now_ns())
            self._live.update(Text(text), refresh=True)

    def stop(self) -> None:
        self._greenlet.kill(block=True)
        self._live.stop()
