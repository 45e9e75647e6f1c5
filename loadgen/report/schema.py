"""The versioned report document: its version and vocabulary, checked, written and read back.

The document is built by :mod:`ipsbench.loadgen.report.build` (steps by :mod:`ipsbench.loadgen.report.steps`); every
rendering (Markdown, HTML, CSV, the console, compare) reads it, never live objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 5
"""2: open-loop (rate) steps, workers of distributed runs, warnings. 3: stability windows, the client's own
CPU, SLO objectives and the search, phases, the engine bench, payload modes, verdict, running/incomplete; later
added to 3, both optional for readers (None when absent): ``headline`` (the run's one figure where its scenario
has one, e.g. single-stream's p90) and ``request_log`` (where the per-request logs went). 4: the ``unreachable``
count (UNAVAILABLE from the transport: no server answered), so ``rejected`` is the server's admission control
alone; the payload's ``images_read``, ``skipped_images`` and ``skipped_image_examples``; later added to 4, optional
for readers: the payload's ``transfer`` (``grpc`` or ``system_shared_memory``) and ``shared_memory`` (its regions and
bytes, or null); ``simulated`` (``backend``, ``device``, ``label``: the target served the model with the
device-time model backend, so no device computed and every rendering heads the report with ``label``) and the
model's ``backend`` (from its ModelConfig; None where the target has none). A partial report (written while the run
goes on) has status ``incomplete``, an ``incomplete_reason``, verdict ``INCOMPLETE`` (its SLO's too) and ``valid`` /
``stable`` null: the run-level judgements are stated by the final report only.

5: verdicts a planner can sign. Verdict ``INCONCLUSIVE`` (exit 4: an objective's percentile lacked the samples to
be judged and nothing else failed), each step's ``slo.inconclusive`` and ``slo.settle_duration_s``, the SLO block's
``inconclusive_steps`` and ``settle_duration_s`` (the ``--duration`` that would hold the samples); each objective's
``rule`` (``min-samples`` or ``early-stopping``), ``lower_bound`` and, early stopping, ``over_target``; each step's
``window_grown`` (its window measured past ``--duration`` to hold its objectives' samples). Open loop:
``latency_scheduled_us`` (every scheduled arrival's latency, those never sent or never answered counted as misses
at their window-end bound: ``censored``, and ``lower_bound`` naming the figures that are lower bounds), and in
``open_loop`` the ``censored`` count and ``unsent_cause`` (``client``, ``server_saturated`` or null); a full
in-flight cap no longer makes a step invalid. Each step's ``latency_histogram`` (None without a success): the
successes' latency histogram behind ``latency_us`` (microseconds, 3 significant digits) as the hdrhistogram
library's ``encode()`` writes it (compressed, base64 text), so ``compare --fail-on`` can resample it. Each step's
``bottleneck`` (``resource``: engine, host_cpu, load_generator, server_frontend, none, or null when the server was
not scraped; ``figures``; ``sentence``) and, in its ``server`` block, the server's front-end time (``pre_queue_ms``,
``post_compute_ms``, ``frontend_ms``), ``request_p50_ms`` / ``request_p99_ms``, ``instances``, ``engine_busy``,
``processes`` and ``load_host``. Stability blocks name their ``metrics``, ``judged_metrics`` and
``unjudged_metrics`` (why not), and each window its ``requests``, ``p50_us`` .. ``p99_us`` and ``mean_us`` beside
``images_per_s``. Scenario ``ui`` writes reports too (one step per test started in the web UI)."""
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
VERDICT_EXIT_CODES = {"PASS": 0, "FAIL": 1, "UNSTABLE": 1, "INVALID": 2, "INCONCLUSIVE": 4}
"""Exit code of a run that ended on its own, by its verdict."""
INCOMPLETE = "INCOMPLETE"
"""The verdict of a partial report: the run had not ended, so it reached none."""
UNFINISHED_STATUSES = ("incomplete", "running")
"""Statuses of a report.json whose run never wrote its final report (``running``: what earlier versions wrote)."""
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
COUNT_FIELDS = ("issued", "ok", "rejected", "unreachable", "failed", "deadline", "cancelled", "abandoned")


def is_open_loop(step: dict) -> bool:
    """Whether a step of the document was open loop (rate, trace, an slo search over rates): requests went out at
    an arrival process's intended times, and the step carries their send accounting."""
    return step.get("open_loop") is not None


def has_open_loop_steps(report: dict) -> bool:
    return any(is_open_loop(step) for step in report["steps"])


def step_load(entry: dict) -> str:
    """How a step loaded the target, in words: ``concurrency 4`` or ``20 requests/s``."""
    if is_open_loop(entry) or entry.get("target_rate_per_s") is not None:
        return f"{entry['target_rate_per_s']:g} requests/s"
    return f"concurrency {entry['concurrency']}"



REQUIRED_KEYS = ("schema_version", "scenario", "status", "valid", "settings", "target", "model", "payload", "steps")
REQUIRED_STEP_KEYS = (*COUNT_FIELDS, "concurrency", "window_s", "warmup_s", "images_ok", "images_per_s",
                      "requests_per_s", "latency_us", "errors", "valid")


def check_report(report: dict) -> dict:
    """Raise ValueError unless ``report`` is a report of this schema version; return it."""
    if report.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported report schema_version {report.get('schema_version')!r}")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    missing += [f"steps[{i}].{key}" for i, step in enumerate(report["steps"]) for key in REQUIRED_STEP_KEYS
                if key not in step]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}")
    return report


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by others (0644)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def write_report(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_JSON
    write_text(path, json.dumps(check_report(report), indent=2) + "\n")
    return path


def read_report(path: Path) -> dict:
    return check_report(json.loads(Path(path).read_text(encoding="utf-8")))
