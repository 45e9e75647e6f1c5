"""``report.md``: the report document rendered as Markdown (from the JSON, never from live objects)."""

from __future__ import annotations

from loadgen.report.schema import COUNT_FIELDS, PERCENTILES, check_report


def ms(latency_us: int | float | None) -> str:
    """Milliseconds with about three significant digits."""
    if latency_us is None:
        return "–"
    value = latency_us / 1000
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _latency_cell(step: dict, name: str) -> str:
    latency = step["latency_us"]
    if latency is None:
        return "–"
    mark = "*" if name in step.get("unsupported_percentiles", []) else ""
    return ms(latency[name]) + mark


def render_markdown(report: dict) -> str:
    check_report(report)
    settings, model, payload = report["settings"], report["model"], report["payload"]
    verdict = "VALID" if report["valid"] else "INVALID"
    lines = [
        f"# ipsbench-load {report['scenario']}: {model['name']} on {report['target']['address']}",
        "",
        f"**{verdict}**, {report['status']}"
        + (f" ({report['interrupted_by']})" if report.get("interrupted_by") else "")
        + f"; started {report['started_at']}, {report['duration_s']:.1f} s.",
    ]
    for reason in report.get("invalid_reasons", []):
        lines.append(f"- {reason}")
    lines += [
        "",
        f"Model `{model['name']}` input `{model['input']['name']}` {model['input']['datatype']} "
        f"{model['input']['shape']}; payload {payload['encoding']}, {payload['images_per_request']} image(s) per "
        f"request, {payload['distinct_requests']} distinct requests of {payload['request_bytes']:,} bytes "
        f"({payload['source']}).",
        f"Each step: {settings['sweep']['warmup_s']:g} s warm-up (counted, not measured), then the measured window; "
        f"RPC deadline {settings['target']['deadline_s']:g} s; drain bound {settings['sweep']['drain_s']:g} s.",
        "",
        "## Throughput and latency (successful requests, measured window)",
        "",
    ]
    header = ["concurrency", "window s", "requests", "images", "images/s", "requests/s"]
    header += [f"{name} ms" for name, _ in PERCENTILES] + ["max ms", "errors", "valid"]
    rows = []
    for step in report["steps"]:
        latency = step["latency_us"] or {}
        rows.append([
            str(step["concurrency"]), f"{step['window_s']:.2f}", str(step["window_requests"]["ok"]),
            str(step["images_ok"]), rate(step["images_per_s"]), rate(step["requests_per_s"]),
            *[_latency_cell(step, name) for name, _ in PERCENTILES], ms(latency.get("max")),
            str(step["errors_total"]), "yes" if step["valid"] else "**no**",
        ])
    lines += _table(header, rows)
    lines += [
        "",
        "\\* fewer samples than needed to claim this percentile (needed: "
        + ", ".join(f"{name} {n:,}" for name, n in report["method"]["percentile_min_samples"].items())
        + ").",
        "",
        "## Accounting (whole step, warm-up included)",
        "",
    ]
    rows = [[str(step["concurrency"]), *[str(step[name]) for name in COUNT_FIELDS],
             "yes" if step["identity_holds"] else "**no**"] for step in report["steps"]]
    lines += _table(["concurrency", *COUNT_FIELDS, "issued = sum"], rows)
    error_rows = [
        [str(step["concurrency"]), error["outcome"], error["code"], error["message"].replace("|", "\\|"),
         str(error["count"]), f"{error['first_s']:.3f}", f"{error['last_s']:.3f}"]
        for step in report["steps"] for error in step["errors"]
    ]
    if error_rows:
        lines += ["", "## Errors", ""]
        lines += _table(["concurrency", "outcome", "code", "message", "count", "first s", "last s"], error_rows)
    invalid_steps = [step for step in report["steps"] if not step["valid"]]
    if invalid_steps:
        lines += ["", "## Invalid steps", ""]
        lines += [f"- concurrency {step['concurrency']}: {'; '.join(step['invalid_reasons'])}" for step in invalid_steps]
    lines += [
        "",
        "## Method",
        "",
        f"- Latency: {report['method']['latency']}.",
        f"- Throughput: {report['method']['throughput']}.",
        f"- Accounting: {report['method']['accounting']}.",
        "",
    ]
    return "\n".join(lines)
