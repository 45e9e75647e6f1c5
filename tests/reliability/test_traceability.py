"""Every row of the reliability matrix is traced to a test (docs/reliability-matrix.md, checked against the tests).

A row passes when a test function named ``test_<ROW>_…`` exists in some test file, or the table names an existing
test by node id, or the row's status gives a reason it cannot be tested here (not applicable, GPU only, soak).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "docs" / "reliability-matrix.md"
EXPECTED_ROWS = (
    [f"B{i:02d}" for i in range(1, 24)] + [f"F{i:02d}" for i in range(1, 30)] + [f"L{i:02d}" for i in range(1, 25)]
)
ROW_LINE = re.compile(r"^\| (?P<id>[BFL]\d\d) \| (?P<title>[^|]+) \| (?P<test>[^|]+) \| (?P<status>.+) \|$")
NODE_ID = re.compile(r"(?P<file>tests/[\w/]+\.py)::(?P<name>\w+)(?:\[(?P<param>[^\]]+)\])?")
REASONED = ("not applicable:", "GPU only:", "soak:")


def matrix_rows() -> dict[str, dict[str, str]]:
    rows = {}
    for line in MATRIX.read_text(encoding="utf-8").splitlines():
        if match := ROW_LINE.match(line.strip()):
            assert match["id"] not in rows, f"{match['id']} is listed twice"
            rows[match["id"]] = {key: value.strip() for key, value in match.groupdict().items()}
    return rows


@cache
def defined_tests() -> dict[str, set[str]]:
    """Test function names defined in each test file under tests/, by path relative to the repository."""
    found = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found[path.relative_to(ROOT).as_posix()] = {
            node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        }
    return found


def all_test_names() -> set[str]:
    return set().union(*defined_tests().values())


def test_the_matrix_lists_every_row_once_with_a_title():
    rows = matrix_rows()
    assert sorted(rows) == EXPECTED_ROWS, sorted(set(EXPECTED_ROWS) ^ set(rows))
    assert all(len(row["title"]) > 5 for row in rows.values())


@pytest.mark.parametrize("row_id", EXPECTED_ROWS)
def test_every_row_has_a_test_or_a_reason(row_id):
    row = matrix_rows()[row_id]
    named = {name for name in all_test_names() if name.startswith(f"test_{row_id}_")}
    status = row["status"]
    node_ids = list(NODE_ID.finditer(row["test"]))
    if status == "named":
        listed = set(re.findall(r"test_\w+", row["test"]))
        assert named, f"{row_id} says named, but no test_{row_id}_… exists"
        assert listed <= named, f"{row_id} lists tests that do not exist: {sorted(listed - named)}"
    elif status == "mapped":
        assert node_ids, f"{row_id} is mapped but names no node id"
        for node in node_ids:
            functions = defined_tests().get(node["file"])
            assert functions is not None, f"{row_id}: {node['file']} does not exist"
            assert node["name"] in functions, f"{row_id}: {node['file']} has no {node['name']}"
            if node["param"]:
                assert node["param"] in (ROOT / node["file"]).read_text(), f"{row_id}: no parameter {node['param']!r}"
    else:
        assert status.startswith(REASONED), f"{row_id}: unknown status {status!r}"
        reason = status.split(":", 1)[1].strip()
        assert len(reason) > 20, f"{row_id}: the reason is too short to explain anything"
