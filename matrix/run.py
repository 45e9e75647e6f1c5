"""The matrix run: every cell in order, the progress line, the report written at the end — and on Ctrl-C or
SIGTERM, with what was done (the running cell's stage asked to stop first, so its load report is kept)."""

from __future__ import annotations

import platform
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ipsbench.loadgen.report.cells import duration_words
from ipsbench.matrix.plan import Capabilities, Cell, Estimate, plan_cells, planned_seconds
from ipsbench.matrix.processes import Interrupted, StopFlag
from ipsbench.matrix.report import MATRIX_MD, console_summary, write_matrix_reports
from ipsbench.matrix.settings import MatrixSettings
from ipsbench.matrix.stages import CellStages

SCHEMA_VERSION = 1
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
CELLS_FOLDER = "cells"


class MatrixRun:
    def __init__(self, settings: MatrixSettings, caps: Capabilities, out=sys.stdout) -> None:
        self.settings = settings
        self.caps = caps
        self.cells = plan_cells(settings, caps)
        self.stop = StopFlag()
        self._out = out
        self.records: list[dict] = []

    def say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if not self.stop.is_set:
            self.say(f"{name}: stopping the running stage; the report will hold what was done")
        self.stop.set(name)

    def run(self) -> tuple[dict, int]:
        """Run every cell; (the matrix document, the exit status)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            self._run_cells()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        document = self.document(started_at, time.monotonic() - started)
        written = write_matrix_reports(document, self.settings.out)
        self.say(console_summary(document))
        self.say(f"report: {written.with_name(MATRIX_MD)} (matrix.json, matrix.html, matrix.csv beside it)")
        if self.stop.is_set:
            return document, SIGNAL_EXIT_CODES.get(self.stop.signal_name or "", 130)
        return document, 1 if any(record["status"] != "ok" for record in self.records) else 0

    def _run_cells(self) -> None:
        planned = [planned_seconds(cell, self.settings, self.caps) for cell in self.cells]
        estimate = Estimate(planned)
        total = len(self.cells)
        self.say(f"matrix: {total} cells ({', '.join(cell.label for cell in self.cells)}) on this machine: "
                 f"{self.caps.describe()}; about {duration_words(sum(planned))} planned")
        for index, cell in enumerate(self.cells):
            if self.stop.is_set:
                self.records.append(_not_run(cell, "the run was stopped before this cell"))
                continue
            cell_started = time.monotonic()

            def progress(stage: str, index=index, cell=cell, cell_started=cell_started) -> None:
                left = estimate.left_s(index, time.monotonic() - cell_started)
                self.say(f"[{index + 1}/{total}] {cell.label} ({cell.format}, {cell.device}): {stage} "
                         f"— about {duration_words(left)} left")

            stages = CellStages(cell, self.settings, self.caps, self.settings.out / CELLS_FOLDER / cell.entry,
                                self.stop, progress)
            try:
                record = stages.run()
            except Interrupted:
                record = stages.record
            self.records.append(record)
            estimate.finished(index, time.monotonic() - cell_started)
            self.say(f"[{index + 1}/{total}] {cell.label}: {_cell_outcome(record)}")

    def document(self, started_at: str, seconds: float) -> dict:
        settings = self.settings
        return {
            "kind": "ipsbench_matrix", "schema_version": SCHEMA_VERSION,
            "status": "interrupted" if self.stop.is_set else "complete",
            "interrupted_by": self.stop.signal_name,
            "started_at": started_at, "duration_s": round(seconds, 3),
            "host": socket.gethostname(), "software": _software(),
            "capabilities": {"cuda": self.caps.cuda, "ort_cuda": self.caps.ort_cuda, "tensorrt": self.caps.tensorrt},
            "networks": list(settings.network_names), "precisions": list(settings.precisions),
            "batch_sizes": list(settings.sorted_batch_sizes),
            "end_to_end_method": {"scenario": settings.load, "objective": settings.latency_slo or None,
                                  "target": settings.target or "ipsbench-serve started per cell on 127.0.0.1"},
            "settings": _settings_record(settings),
            "cells": self.records,
        }


def _not_run(cell: Cell, why: str) -> dict:
    return {"network": cell.network, "precision": cell.precision, "entry": cell.entry, "format": cell.format,
            "device": cell.device, "status": "not_run", "failures": [{"stage": "none", "reason": why}],
            "export": None, "engine": None, "train": None, "end_to_end": None, "ratio": None, "cost": None,
            "seconds": 0.0, "folder": cell.entry}


def _cell_outcome(record: dict) -> str:
    if record["status"] == "ok":
        e2e = record.get("end_to_end") or {}
        figure = e2e.get("images_per_s")
        return "done" + (f", {figure:,.1f} images/s end to end" if figure else "")
    failures = "; ".join(f"{f['stage']}: {f['reason']}" for f in record["failures"])
    return f"{record['status'].upper()} ({failures})"[:600]


def _settings_record(settings: MatrixSettings) -> dict:
    from dataclasses import asdict

    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        return value

    return {key: plain(value) for key, value in asdict(settings).items()}


def _software() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("ipsbench", "torch", "onnxruntime", "tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
