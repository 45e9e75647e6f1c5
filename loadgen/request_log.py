"""The per-request log (``--request-log PATH``): one CSV row per request that ended, for checking the report's
figures against raw timings and for post-processing (as perf_analyzer's ``--profile-export-file`` is).

Columns (:data:`COLUMNS`): the step (1-based, as the report numbers steps); the outcome (ok, rejected, unreachable,
failed, deadline, cancelled, abandoned); the gRPC status code name (empty for ok; ``CLIENT`` for a failure in the client
itself, as the report's error table has it); whether the request was measured, i.e. its latency went into the step's
histograms by the recorder's own rule (closed loop: completed inside the measured window; open loop: intended inside
it); for a closed-loop step judged for stability, the measured window (trial, from 1) it counted in, since the report
takes the step's figures from its last 3 trials; times in microseconds since the first step of the process that
writes the log began (intended: open loop only; done: empty for abandoned; each time rounded on its own, so a
difference of two may be 1 us off the recorded latency); the latency exactly as recorded into the histogram (empty
when not measured); and the images the request carried.

Rows are written by the process that records the requests, from its gevent side (the recorder's steps), through a
buffered file flushed whenever a step begins or stops issuing and closed when the run finishes. In a distributed run
each worker writes its own file next to PATH (:func:`worker_path`), on its own host; the master writes none.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ipsbench.loadgen.outcomes import Outcome

COLUMNS = ("step", "outcome", "code", "measured", "trial", "intended_us", "sent_us", "done_us", "latency_us", "images")
BUFFER_BYTES = 1 << 20
"""Rows are buffered in memory up to this size between flushes."""


def worker_path(path: str | Path, worker_index: int) -> Path:
    """Where worker ``worker_index`` of a distributed run writes its log (``requests.csv``: ``requests.worker0.csv``
    for worker 0)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.worker{worker_index}{path.suffix}")


class RequestLog:
    """An open per-request CSV file. Opening it raises ``OSError`` when the file cannot be written."""

    def __init__(self, path: str | Path, images_per_request: int) -> None:
        self.path = Path(path)
        self.images_per_request = images_per_request
        self.zero_ns: int | None = None
        """Time zero of the file's times: when the first step began (set by :meth:`begin_step`)."""
        self._file = self.path.open("w", newline="", encoding="utf-8", buffering=BUFFER_BYTES)
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def begin_step(self, start_ns: int) -> None:
        """A step begins at ``start_ns``: the rows so far go to disk; the first step's start is time zero."""
        if self.zero_ns is None:
            self.zero_ns = start_ns
        self.flush()

    def completed(
        self, step: int, outcome: Outcome, code: str, sent_ns: int, done_ns: int, intended_ns: int | None,
        latency_us: int | None, images: int, trial: int | None = None,
    ) -> None:
        """A request of step ``step`` (from 1) that came back (or failed in the client); ``latency_us`` as recorded,
        None if not measured; ``trial``: the measured window (from 1) it counted in, where the step has several."""
        self._row(step, outcome, code, latency_us is not None, "" if trial is None else trial, intended_ns, sent_ns,
                  done_ns, latency_us, images or self.images_per_request)

    def abandoned(self, step: int, sent_ns: int | None, intended_ns: int | None) -> None:
        """A request still in flight when its step or the run stopped waiting for it (times when known)."""
        self._row(step, Outcome.ABANDONED, "", False, "", intended_ns, sent_ns, None, None, self.images_per_request)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Write what is buffered and close the file; rows recorded after this are dropped (the run is over)."""
        if not self._file.closed:
            self._file.close()

    def _row(
        self, step: int, outcome: Outcome, code: str, measured: bool, trial: int | str,
        intended_ns: int | None, sent_ns: int | None, done_ns: int | None, latency_us: int | None, images: int,
    ) -> None:
        if self._file.closed:
            return
        if self.zero_ns is None:  # rows without begin_step (a recorder used on its own): the first row's send
            self.zero_ns = sent_ns or intended_ns or 0
        self._writer.writerow((
            step, outcome.value, code, int(measured), trial, self._us(intended_ns), self._us(sent_ns),
            self._us(done_ns), "" if latency_us is None else latency_us, images,
        ))

    def _us(self, clock_ns: int | None) -> int | str:
        return "" if clock_ns is None else (clock_ns - self.zero_ns + 500) // 1000


class RequestLogError(Exception):
    """The per-request log cannot be written where it was asked for (a setup error: the run does not start)."""


def open_request_log(path: str | Path, images_per_request: int) -> RequestLog:
    """Open ``path`` for writing, its folder created; :class:`RequestLogError` saying why when that fails."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return RequestLog(path, images_per_request)
    except OSError as error:
        raise RequestLogError(f"--request-log {path}: {error.strerror or error}") from error


def describe(path: str, worker_indexes: list[int] | None) -> dict:
    """The report's ``request_log`` entry: the path asked for and the files written (``worker_indexes``: those of
    a distributed run's workers, each of which wrote its own file on its own host; None: a run in one process)."""
    if worker_indexes is None:
        files, written_by = [path], "the load-generating process"
    else:
        files, written_by = [str(worker_path(path, index)) for index in worker_indexes], "each worker, on its host"
    return {"path": path, "files": files, "written_by": written_by, "columns": list(COLUMNS),
            "time_unit": "us", "time_zero": "the start of the first step in the process that wrote the file"}
