"""The report's folder (matrix rows L16, L17): an unwritable ``--out`` stops the run before any load is sent; one that
fails only at the end sends the report to a fallback folder it names. Real ipsbench-load runs (subprocesses)
against a real ipsbench-serve, with the folder broken for real.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from reliability_helpers import assert_accounted, metric, scrape, start_load_run, wait_until

ONE_STEP = ("--concurrency", "1", "--max-trials", "1", "--warmup", "0s", "--drain", "5s")
ONLY_L16 = "outdir8"
"""The model only the L16 runs name: any request one of them sent would show in its counter."""
FALLBACK = re.compile(r"could not write the report into (?P<out>\S+): (?P<why>.+); wrote it to (?P<json>\S+) instead")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    from reliability_helpers import write_image_model

    repo = tmp_path_factory.mktemp("out-dir-models")
    write_image_model(repo, "image8")
    write_image_model(repo, ONLY_L16)
    return repo


@pytest.fixture(scope="module")
def server(repository, start_module_server):
    return start_module_server(repository)


def _successes(server, model: str) -> float:
    samples = scrape(server.metrics_url)
    key = ("nv_inference_request_success", frozenset({"model": model, "version": "1"}.items()))
    assert key in samples, f"the server does not count {model}'s requests: {sorted(k for k, _ in samples)[:20]}"
    return metric(samples, "nv_inference_request_success", model=model, version="1")


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


# -- L16: --out checked before any load ------------------------------------------------------------------------


def _existing_file(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "taken"
    out.write_text("a file, not a folder\n")
    return out, f"--out {out}: exists and is not a folder"


def _below_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "plain").write_text("a file, not a folder\n")
    out = tmp_path / "plain" / "reports" / "r1"
    return out, f"--out {out}: {tmp_path / 'plain'} is not a folder"


def _report_name_taken(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "r1"
    (out / "report.json").mkdir(parents=True)
    return out, f"--out {out}: {out / 'report.json'} is a folder, not a file"


# (A folder without write permission is refused the same way, but root, as tests often run, writes into it anyway.)
@pytest.mark.parametrize("broken", [_existing_file, _below_a_file, _report_name_taken],
                         ids=["existing-file", "below-a-file", "report-name-taken"])
def test_L16_an_unwritable_out_stops_the_run_before_any_load(server, tmp_path, broken):
    out, message = broken(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run = start_load_run(out, tmp_path.parent / f"{tmp_path.name}-load.log", "sweep", server.grpc_url, ONLY_L16,
                         *ONE_STEP, "--duration", "5s")
    assert run.finish(timeout=120) == 2, run.stdout + run.stderr()
    log = run.stderr()
    errors = _error_lines(log)
    assert len(errors) == 1 and errors[0].endswith(message), log  # one line, naming the path and the problem
    assert "Traceback" not in log, log
    assert f"model {ONLY_L16} input" not in log and "step 1/" not in log, log  # the target was not even asked
    assert _successes(server, ONLY_L16) == 0  # and nothing was sent
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing left behind


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_L16_out_is_checked_before_the_target_is_asked(tmp_path):
    out, message = _existing_file(tmp_path)
    run = start_load_run(out, tmp_path / "load.log", "sweep", f"127.0.0.1:{_closed_port()}", "image8", *ONE_STEP,
                         "--duration", "5s")
    assert run.finish(timeout=120) == 2, run.stdout + run.stderr()
    errors = _error_lines(run.stderr())
    assert len(errors) == 1 and errors[0].endswith(message), run.stderr()  # not the unreachable target


# -- L17: --out fails at the end: the report goes to a fallback folder -----------------------------------------


def _swap_for_a_file(out: Path, gone: Path) -> None:
    """Put a regular file where the run's --out folder is, while the run may recreate the folder to flush into it
    (each folder it makes is moved aside too, so the run can write nothing at ``out`` any more)."""
    replacement = out.with_name(out.name + ".file")
    replacement.write_text("no longer a folder\n")
    moved = []

    def swapped() -> bool:
        if out.is_dir():
            out.rename(gone / str(len(moved)))
            moved.append(out)
        try:
            os.rename(replacement, out)  # a file cannot replace a folder: fails if the run recreated it meanwhile
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
        return True

    wait_until(swapped, what=f"{out} replaced by a file", interval_s=0.01)


def test_L17_a_report_that_cannot_be_written_into_out_goes_to_a_named_fallback(server, tmp_path):
    out, gone, temporary = tmp_path / "r1", tmp_path / "moved-aside", tmp_path / "tmp"
    gone.mkdir()
    temporary.mkdir()
    run = start_load_run(out, tmp_path / "load.log", "sweep", server.grpc_url, "image8", *ONE_STEP,
                         "--duration", "60s", env={**os.environ, "TMPDIR": str(temporary)})
    try:
        measured = run.wait_in_window()["totals"]["ok"]
        _swap_for_a_file(out, gone)
        run.process.send_signal(signal.SIGTERM)  # ends the run now that --out is a file, whatever the machine's pace
        code = run.finish(timeout=120)
    finally:
        run.close()
    log = run.stderr()
    assert code == 3, run.stdout + log  # documented: the report is not where it was asked for
    match = FALLBACK.search(log)
    assert match and match["out"] == str(out) and match["why"] == "it is no longer a folder", log
    fallback = Path(match["json"])
    assert fallback.parent.parent == temporary and fallback.name == "report.json", fallback
    report = json.loads(fallback.read_text())
    assert report["status"] == "interrupted" and report["interrupted_by"] == "SIGTERM"
    assert report["valid"] and report["verdict"] == "PASS"  # the final report, judged
    assert_accounted(report)
    assert report["totals"]["ok"] >= measured > 0  # nothing measured is lost
    assert (fallback.parent / "report.md").is_file() and (fallback.parent / "report.html").is_file()
    assert f"report: {fallback.parent / 'report.md'}" in run.stdout and "images/sec" in run.stdout  # the table
    assert out.is_file() and out.read_text() == "no longer a folder\n"  # nothing forced its way into --out
    assert "Traceback" not in log, log
