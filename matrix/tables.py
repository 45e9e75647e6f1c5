"""The matrix document as tables of plain strings (:class:`~ipsbench.loadgen.report.cells.TableData`), rendered
alike in Markdown and HTML; a cell holding several figures has one per line."""

from __future__ import annotations

from ipsbench.loadgen.report.cells import DASH, Flag, TableData, number, rate

FAILED_STATUSES = ("failed", "interrupted", "not_run")


def _engine_rows_by_batch(record: dict, key: str = "engine") -> dict[int, dict]:
    return {row["batch_size"]: row for row in (record.get(key) or {}).get("rows") or []}


def _ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _engine_cell(row: dict | None) -> str:
    if row is None:
        return DASH
    latency = row.get("latency_ms") or {}
    lines = [f"{rate(row['images_per_s'])} img/s", f"p50 {_ms(latency.get('p50'))} / p99 {_ms(latency.get('p99'))} ms"]
    if row.get("images_per_joule") is not None:
        lines.append(f"{number(row['images_per_joule'])} img/s/W")
    return "\n".join(lines)


def _engine_label(record: dict) -> str:
    engine = record.get("engine") or {}
    device = engine.get("device_name") or record["device"]
    return f"{record['format']} on {record['device']}" + (f"\n{device}" if engine.get("device_name") else "")


def _end_to_end_cell(record: dict) -> str:
    e2e = record.get("end_to_end") or {}
    if e2e.get("images_per_s") is None:
        if record["status"] in FAILED_STATUSES and not e2e:
            return Flag(record["status"].upper().replace("_", " "))
        return Flag(e2e.get("why_none") or "not measured")
    lines = [f"{rate(e2e['images_per_s'])} img/s", f"p50 {_ms(e2e.get('p50_ms'))} / p99 {_ms(e2e.get('p99_ms'))} ms"]
    if e2e.get("load"):
        lines.append(e2e["load"])
    return "\n".join(lines)


def _ratio_cell(record: dict) -> str:
    ratio = record.get("ratio")
    if not ratio:
        return DASH
    return f"{ratio['value']:.2f}\n(vs batch {ratio['engine_batch_size']})"


def p40_table(document: dict) -> TableData:
    """Rows network × precision; a column per batch size with the engine's images/s, p50/p99 and images/s/W; the
    end-to-end figure beside them and its ratio to the engine's best."""
    batches = document["batch_sizes"]
    objective = document["end_to_end_method"].get("objective")
    e2e_header = f"end to end ({objective})" if objective else "end to end (best step)"
    header = ["network", "precision", "engine", *[f"batch {b}" for b in batches], e2e_header, "end to end ÷ engine"]
    rows = []
    for record in document["cells"]:
        by_batch = _engine_rows_by_batch(record)
        rows.append([record["network"], record["precision"], _engine_label(record),
                     *[_engine_cell(by_batch.get(b)) for b in batches], _end_to_end_cell(record), _ratio_cell(record)])
    notes = [
        "Engine: the served engine's forward pass alone, in process, one whole batch per call (host-device copies "
        "included): the vendor-sheet figure. End to end: images/s answered over gRPC to ipsbench-load, at the "
        + (f"highest load whose step met {objective}" if objective else "step with the most images/s")
        + ": what clients get. The ratio is end to end ÷ the engine's best batch size.",
        "img/s/W: images per joule of GPU energy during the timed loop (blank without NVML).",
    ]
    return TableData(header, rows, notes)


def training_sentence(document: dict) -> str | None:
    """What inference, training and end-to-end figures each mean, in the matrix's own numbers."""
    for record in document["cells"]:
        engine, train = _engine_rows_by_batch(record), _engine_rows_by_batch(record, "train")
        shared = sorted(set(engine) & set(train))
        if not shared:
            continue
        batch = shared[-1]
        infer_rate, train_rate = engine[batch]["images_per_s"], train[batch]["images_per_s"]
        e2e = (record.get("end_to_end") or {}).get("images_per_s")
        tail = (f"nor that your own images will be classified that fast end to end ({rate(e2e)} images/s through "
                "the server)" if e2e else "nor that your own images will be classified that fast end to end")
        return (f"{rate(infer_rate)} images/s of {record['network']} inference (engine, batch {batch}, "
                f"{record['precision']}) does not mean {rate(infer_rate)} images/s of training "
                f"({rate(train_rate)} measured: forward + backward + optimizer step at batch {batch}), {tail}.")
    return None


