"""``ipsbench-load compare A.json B.json [--out FILE]``: what changed from run A to run B, step by step.

Steps are matched by what they loaded (concurrency or rate, and phase); for each matching pair the table gives
images/sec, p50, p99 and error rate in both runs with the change, absolute and relative; verdict changes (valid,
run verdict, SLO, per-step validity and stability) are listed under it. Reports of a schema version this
version cannot read are refused with exit code 2.

With ``--fail-on`` the comparison is also a regression gate (:mod:`ipsbench.loadgen.report.regression`): each
matched step is judged from bootstrap confidence intervals of the changes, the gate's verdict is printed under the
comparison (and, with ``--summary FILE``, written as Markdown a CI job can post), and the exit code is the gate's:
0 pass (within noise and improvements included), 1 regression, 2 error (an unreadable report, a bad ``--fail-on``,
no matched step, a clause the reports cannot judge). Output files are checked before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ipsbench.loadgen.report.bootstrap import (
    CONFIDENCE_RANGE,
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    RESAMPLES_RANGE,
    Resampler,
)
from ipsbench.loadgen.report.cells import DASH, ms, percent, rate, run_verdict, signed
from ipsbench.loadgen.report.regression import FailOnError, judge, parse_fail_on, render_gate, render_summary
from ipsbench.loadgen.report.schema import SCHEMA_VERSION, step_load, write_text
from ipsbench.loadgen.report.sentences import simulated_words

OLDEST_READABLE_SCHEMA = 2
"""Older reports lack the fields compared here."""
EXIT_UNREADABLE = 2
EXIT_ERROR = 2
MAX_JUDGED_STEPS = 1024
"""Matched steps the gate judges at most (each costs its clauses' resamples); a run has at most a few hundred."""


class UnreadableReport(Exception):
    """A report file that cannot be compared: missing, not JSON, or of a schema version this one cannot read."""


def read_for_compare(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UnreadableReport(f"{path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise UnreadableReport(f"{path}: not JSON ({error})") from None
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(version, int) or not OLDEST_READABLE_SCHEMA <= version <= SCHEMA_VERSION:
        raise UnreadableReport(
            f"{path}: report schema_version {version!r} is not readable here "
            f"(this ipsbench-load reads {OLDEST_READABLE_SCHEMA} to {SCHEMA_VERSION})"
        )
    if not isinstance(report.get("steps"), list):
        raise UnreadableReport(f"{path}: report has no steps")
    for number, step in enumerate(report["steps"]):
        try:
            hash(step_key(step))
        except (AttributeError, TypeError):
            raise UnreadableReport(f"{path}: steps[{number}] is not a step (an object with a scalar "
                                   "concurrency, target_rate_per_s and phase)") from None
    return report


def step_key(step: dict) -> tuple:
    """What a step loaded the target with; steps of two runs with the same key are compared."""
    return (step.get("target_rate_per_s"), step.get("concurrency"), step.get("phase"))


def _delta(before: float | None, after: float | None, digits: int = 1) -> tuple[str, str]:
    """The change as ``+12.3`` and ``+4.5%`` (``–`` where a side is missing or the base is zero)."""
    if before is None or after is None:
        return DASH, DASH
    relative = f"{(after - before) / before * 100:+.1f}%" if before else DASH
    return signed(after - before, digits), relative


def _latency_ms(step: dict, name: str) -> float | None:
    latency = step.get("latency_us") or {}
    return None if latency.get(name) is None else latency[name] / 1000


def _ms_cell(value: float | None) -> str:
    return DASH if value is None else ms(value * 1000)


def _stability(step: dict) -> str:
    stability = step.get("stability")
    if not stability:
        return DASH
    return "stable" if stability.get("stable") else "UNSTABLE"


def matched_steps(a: dict, b: dict) -> list[tuple[dict, dict]]:
    """The steps both runs ran, in A's order, as (A's, B's) pairs."""
    steps_b = {step_key(step): step for step in b["steps"]}
    return [(step, steps_b[step_key(step)]) for step in a["steps"] if step_key(step) in steps_b]


def delta_rows(a: dict, b: dict) -> tuple[list[list[str]], list[str], list[str]]:
    """Rows for the steps both runs have, and the loads only A or only B ran."""
    steps_b = {step_key(step): step for step in b["steps"]}
    keys_a = {step_key(step) for step in a["steps"]}
    rows = []
    for step_a in a["steps"]:
        step_b = steps_b.get(step_key(step_a))
        if step_b is None:
            continue
        row = [step_load(step_a) + (f" ({step_a['phase']})" if step_a.get("phase") else "")]
        row += [rate(step_a.get("images_per_s")), rate(step_b.get("images_per_s")),
                *_delta(step_a.get("images_per_s"), step_b.get("images_per_s"))]
        for name in ("p50", "p99"):
            before, after = _latency_ms(step_a, name), _latency_ms(step_b, name)
            row += [_ms_cell(before), _ms_cell(after), *_delta(before, after, 2)]
        error_a, error_b = step_a.get("error_rate"), step_b.get("error_rate")
        points = DASH if error_a is None or error_b is None else f"{(error_b - error_a) * 100:+.2f} pp"
        row += [percent(error_a, 2), percent(error_b, 2), points]
        rows.append(row)
    only_a = [step_load(step) for step in a["steps"] if step_key(step) not in steps_b]
    only_b = [step_load(step) for step in b["steps"] if step_key(step) not in keys_a]
    return rows, only_a, only_b


HEADER = ["load", "images/s A", "images/s B", "Δ images/s", "Δ%", "p50 ms A", "p50 ms B", "Δ p50 ms", "Δ%",
          "p99 ms A", "p99 ms B", "Δ p99 ms", "Δ%", "errors A", "errors B", "Δ errors"]


def verdict_changes(a: dict, b: dict) -> list[str]:
    """Each judgement that differs between the runs, as ``what: A → B``."""
    changes = []

    def note(what: str, before, after) -> None:
        if before != after:
            changes.append(f"{what}: {before} → {after}")

    note("run", "VALID" if a.get("valid") else "INVALID", "VALID" if b.get("valid") else "INVALID")
    note("verdict", run_verdict(a), run_verdict(b))
    note("SLO", (a.get("slo") or {}).get("verdict", "none"), (b.get("slo") or {}).get("verdict", "none"))
    note("status", a.get("status"), b.get("status"))
    steps_b = {step_key(step): step for step in b["steps"]}
    for step_a in a["steps"]:
        step_b = steps_b.get(step_key(step_a))
        if step_b is None:
            continue
        load = step_load(step_a)
        note(f"{load} valid", "yes" if step_a.get("valid") else "no", "yes" if step_b.get("valid") else "no")
        note(f"{load} stability", _stability(step_a), _stability(step_b))
        note(f"{load} client-bound", bool((step_a.get("client") or {}).get("client_bound")),
             bool((step_b.get("client") or {}).get("client_bound")))
    return changes


def _describe(label: str, path: Path, report: dict) -> str:
    model = (report.get("model") or {}).get("name", DASH)
    target = (report.get("target") or {}).get("address", DASH)
    simulated = f" **{words}**," if (words := simulated_words(report)) else ""
    return (f"- **{label}**: `{path}`:{simulated} {report.get('scenario')} of `{model}` on {target}, started "
            f"{report.get('started_at')}, {run_verdict(report)} (schema {report['schema_version']})")


def render_comparison(a: dict, b: dict, path_a: Path, path_b: Path) -> str:
    rows, only_a, only_b = delta_rows(a, b)
    lines = ["# ipsbench-load compare", "", _describe("A", path_a, a), _describe("B", path_b, b)]
    for what, get in (("scenario", lambda r: r.get("scenario")),
                      ("model", lambda r: (r.get("model") or {}).get("name")),
                      ("images per request", lambda r: (r.get("payload") or {}).get("images_per_request")),
                      ("device", lambda r: simulated_words(r) or "a real engine")):
        if get(a) != get(b):
            lines.append(f"- warning: the runs differ in {what} ({get(a)} vs {get(b)}); deltas compare unlike runs")
    lines += ["", "## Steps (B − A; latency of successful requests, errors as a share of issued requests)", ""]
    if rows:
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        lines.append("No step of A matches a step of B (same concurrency or rate).")
    if only_a:
        lines += ["", f"Only in A: {', '.join(only_a)}."]
    if only_b:
        lines += ["", f"Only in B: {', '.join(only_b)}."]
    changes = verdict_changes(a, b)
    lines += ["", "## Verdict changes", ""]
    lines += [f"- {change}" for change in changes] if changes else ["None: every judgement is the same in both runs."]
    return "\n".join([*lines, ""])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsbench-load compare", description="Differences between two report.json files, step by step (B − A); "
        "with --fail-on, a regression gate judged from the noise of both runs.",
        epilog="Exit codes: 0 compared (with --fail-on: no regression; changes within noise and improvements pass); "
               "1 a regression; 2 an unreadable report, a bad option or output path, or with --fail-on no matched "
               "step or a clause the reports cannot judge.")
    parser.add_argument("a", type=Path, metavar="A.json", help="the baseline report")
    parser.add_argument("b", type=Path, metavar="B.json", help="the report compared with it")
    parser.add_argument("--out", type=Path, help="also write the comparison as Markdown to this file")
    parser.add_argument("--fail-on", metavar="CLAUSES",
                        help="comma-separated METRIC<-X%% / METRIC>+X%% clauses that fail the comparison, e.g. "
                             "\"images_per_s<-5%%,p99>+10%%\"; metrics images_per_s, requests_per_s, p50, p90, p95, "
                             "p99, p99.9, mean (also in ms, us, s), error_rate (in pp)")
    parser.add_argument("--summary", type=Path, metavar="FILE",
                        help="with --fail-on: write the gate's verdict and a table per step as Markdown to FILE")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help=f"with --fail-on: the intervals' confidence, in [{CONFIDENCE_RANGE[0]:g}, "
                             f"{CONFIDENCE_RANGE[1]:g}] (default {DEFAULT_CONFIDENCE:g})")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"with --fail-on: bootstrap resamples of each run, in [{RESAMPLES_RANGE[0]}, "
                             f"{RESAMPLES_RANGE[1]}] (default {DEFAULT_RESAMPLES})")
    return parser


