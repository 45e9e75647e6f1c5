"""One object builds and runs a load test: describe the target, build the requests, run locust, write the report.

Lifecycle: ``run()`` → ``prepare()`` → ``execute()`` → ``finish()``. SIGINT/SIGTERM during ``execute()`` stop
issuing, wait (bounded) for in-flight requests, count the rest ABANDONED, and the report is still written;
a second signal stops waiting.
"""

from __future__ import annotations

# locust patches the process for gevent on import; it must come before grpc.
from locust.env import Environment  # isort: skip

import datetime
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.event
import grpc
from grpc.experimental import gevent as grpc_gevent

from loadgen.client import TargetError, describe_model, model_infer_bytes, open_channel
from loadgen.images import JPEG_QUALITY
from loadgen.payloads import (
    RESIZE_RATIO,
    InputSpec,
    PayloadError,
    Payloads,
    build_fp32_payloads,
    input_spec_from_metadata,
)
from loadgen.recorder import RunRecorder
from loadgen.report.markdown import render_markdown
from loadgen.report.schema import REPORT_MD, build_report, write_report, write_text
from loadgen.scenarios.base import DRAIN_GRACE_S
from loadgen.scenarios.sweep import SweepShape
from loadgen.settings import RunSettings
from loadgen.users import KServeUser, Workload

logger = logging.getLogger(__name__)

RUN_LIMIT_MARGIN_S = 30.0
"""Slack, beyond the planned steps and their drains, before a run that has not ended is stopped."""
TICK_SLACK_S = 2.0
"""Per step: locust asks the shape about once a second, so each step can start and end up to a tick late."""
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
RUN_LIMIT = "run time limit"
"""``interrupted_by`` when the run outlived its planned length by more than the margin (exit code 1)."""

_grpc_gevent_ready = False


def init_grpc_gevent() -> None:
    """Make grpcio cooperate with gevent (required before the first channel of the process)."""
    global _grpc_gevent_ready
    if not _grpc_gevent_ready:
        grpc_gevent.init_gevent()
        _grpc_gevent_ready = True


class SetupError(RuntimeError):
    """The run cannot start: target unreachable, model unsuitable, settings that do not fit the model."""


@dataclass(frozen=True)
class RunResult:
    report: dict
    json_path: Path
    markdown_path: Path
    interrupted_by: str | None

    @property
    def exit_code(self) -> int:
        if self.interrupted_by:
            return SIGNAL_EXIT_CODES.get(self.interrupted_by, 1)
        return 0 if self.report["valid"] else 1


