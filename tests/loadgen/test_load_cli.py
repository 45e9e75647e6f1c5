"""The command line: usage errors exit 2; the pure modules stay importable without locust."""
import json
import subprocess
import sys

import pytest
from load_helpers import REPO_ROOT


def load(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipsbench.loadgen", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--model", "m"], "--target"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--duration", "10x"], "invalid duration"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--concurrency", "1,a"], "invalid concurrency"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--concurrency", "0"], "concurrency must be"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--concurrency", "1:100000"], "more than 256 levels"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m", "--rate", "100:10:10"], "below its start"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--percentile", "100"], "percentile must be in"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--payload", "png"], "invalid choice"),
        (["sweep", "--target", "nohost", "--model", "m"], "host:port"),
        (["nope"], "invalid choice"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m"], "--rate"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m", "--rate", "0"], "rate must be in"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m", "--rate", "10,x"], "invalid rate list"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m", "--rate", "10", "--arrival", "burst"], "invalid choice"),
        (["rate", "--target", "127.0.0.1:1", "--model", "m", "--rate", "10", "--max-in-flight", "0"],
         "max in flight must be"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--processes", "0"], "processes must be"),
        (["worker", "--master", "nohost"], "host:port"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--latency-slo", "99=1s"], "PERCENTILE=DURATION"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--max-trials", "0"], "max trials must be"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--header", "novalue"], "KEY=VALUE"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--tls-cert", "c.pem"], "go together"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--accuracy-every", "5"], "labelled --images"),
        (["slo", "--target", "127.0.0.1:1", "--model", "m", "--low", "20", "--high", "10"], "--low must be below"),
        (["slo", "--target", "127.0.0.1:1", "--model", "m", "--search", "concurrency", "--low", "1.5", "--high",
          "4"], "whole numbers"),
        (["trace", "--target", "127.0.0.1:1", "--model", "m", "--trace", "/nonexistent/trace.txt"], "No such file"),
        (["sweep", "--target", "127.0.0.1:1", "--model", "m", "--master-bind", "nohost"], "host:port"),
    ],
)
def test_usage_errors_exit_2(args, message):
    result = load(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unreachable_target_exits_2_without_a_report(tmp_path):
    result = load("sweep", "--target", "127.0.0.1:1", "--model", "m", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "UNAVAILABLE" in result.stderr
    assert not (tmp_path / "r").exists()


def test_recorder_payloads_and_reports_do_not_import_locust():
    code = (
        "import sys, ipsbench.loadgen.cli, ipsbench.loadgen.payloads, ipsbench.loadgen.recorder, ipsbench.loadgen.arrivals, "
        "ipsbench.loadgen.settings, ipsbench.loadgen.workload, ipsbench.loadgen.report.schema, ipsbench.loadgen.scenarios.catalog, "
        "ipsbench.loadgen.report.markdown, ipsbench.loadgen.report.console, ipsbench.loadgen.report.steps_csv, ipsbench.loadgen.report.files, ipsbench.loadgen.scrape; "
        "assert not {'locust', 'gevent'} & set(sys.modules), sorted(m for m in sys.modules if 'locust' in m)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_every_command_documents_its_options():
    for command in ("sweep", "offline", "single-stream", "ramp", "spike", "rate", "trace", "slo", "ui", "worker",
                    "compare"):
        result = load(command, "--help")
        assert result.returncode == 0 and "usage: ipsbench-load" in result.stdout, (command, result.stderr)
    common = load("slo", "--help").stdout
    for option in ("--remote-workers", "--master-bind", "--engine-bench", "--tls-ca", "--tls-cert", "--tls-key",
                   "--header", "--latency-slo", "--max-error-rate", "--search", "--low", "--high"):
        assert option in common, option


@pytest.mark.parametrize("scenario", [
    ["sweep", "--concurrency", "1,8"],
    ["slo", "--search", "rate", "--low", "10", "--high", "50", "--latency-slo", "p99=100ms", "--header", "a=b"],
    ["spike", "--base", "1", "--spike", "8", "--remote-workers", "2", "--master-bind", "0.0.0.0:5557"],
    ["rate", "--rate", "20,40.5", "--arrival", "constant", "--max-in-flight", "64", "--processes", "2"],
    ["single-stream", "--request-log", "logs/requests.csv", "--processes", "2"],
])
def test_settings_travel_to_workers_as_plain_data(scenario):
    from ipsbench.loadgen.cli import build_parser, settings_from_args
    from ipsbench.loadgen.settings import RunSettings

    args = build_parser().parse_args([scenario[0], "--target", "127.0.0.1:8001", "--model", "m", "--out", "r",
                                      *scenario[1:]])
    settings = settings_from_args(args)
    data = json.loads(json.dumps(settings.to_dict()))
    assert RunSettings.from_dict(data) == settings
    assert settings.scenario == scenario[0] and set(data) >= {"target", "workload", "validity", scenario[0]}


def test_every_load_scenario_takes_a_request_log():
    from ipsbench.loadgen.cli import build_parser, settings_from_args

    scenarios = {"sweep": [], "offline": [], "single-stream": [], "ramp": ["--to", "2"], "spike": ["--spike", "2"],
                 "rate": ["--rate", "10"], "slo": ["--low", "1", "--high", "2"]}
    for scenario, extra in scenarios.items():
        args = build_parser().parse_args([scenario, "--target", "127.0.0.1:8001", "--model", "m",
                                          "--request-log", "requests.csv", *extra])
        assert settings_from_args(args).request_log == "requests.csv", scenario
        assert settings_from_args(build_parser().parse_args(
            [scenario, "--target", "127.0.0.1:8001", "--model", "m", *extra])).request_log == ""
    assert "--request-log" in load("trace", "--help").stdout