def training_table(document: dict) -> TableData | None:
    batches = document["batch_sizes"]
    rows = []
    for record in document["cells"]:
        train = _engine_rows_by_batch(record, "train")
        if not train:
            continue
        engine = _engine_rows_by_batch(record)
        cells = []
        for batch in batches:
            row = train.get(batch)
            if row is None:
                cells.append(DASH)
                continue
            lines = [f"train {rate(row['images_per_s'])} img/s"]
            if batch in engine:
                lines.append(f"infer {rate(engine[batch]['images_per_s'])} img/s")
                lines.append(f"train ÷ infer {row['images_per_s'] / engine[batch]['images_per_s']:.2f}")
            cells.append("\n".join(lines))
        precision = (record.get("train") or {}).get("precision") or record["precision"]
        rows.append([record["network"], record["precision"], precision, *cells])
    if not rows:
        return None
    notes = ["Training: forward + backward + SGD step of the PyTorch network per batch, on the entry's device "
             "(mixed precision for FP16 on CUDA). Inference: the served engine's forward pass."]
    if sentence := training_sentence(document):
        notes.append(sentence)
    return TableData(["network", "precision", "trained in", *[f"batch {b}" for b in batches]], rows, notes)


def accuracy_table(document: dict) -> TableData | None:
    rows = []
    for record in document["cells"]:
        export = record.get("export") or {}
        agreement = export.get("agreement")
        if not agreement or record["precision"] == "fp32":
            continue
        calibration = export.get("calibration") or {}
        calibrated = (f"{calibration.get('images')} {calibration.get('source')} images"
                      if calibration.get("source") else DASH)
        top1 = agreement.get("top1")
        low = top1 is not None and agreement.get("min_top1") is not None and top1 < agreement["min_top1"]
        top1_cell = DASH if top1 is None else f"{top1:.1%}"
        rows.append([record["network"], record["precision"], Flag(top1_cell) if low else top1_cell,
                     DASH if agreement.get("top5") is None else f"{agreement['top5']:.1%}",
                     number(agreement.get("max_abs_logit_diff"), 3), str(agreement.get("images", DASH)),
                     DASH if agreement.get("min_top1") is None else f"{agreement['min_top1']:.0%}", calibrated])
    if not rows:
        return None
    return TableData(
        ["network", "precision", "top-1 agreement", "top-5 agreement", "max |Δlogit|", "images", "minimum",
         "calibrated on"], rows,
        ["Agreement with the FP32 PyTorch model on images disjoint from the calibration images: the share whose "
         "top-1 class (and whose top-1 class within FP32's top 5) is the same."])


def cost_table(document: dict) -> TableData | None:
    rows = []
    for record in document["cells"]:
        cost = record.get("cost")
        if not cost:
            continue
        rows.append([record["network"], record["precision"], rate(cost["images_per_s"]),
                     number(cost.get("dollars_per_million_images"), 4),
                     number(cost.get("kwh_per_million_images"), 4),
                     number(cost.get("power_w"), 1), cost.get("power_source") or DASH])
    if not rows:
        return None
    return TableData(["network", "precision", "end-to-end images/s", "$ per million images",
                      "kWh per million images", "power W", "power from"], rows,
                     ["At each cell's end-to-end rate: dollars from --gpu-cost-per-hour, energy from the power "
                      "named (the GPU's alone, not the host's)."])


def clocks_table(document: dict) -> TableData | None:
    rows = []
    for record in document["cells"]:
        for row in (record.get("engine") or {}).get("rows") or []:
            clock = row.get("sm_clock_mhz") or {}
            if row.get("power_w") is None and not clock:
                continue
            throttled = row.get("throttled")
            rows.append([record["network"], record["precision"], str(row["batch_size"]),
                         number(row.get("power_w"), 1), number(row.get("joules_per_image"), 4),
                         DASH if not clock else f"{clock.get('mean', 0):.0f} ({clock.get('min', 0):.0f}–"
                                                f"{clock.get('max', 0):.0f})",
                         DASH if row.get("max_sm_clock_mhz") is None else f"{row['max_sm_clock_mhz']:.0f}",
                         Flag(", ".join(throttled)) if isinstance(throttled, list) and throttled
                         else Flag("yes") if throttled is True else "no"])
    if not rows:
        return None
    return TableData(["network", "precision", "batch", "power W", "J per image", "SM clock MHz mean (range)",
                      "max SM clock", "throttled"], rows,
                     ["Sampled from NVML during each batch size's timed loop; a clock well below the maximum, or a "
                      "throttle reason, means the figure is this box's cooling or power cap, not the GPU's."])


def failures_table(document: dict) -> TableData | None:
    rows = [[record["network"], record["precision"], record["status"], failure["stage"], failure["reason"]]
            for record in document["cells"] for failure in record.get("failures") or []]
    if not rows:
        return None
    return TableData(["network", "precision", "status", "stage", "why"], rows)


def all_tables(document: dict) -> list[tuple[str, str, TableData]]:
    """(id, title, table) in the report's order; the P40 table first."""
    tables = [("p40", "Images per second: engine and end to end", p40_table(document))]
    for table_id, title, build in (
        ("training", "Training beside inference", training_table),
        ("accuracy", "What the lower precisions cost in agreement", accuracy_table),
        ("cost", "What it costs", cost_table),
        ("power", "Power and clocks", clocks_table),
        ("failures", "Cells that failed", failures_table),
    ):
        if (table := build(document)) is not None:
            tables.append((table_id, title, table))
    return tables
