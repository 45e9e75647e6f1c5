"""Model files are loaded only in the safe ways the security checklist allows (TorchFix's TOR102, and pickle)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "loadgen", "export", "matrix")


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr, ast.unparse(node.func.value)


def sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unpickling_of_model_files(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, attr, owner in calls(tree):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if owner == "torch" and attr == "load":
            weights_only = [kw for kw in node.keywords if kw.arg == "weights_only"]
            assert weights_only and ast.unparse(weights_only[0].value) == "True", (
                f"{where}: torch.load without weights_only=True unpickles arbitrary code"
            )
        assert not (owner in ("pickle", "cPickle", "dill") and attr in ("load", "loads")), f"{where}: pickle.{attr}"
