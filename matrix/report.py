"""The matrix's report files: ``matrix.json`` (the source of truth), ``matrix.md``, a self-contained
``matrix.html`` (no scripts, nothing fetched) and ``matrix.csv`` (one row per cell and batch size)."""

from __future__ import annotations

import csv
import html
import io
import json
import tempfile
from pathlib import Path

from ipsbench.loadgen.report.cells import Flag, TableData, duration_words
from ipsbench.loadgen.report.html import CONTENT_SECURITY_POLICY, STYLE
from ipsbench.loadgen.report.schema import write_text
from ipsbench.matrix.tables import all_tables

MATRIX_JSON = "matrix.json"
MATRIX_MD = "matrix.md"
MATRIX_HTML = "matrix.html"
MATRIX_CSV = "matrix.csv"
CSV_COLUMNS = (
    "network", "precision", "format", "device", "status", "batch_size", "engine_images_per_s", "engine_p50_ms",
    "engine_p99_ms", "engine_images_per_joule", "engine_joules_per_image", "engine_power_w", "train_images_per_s",
    "end_to_end_images_per_s", "end_to_end_p50_ms", "end_to_end_p99_ms", "end_to_end_load", "end_to_end_objective",
    "end_to_end_over_engine", "top1_agreement", "top5_agreement", "max_abs_logit_diff",
    "dollars_per_million_images", "kwh_per_million_images",
)


def title(document: dict) -> str:
    cells = document["cells"]
    devices = sorted({(cell.get("engine") or {}).get("device_name") or cell["device"] for cell in cells})
    networks, precisions = len(document["networks"]), len(document["precisions"])
    return (f"ipsbench matrix: {networks} network{'s' * (networks != 1)} × {precisions} "
            f"precision{'s' * (precisions != 1)}"
            + (f" on {', '.join(devices)}" if devices else ""))


def summary_lines(document: dict) -> list[str]:
    cells = document["cells"]
    ok = sum(cell["status"] == "ok" for cell in cells)
    lines = [f"{ok} of {len(cells)} cells measured in {duration_words(document['duration_s'])}, "
             f"started {document['started_at']}; {document['status']}"
             + (f" (stopped by {document['interrupted_by']})" if document.get("interrupted_by") else "") + "."]
    caps = document["capabilities"]
    lines.append(f"This machine: CUDA {'yes' if caps['cuda'] else 'no'}, TensorRT {'yes' if caps['tensorrt'] else 'no'}"
                 f"; end to end by ipsbench-load {document['end_to_end_method']['scenario']} against "
                 f"{document['end_to_end_method']['target']}.")
    return lines


def _markdown_cell(cell: str) -> str:
    text = str(cell).replace("|", "\\|").replace("\n", "<br>")
    return f"**{text}**" if isinstance(cell, Flag) else text


def _markdown_table(table: TableData) -> list[str]:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += table.notes
    return lines


def render_markdown(document: dict) -> str:
    lines = [f"# {title(document)}", "", *summary_lines(document), ""]
    for _table_id, heading, table in all_tables(document):
        lines += [f"## {heading}", "", *_markdown_table(table), ""]
    lines.append("Each cell's own load report (Markdown, HTML, CSV) is in its folder under `cells/`.")
    return "\n".join(lines) + "\n"


def _html_cell(cell: str) -> str:
    text = "<br>".join(html.escape(line) for line in str(cell).split("\n"))
    return f'<td class="flag">{text}</td>' if isinstance(cell, Flag) else f"<td>{text}</td>"


def _html_table(table: TableData, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.header)
    body = "".join("<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in table.notes)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}'


def render_html(document: dict) -> str:
    sections = "".join(
        f'<section id="{table_id}"><h2>{html.escape(heading)}</h2>{_html_table(table, table_id + "-table")}</section>'
        for table_id, heading, table in all_tables(document))
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(document))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>{html.escape(title(document))}</title><style>{STYLE} td {{ vertical-align: top; }}</style></head>"
        f"<body><h1>{html.escape(title(document))}</h1>{summary}{sections}</body></html>\n"
    )


