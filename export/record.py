"""``export.json``: how an entry was made and what its checks measured, written next to its ``config.pbtxt`` (and,
with ``--json``, wherever the caller asks, failed exports included) so a later run can reuse the entry knowingly and
a report can show what a lower precision costs in agreement with FP32."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

from ipsbench.export.verify import Agreement
from ipsbench.server.repository.layout import model_dir

RECORD_FILENAME = "export.json"
SCHEMA_VERSION = 1
REFERENCE = "the FP32 eager PyTorch model on the CPU"


def agreement_block(checks: list[Agreement]) -> dict | None:
    """The image set's agreement with FP32: top-1, top-5, the largest logit difference; None without an image set."""
    on_images = [check for check in checks if check.on_images]
    if not on_images:
        return None
    check = on_images[-1]
    return {"images": check.batch_size, "top1": round(check.top1_agree, 6), "top5": round(check.top5_agree, 6),
            "max_abs_logit_diff": float(f"{check.max_abs_diff:.6g}"), "min_top1": check.min_top1,
            "reference": REFERENCE}


def export_record(settings, image_size: int, checks: list[Agreement], calibration: dict | None, ok: bool) -> dict:
    return {
        "kind": "ipsbench_export", "schema_version": SCHEMA_VERSION, "ok": ok,
        "network": settings.model, "name": settings.entry_name, "format": settings.format,
        "precision": settings.precision, "device": settings.device, "image_size": image_size,
        "max_batch_size": settings.max_batch_size, "seed": settings.seed, "calibration": calibration,
        "agreement": agreement_block(checks), "checks": [dataclasses.asdict(check) for check in checks],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def entry_record_path(repository: Path, name: str) -> Path:
    return model_dir(repository, name) / RECORD_FILENAME