class LoadRun:
    """A sweep against one model on one target, from settings to written report."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.recorder = RunRecorder()
        self.interrupted_by: str | None = None
        self._stopped = gevent.event.Event()
        self._signal_watchers: list = []
        self._previous_handlers: dict[int, object] = {}
        self._environment: Environment | None = None
        self._shape: SweepShape | None = None
        self._channel: grpc.Channel | None = None
        self._model: dict = {}
        self._target: dict = {}
        self._spec: InputSpec | None = None
        self._payloads: Payloads | None = None
        self._started_at = ""
        self._started_ns = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._capture_signals()
        try:
            self.prepare()
            self.execute()
        finally:
            self._restore_signals()
            if self._channel is not None:
                self._channel.close()
        return self.finish()

    def prepare(self) -> None:
        """Ask the target about the model and serialize the requests."""
        init_grpc_gevent()
        target, workload = self.settings.target, self.settings.workload
        with open_channel(target.target) as probe:
            try:
                info = describe_model(probe, target.model, target.model_version)
                spec = input_spec_from_metadata(info.metadata)
            except (TargetError, PayloadError) as error:
                raise SetupError(f"{target.target} model {target.model!r}: {error}") from error
        if info.max_batch_size and workload.images_per_request > info.max_batch_size:
            raise SetupError(
                f"{workload.images_per_request} images per request exceed model {target.model!r}'s "
                f"max_batch_size {info.max_batch_size}"
            )
        logger.info("model %s input %s %s %s", target.model, spec.name, spec.datatype, list(spec.shape))
        self._spec = spec
        try:
            self._payloads = build_fp32_payloads(
                target.model, target.model_version, spec,
                workload.images_per_request, workload.distinct_requests, workload.seed,
            )
        except PayloadError as error:
            raise SetupError(str(error)) from error
        self._target = {"address": target.target, "server": info.server}
        self._model = {
            "name": target.model, "version": target.model_version, "platform": info.metadata.platform,
            "input": spec.to_dict(), "max_batch_size": info.max_batch_size,
        }
        self._channel = open_channel(target.target, self._payloads.request_bytes)

    def execute(self) -> None:
        """Run the scenario in locust until its last step ends, or a signal stops it."""
        sweep = self.settings.sweep
        self._shape = SweepShape(
            concurrency=sweep.concurrency, warmup_s=sweep.warmup_s, window_s=sweep.window_s,
            recorder=self.recorder, drain_s=sweep.drain_s,
        )
        workload = Workload(
            infer=model_infer_bytes(self._channel),
            requests=self._payloads.requests,
            images_per_request=self._payloads.images_per_request,
            deadline_s=self.settings.target.deadline_s,
        )
        user_class = type("KServeUser", (KServeUser,), {"workload": workload, "abstract": False})
        self._environment = Environment(
            user_classes=[user_class], shape_class=self._shape, stop_timeout=sweep.drain_s, catch_exceptions=True,
        )
        self._environment.events.test_stop.add_listener(lambda **_: self._stopped.set())
        runner = self._environment.create_local_runner()
        self._started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._started_ns = time.perf_counter_ns()
        if self.interrupted_by is None:
            runner.start_shape()
            if not self._stopped.wait(timeout=self._run_limit_s()):
                logger.error("run did not end within %.0f s; stopping it", self._run_limit_s())
                self.interrupted_by = RUN_LIMIT
                self._shape.interrupt()
                runner.stop()
            self._stopped.wait(timeout=sweep.drain_s + DRAIN_GRACE_S)
        runner.quit()

    def finish(self) -> RunResult:
        """Write report.json, then report.md rendered from it."""
        duration_s = (time.perf_counter_ns() - self._started_ns) / 1e9 if self._started_ns else 0.0
        report = build_report(
            steps=self.recorder.steps,
            settings=self.settings.to_dict(),
            target=self._target,
            model=self._model,
            payload=self._payload_description(),
            scenario="sweep",
            started_at=self._started_at,
            duration_s=duration_s,
            interrupted_by=self.interrupted_by,
            max_error_rate=self.settings.validity.max_error_rate,
        )
        out_dir = self.settings.out_dir
        json_path = write_report(report, out_dir)
        markdown_path = out_dir / REPORT_MD
        write_text(markdown_path, render_markdown(report))
        return RunResult(report, json_path, markdown_path, self.interrupted_by)

    # --- helpers --------------------------------------------------------------------------------------------

    def _run_limit_s(self) -> float:
        sweep = self.settings.sweep
        per_step = sweep.warmup_s + sweep.window_s + sweep.drain_s + DRAIN_GRACE_S + TICK_SLACK_S
        return per_step * len(sweep.concurrency) + RUN_LIMIT_MARGIN_S

    def _payload_description(self) -> dict:
        workload = self.settings.workload
        described = {"encoding": workload.payload, "seed": workload.seed}
        if self._payloads is not None:
            crop_h, crop_w = self._spec.crop_hw
            described.update(self._payloads.to_dict())
            described["source"] = (
                f"synthetic ImageNet-style JPEGs, quality {JPEG_QUALITY}; shorter side resized to "
                f"{round(crop_h * RESIZE_RATIO)}, centre-cropped to {crop_h}x{crop_w}, ImageNet mean/std, FP32"
            )
        return described

    def _capture_signals(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.getsignal(signum)
            self._signal_watchers.append(gevent.signal_handler(signum, self._on_signal, signum))

    def _restore_signals(self) -> None:
        for watcher in self._signal_watchers:
            watcher.cancel()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._signal_watchers.clear()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        runner = self._environment.runner if self._environment is not None else None
        if self.interrupted_by is not None:
            logger.warning("%s again: not waiting for in-flight requests", name)
            if runner is not None:
                runner.user_greenlets.kill(block=False)
            return
        self.interrupted_by = name
        logger.warning("%s: stopping; waiting up to %g s for in-flight requests", name, self.settings.sweep.drain_s)
        if self._shape is not None:
            self._shape.interrupt()
        if runner is not None:
            gevent.spawn(runner.stop)
