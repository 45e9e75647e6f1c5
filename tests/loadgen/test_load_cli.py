"""The command line: usage errors exit 2; the pure modules stay importable without locust."""
import subprocess
import sys

import pytest
from load_helpers import REPO_ROOT


def load(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--model", "m"], "--target"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--duration", "10x"], "invalid duration"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--concurrency", "1,a"], "invalid concurrency"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--concurrency", "0"], "concurrency must be"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--payload", "png"], "invalid choice"),
        (["sweep", "--target", "nohost", "--model", "m"], "host:port"),
        (["nope"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args, message):
    result = load(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unreachable_target_exits_1_without_a_report(tmp_path):
    result = load("sweep", "--target", "127.0.0.1:1", "--model", "m", "--out", str(tmp_path / "r"))
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert not (tmp_path / "r").exists()


def test_recorder_payloads_and_reports_do_not_import_locust():
    code = (
        "import sys, loadgen.cli, loadgen.payloads, loadgen.recorder, loadgen.report.schema, "
        "loadgen.report.markdown, loadgen.report.console; "
        "assert not {'locust', 'gevent'} & set(sys.modules), sorted(m for m in sys.modules if 'locust' in m)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