class OutputPathError(Exception):
    """An output file that cannot be written; the message names the option and the path."""


def check_output_file(path: Path, option: str) -> None:
    """Raise :class:`OutputPathError` unless ``path`` can be written: not a folder, in an existing folder this
    process can write to."""
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder, not a file")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"{option} {path}: not writable")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison (and write it with ``--out``); with ``--fail-on``, the gate's exit code; else 0 when both
    reports were read, 2 when one was not."""
    args = build_parser().parse_args(argv)
    try:
        clauses = None if args.fail_on is None else parse_fail_on(args.fail_on)
        resampler = Resampler(args.resamples, args.confidence)
        if args.summary is not None and clauses is None:
            raise ValueError("--summary needs --fail-on (the gate's verdict is what it summarizes)")
        outputs = [(path, option) for path, option in ((args.out, "--out"), (args.summary, "--summary")) if path]
        if args.out is not None and args.summary is not None and args.out.resolve() == args.summary.resolve():
            raise ValueError("--out and --summary name the same file")
        for path, option in outputs:
            check_output_file(path, option)
        a, b = read_for_compare(args.a), read_for_compare(args.b)
    except (FailOnError, OutputPathError, UnreadableReport, ValueError) as error:
        print(f"ipsbench-load compare: {error}", file=sys.stderr)
        return EXIT_ERROR
    text = render_comparison(a, b, args.a, args.b)
    code = 0
    summary = None
    if clauses is not None:
        pairs = matched_steps(a, b)
        if not pairs or len(pairs) > MAX_JUDGED_STEPS:
            problem = (f"no step of {args.a} matches a step of {args.b} (same concurrency or rate, and phase): "
                       "nothing to judge" if not pairs else
                       f"{len(pairs)} matched steps; the gate judges at most {MAX_JUDGED_STEPS}")
            print(f"ipsbench-load compare: --fail-on: {problem}", file=sys.stderr)
            return EXIT_ERROR
        result = judge(pairs, clauses, resampler)
        text += "\n".join(["", *render_gate(result, clauses), ""])
        summary = render_summary(result, clauses, str(args.a), str(args.b))
        code = result.exit_code
    sys.stdout.write(text)
    if args.out is not None:
        write_text(args.out, text)
    if args.summary is not None:
        write_text(args.summary, summary)
    return code
