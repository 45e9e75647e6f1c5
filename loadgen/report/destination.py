"""Where a run's report files go: the ``--out`` folder, checked before any load is sent; a report.json an unfinished
run left there, kept aside; and a fallback folder when writing into ``--out`` fails at the end anyway, so a run
that measured something never loses it.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ipsbench.loadgen.report.files import REPORT_HTML, STEPS_CSV, write_reports
from ipsbench.loadgen.report.schema import REPORT_JSON, REPORT_MD, UNFINISHED_STATUSES, write_text

logger = logging.getLogger(__name__)

REPORT_FILES = (REPORT_JSON, REPORT_MD, STEPS_CSV, REPORT_HTML)
PROBE_PREFIX = ".ipsbench-write-check-"
FALLBACK_PREFIX = "ipsbench-report-"
"""The fallback folder: a new one named so in the temporary directory (``$TMPDIR``), else in the current one."""


class DestinationError(Exception):
    """The ``--out`` folder cannot take the report; the message names the path and the problem, on one line."""


@dataclass(frozen=True)
class Written:
    """Where the report files went: ``failure`` says why not into ``--out`` (None: they did); both paths are None
    when no folder could take them (report.json then went to standard output)."""

    json_path: Path | None
    markdown_path: Path | None
    failure: str | None = None


def check_out_dir(out_dir: Path) -> None:
    """Raise :class:`DestinationError` unless the report files can be written into ``out_dir``: it, or the nearest
    of its parents that exists (the rest is created at the end), is a folder this process can create files in, and
    no report file's name in it is taken by a folder. Nothing is left behind."""
    existing = out_dir
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = "exists and is not a folder" if existing == out_dir else f"{existing} is not a folder"
        raise DestinationError(f"--out {out_dir}: {problem}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=PROBE_PREFIX):
            pass
    except OSError as error:
        raise DestinationError(f"--out {out_dir}: cannot create files in {existing}: {error.strerror}") from error
    if existing == out_dir:
        for name in REPORT_FILES:
            if (out_dir / name).is_dir():
                raise DestinationError(f"--out {out_dir}: {out_dir / name} is a folder, not a file")


def write_reports_somewhere(report: dict, out_dir: Path) -> Written:
    """Write the report files into ``out_dir``; if that fails, into a fallback folder (named in one error line);
    if no folder takes them, report.json onto standard output."""
    try:
        return Written(*write_reports(report, out_dir))
    except OSError as error:
        failure = f"could not write the report into {out_dir}: {_problem(out_dir, error)}"
    for parent in (None, Path.cwd()):
        try:
            json_path, markdown_path = write_reports(report, Path(tempfile.mkdtemp(prefix=FALLBACK_PREFIX, dir=parent)))
        except OSError as error:
            logger.warning("could not write the report into a new folder in %s either: %s",
                           parent or tempfile.gettempdir(), _reason(error))
            continue
        logger.error("%s; wrote it to %s instead", failure, json_path)
        return Written(json_path, markdown_path, failure)
    logger.error("%s, nor anywhere else; report.json follows on standard output", failure)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return Written(None, None, failure)


def keep_unfinished_report(out_dir: Path) -> Path | None:
    """A report.json left unfinished (status ``incomplete``, or ``running`` from earlier versions) by a run that
    never wrote its final report (killed) is kept aside, marked incomplete, before this run writes its own;
    returns where it went."""
    path = out_dir / REPORT_JSON
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("status") not in UNFINISHED_STATUSES:
        return None
    report["status"] = "incomplete"
    report["incomplete_reason"] = "the run that wrote it ended without finishing its report (killed?)"
    stamp = "".join(c for c in str(report.get("started_at", "")) if c.isalnum()) or "unknown"
    kept = out_dir / f"report.incomplete-{stamp}.json"
    write_text(kept, json.dumps(report, indent=2) + "\n")
    path.unlink()
    logger.warning("%s was left by an unfinished run; kept as %s, marked incomplete", path, kept.name)
    return kept


def _problem(out_dir: Path, error: OSError) -> str:
    """Why writing into ``out_dir`` failed, in words: what became of the folder, or the error and its path."""
    if out_dir.exists() and not out_dir.is_dir():
        return "it is no longer a folder"
    return _reason(error)


def _reason(error: OSError) -> str:
    """An OS error in words, with the path it is about."""
    reason = error.strerror or str(error)
    return f"{reason} ({error.filename})" if error.filename else reason
