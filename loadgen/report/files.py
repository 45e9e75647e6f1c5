"""The report files of a run: ``report.json`` first (the source of truth), then what is rendered from it."""

from __future__ import annotations

from pathlib import Path

from ipsbench.loadgen.report.html import render_html
from ipsbench.loadgen.report.markdown import render_markdown
from ipsbench.loadgen.report.schema import REPORT_MD, read_report, write_report, write_text
from ipsbench.loadgen.report.steps_csv import render_steps_csv

STEPS_CSV = "steps.csv"
REPORT_HTML = "report.html"


def write_reports(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write report.json, report.md, steps.csv and report.html into ``out_dir``; return the JSON and Markdown
    paths. Every file is rendered from the JSON as written, so they cannot disagree with it."""
    json_path = write_report(report, out_dir)
    report = read_report(json_path)
    markdown_path = out_dir / REPORT_MD
    write_text(markdown_path, render_markdown(report))
    write_text(out_dir / STEPS_CSV, render_steps_csv(report))
    write_text(out_dir / REPORT_HTML, render_html(report))
    return json_path, markdown_path