def csv_rows(document: dict) -> list[dict]:
    """One row per cell and batch size (one row for a cell without engine rows)."""
    rows = []
    for cell in document["cells"]:
        engine = {row["batch_size"]: row for row in (cell.get("engine") or {}).get("rows") or []}
        train = {row["batch_size"]: row for row in (cell.get("train") or {}).get("rows") or []}
        e2e = cell.get("end_to_end") or {}
        agreement = (cell.get("export") or {}).get("agreement") or {}
        cost = cell.get("cost") or {}
        shared = {
            "network": cell["network"], "precision": cell["precision"], "format": cell["format"],
            "device": cell["device"], "status": cell["status"],
            "end_to_end_images_per_s": e2e.get("images_per_s"), "end_to_end_p50_ms": e2e.get("p50_ms"),
            "end_to_end_p99_ms": e2e.get("p99_ms"), "end_to_end_load": e2e.get("load"),
            "end_to_end_objective": e2e.get("objective"),
            "end_to_end_over_engine": (cell.get("ratio") or {}).get("value"),
            "top1_agreement": agreement.get("top1"), "top5_agreement": agreement.get("top5"),
            "max_abs_logit_diff": agreement.get("max_abs_logit_diff"),
            "dollars_per_million_images": cost.get("dollars_per_million_images"),
            "kwh_per_million_images": cost.get("kwh_per_million_images"),
        }
        for batch in sorted(set(engine) | set(train)) or [None]:
            row = engine.get(batch) or {}
            latency = row.get("latency_ms") or {}
            rows.append({**shared, "batch_size": batch, "engine_images_per_s": row.get("images_per_s"),
                         "engine_p50_ms": latency.get("p50"), "engine_p99_ms": latency.get("p99"),
                         "engine_images_per_joule": row.get("images_per_joule"),
                         "engine_joules_per_image": row.get("joules_per_image"), "engine_power_w": row.get("power_w"),
                         "train_images_per_s": (train.get(batch) or {}).get("images_per_s")})
    return rows


def render_csv(document: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(document))
    return buffer.getvalue()


def write_matrix_reports(document: dict, out_dir: Path) -> Path:
    """The four files into ``out_dir`` (JSON first, so a rendering that fails loses nothing); into a new folder in
    the temporary directory when ``out_dir`` cannot take them. Returns the JSON's path."""
    for folder in (out_dir, None):
        try:
            target = out_dir if folder is not None else Path(tempfile.mkdtemp(prefix="ipsbench-matrix-"))
            target.mkdir(parents=True, exist_ok=True)
            write_text(target / MATRIX_JSON, json.dumps(document, indent=2) + "\n")
            write_text(target / MATRIX_MD, render_markdown(document))
            write_text(target / MATRIX_HTML, render_html(document))
            write_text(target / MATRIX_CSV, render_csv(document))
            return target / MATRIX_JSON
        except OSError as error:
            if folder is None:
                raise
            print(f"error: could not write the matrix report into {out_dir}: {error}; writing it elsewhere")
    raise AssertionError("unreachable")


def console_summary(document: dict) -> str:
    """The P40 table for a terminal: a line per cell, engine images/s per batch size, end to end and the ratio."""
    batches = document["batch_sizes"]
    header = f"{'network':<14} {'precision':<9} " + " ".join(f"{'b' + str(b):>9}" for b in batches)
    header += f" {'end to end':>11} {'÷ engine':>8}"
    lines = [title(document), "engine images/s per batch size; end to end at "
             + (document["end_to_end_method"].get("objective") or "the best step"), header, "─" * len(header)]
    for cell in document["cells"]:
        engine = {row["batch_size"]: row for row in (cell.get("engine") or {}).get("rows") or []}
        e2e = (cell.get("end_to_end") or {}).get("images_per_s")
        ratio = (cell.get("ratio") or {}).get("value")
        line = f"{cell['network']:<14} {cell['precision']:<9} " + " ".join(
            f"{engine[b]['images_per_s']:>9,.1f}" if b in engine else f"{'–':>9}" for b in batches)
        line += f" {e2e:>11,.1f}" if e2e else f" {cell['status'].upper() if cell['status'] != 'ok' else '–':>11}"
        line += f" {ratio:>8.2f}" if ratio else f" {'–':>8}"
        lines.append(line)
    return "\n".join(lines)
