"""One cell's stages, in order: export (or reuse) the entry, bench the engine, time training, start a server, load
it end to end. Each stage's command, log and outcome go into the cell's folder and record; a stage that fails is
named with its reason, and what the other stages measured is kept."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ipsbench.matrix import figures
from ipsbench.matrix.plan import Capabilities, Cell, trains
from ipsbench.matrix.processes import (
    Interrupted,
    ServerError,
    ServerProcess,
    StageResult,
    StopFlag,
    command,
    run_stage,
)
from ipsbench.matrix.settings import MatrixSettings

EXPORT_RECORD = "export.json"
"""What ``ipsbench-export`` writes next to an entry's config: how it was made and what its checks measured."""
MAX_JSON_BYTES = 64 << 20
STAGE_TIMEOUT_FLOOR_S = 600.0


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def read_json(path: Path) -> dict | None:
    """A JSON document a stage wrote, bounded; None when absent or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def reuse_problem(record: dict | None, cell: Cell, image_size: int | None, max_batch: int) -> str | None:
    """Why an existing entry is not the one this cell asks for (None: reuse it)."""
    if record is None:
        return f"has no {EXPORT_RECORD}, so how it was made is unknown"
    asked = {"network": cell.network, "precision": cell.precision, "format": cell.format}
    if image_size is not None:
        asked["image_size"] = image_size
    for key, value in asked.items():
        if record.get(key) != value:
            return f"was exported with {key} {record.get(key)!r}, not {value!r}"
    if (record.get("max_batch_size") or 0) < max_batch:
        return f"has max_batch_size {record.get('max_batch_size')}, below the largest batch size asked ({max_batch})"
    return None


class CellStages:
    """Runs one cell; ``progress(stage)`` is told as each stage starts."""

    def __init__(self, cell: Cell, settings: MatrixSettings, caps: Capabilities, folder: Path, stop: StopFlag,
                 progress: Callable[[str], None]) -> None:
        self.cell = cell
        self.settings = settings
        self.caps = caps
        self.folder = folder
        self.stop = stop
        self.progress = progress
        self.record: dict = {
            "network": cell.network, "precision": cell.precision, "entry": cell.entry, "format": cell.format,
            "device": cell.device, "status": "running", "failures": [], "export": None, "engine": None,
            "train": None, "end_to_end": None, "ratio": None, "cost": None, "seconds": None,
            "folder": folder.name,
        }

    def _timeout_s(self, planned_s: float) -> float:
        return max(STAGE_TIMEOUT_FLOOR_S, 4 * planned_s)

    def _fail(self, stage: str, reason: str) -> None:
        self.record["failures"].append({"stage": stage, "reason": reason})

    def run(self) -> dict:
        started = time.monotonic()
        try:
            self._run()
        except Interrupted:
            self.record["status"] = "interrupted"
            raise
        finally:
            self.record["seconds"] = round(time.monotonic() - started, 3)
            if self.record["status"] == "running":
                self.record["status"] = "failed" if self.record["failures"] else "ok"
        return self.record

    def _run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._export()
        except StageFailed as failure:
            self._fail(failure.stage, failure.reason)
            return  # nothing to bench or serve
        self._bench("engine", "infer")
        if self.settings.train and trains(self.cell, self.caps):
            self._bench("train", "train")
        self._end_to_end()
        engine_rows = (self.record["engine"] or {}).get("rows") or []
        self.record["ratio"] = figures.ratio(self.record["end_to_end"], engine_rows)
        self.record["cost"] = figures.cost(self.record["end_to_end"], engine_rows, self.settings.gpu_cost_per_hour,
                                           self.settings.gpu_watts_idle)

    # -- export ---------------------------------------------------------------------------------------------------
    def _export(self) -> None:
        settings, cell = self.settings, self.cell
        entry = settings.repository / cell.entry
        max_batch = max(settings.batch_sizes)
        if entry.exists():
            record = read_json(entry / EXPORT_RECORD)
            problem = reuse_problem(record, cell, settings.image_size, max_batch)
            if problem:
                raise StageFailed("export", f"{entry} exists but {problem}; delete it (or give another "
                                            "--repository) to export it again")
            self.record["export"] = {**_export_summary(record), "reused": True}
            self.progress(f"reusing {entry}")
            return
        self.progress("export")
        out = self.folder / "export-result.json"
        argv = command("ipsbench-export") + [
            cell.network, "--name", cell.entry, "--out", str(settings.repository), "--format", cell.format,
            "--device", cell.device, "--precision", cell.precision, "--max-batch-size", str(max_batch),
            "--seed", str(settings.seed), "--json", str(out),
        ]
        if settings.image_size:
            argv += ["--image-size", str(settings.image_size)]
        if (weights := settings.weights_for(cell.network)) is not None:
            argv += ["--weights", str(weights)]
        if cell.format == "torchscript" and cell.device == "gpu":
            argv += ["--cuda-graphs"]
        if cell.precision == "int8":
            argv += ["--calibration-limit", str(settings.calibration_limit)]
            if settings.calibration_images:
                argv += ["--calibration-images", str(settings.calibration_images)]
        if settings.min_agreement is not None and cell.precision != "fp32":
            argv += ["--min-agreement", str(settings.min_agreement)]
        result = run_stage(argv, self.folder / "export.log", self.stop, STAGE_TIMEOUT_FLOOR_S * 3)
        record = read_json(out)
        if record is not None:
            self.record["export"] = {**_export_summary(record), "reused": False, "seconds": round(result.seconds, 3)}
        if result.returncode != 0:
            raise StageFailed("export", _export_failure(record, result))

    # -- benches --------------------------------------------------------------------------------------------------
    def _bench(self, key: str, mode: str) -> None:
        settings, cell = self.settings, self.cell
        self.progress("engine bench" if mode == "infer" else "training bench")
        out = self.folder / f"{key}-bench.json"
        argv = command("ipsbench-serve") + [
            "bench", cell.entry, "--model-repository", str(settings.repository),
            "--batch-sizes", ",".join(str(size) for size in settings.sorted_batch_sizes),
            "--duration", f"{settings.bench_duration_s}s", "--warmup", f"{settings.bench_warmup_s}s",
            "--seed", str(settings.seed), "--json", str(out),
        ]
        if mode == "train":
            argv += ["--mode", "train", "--network", cell.network]
        planned = len(settings.batch_sizes) * (settings.bench_duration_s + settings.bench_warmup_s) + 30
        result = run_stage(argv, self.folder / f"{key}-bench.log", self.stop, self._timeout_s(planned))
        summary = figures.bench_summary(read_json(out))
        if result.returncode != 0 or summary is None:
            self._fail(f"{key} bench", _stage_failure(result))
            return
        self.record[key] = summary

    # -- end to end -----------------------------------------------------------------------------------------------
    def _end_to_end(self) -> None:
        settings = self.settings
        if settings.target:
            self._load(settings.target, settings.metrics_url)
            return
        self.progress("starting ipsbench-serve")
        server = ServerProcess(settings.repository, self.cell.entry, self.folder / "server.log")
        try:
            try:
                server.start(self.stop, settings.ready_timeout_s)
            except ServerError as error:
                self._fail("serve", str(error))
                return
            self._load(server.target, server.metrics_url)
        finally:
            status = server.stop()
            if status not in (None, 0):
                self._fail("serve", f"ipsbench-serve exited with status {status} when stopped "
                                    f"(see {server.log.name})")

    def _load(self, target: str, metrics_url: str) -> None:
        settings, cell = self.settings, self.cell
        self.progress(f"end to end ({settings.load})")
        out = self.folder / "load"
        argv = command("ipsbench-load") + [
            settings.load, "--target", target, "--model", cell.entry, "--duration", f"{settings.duration_s}s",
            "--warmup", f"{settings.warmup_s}s", "--seed", str(settings.seed), "--out", str(out),
        ]
        if settings.load == "sweep":
            argv += ["--concurrency", ",".join(str(level) for level in settings.concurrency),
                     "--max-trials", str(settings.max_trials)]
        if settings.latency_slo:
            argv += ["--latency-slo", settings.latency_slo]
        if metrics_url:
            argv += ["--metrics-url", metrics_url]
        engine_bench = self.folder / "engine-bench.json"
        if self.record["engine"] and engine_bench.is_file():
            argv += ["--engine-bench", str(engine_bench)]
        planned = (len(settings.concurrency) * settings.max_trials + 8) * (settings.duration_s + settings.warmup_s)
        try:
            result = run_stage(argv, self.folder / "load.log", self.stop, self._timeout_s(planned))
        finally:
            # Interrupted or not, what the load generator wrote is the cell's end-to-end figure.
            report = read_json(out / "report.json")
            self.record["end_to_end"] = figures.end_to_end(report, settings.latency_slo)
            if self.record["end_to_end"] is not None:
                self.record["end_to_end"]["report"] = f"{self.folder.name}/load/report.json"
        if report is None:
            self._fail("end to end", _stage_failure(result))
        elif report.get("verdict") in ("INVALID", "INCOMPLETE"):
            reasons = "; ".join(report.get("invalid_reasons") or []) or report.get("verdict")
            self._fail("end to end", f"the load run was {report.get('verdict')}: {reasons}"[:400])


def _export_summary(record: dict) -> dict:
    keep = ("network", "format", "precision", "image_size", "max_batch_size", "calibration", "agreement", "ok")
    return {key: record.get(key) for key in keep if key in record}


def _export_failure(record: dict | None, result: StageResult) -> str:
    """The agreement that failed the export where it says so, else the log's last lines."""
    agreement = (record or {}).get("agreement") or {}
    if record is not None and record.get("ok") is False and agreement.get("top1") is not None:
        return (f"top-1 agreement with FP32 {agreement['top1']:.1%} is below the minimum "
                f"{agreement.get('min_top1', 0):.1%} (on {agreement.get('images')} images)")
    return _stage_failure(result)


def _stage_failure(result: StageResult) -> str:
    if result.returncode == 124:
        return f"did not finish in time (see {result.log.name})"
    return f"exit status {result.returncode}: {result.tail()}"
