"""report.html from a real run, opened in a real headless Chromium over the DevTools protocol: plots and tables in
the DOM, no console errors, no request but the file itself; plots without data left out with a note."""
import json
import shutil
from html.parser import HTMLParser
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from load_helpers import REPO_ROOT

from ipsbench.loadgen.report.cells import ms
from ipsbench.loadgen.report.files import write_reports
from ipsbench.loadgen.report.html import render_html
from ipsbench.loadgen.report.schema import VERDICT_EXIT_CODES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
BROWSER_TIMEOUT_S = 30.0
SHORT = ("--warmup", "300ms", "--duration", "700ms", "--drain", "5s")
CHROMIUM_MISSING = "Chromium is not installed (apt install chromium)"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=CHROMIUM_MISSING)


@dataclass
class PageLoad:
    """What the browser saw while loading one page."""

    facts: dict
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Browser:
    """A headless Chromium driven over its DevTools websocket (one flattened session per page)."""

    DOM_FACTS = """JSON.stringify({
        figures: [...document.querySelectorAll('figure')].filter(f => f.querySelector('svg')).map(f => f.id),
        tables: Object.fromEntries([...document.querySelectorAll('table')].map(t => [t.id, {
            header: [...t.querySelectorAll('thead th')].map(th => th.textContent),
            rows: [...t.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent))}])),
        notes: [...document.querySelectorAll('p.note')].map(p => p.textContent),
        svgText: [...document.querySelectorAll('figure svg text')].map(t => t.textContent).join(' '),
        scripts: document.querySelectorAll('script').length,
        title: document.title,
        summary: document.querySelector('#summary') && document.querySelector('#summary').textContent,
        p40Text: [...document.querySelectorAll('#p40 p')].map(p => p.textContent),
    })"""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"  # Chromium writes its port and browser path here
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=BROWSER_TIMEOUT_S,
                                                  suppress_origin=True)
        self.last_id = 0

    def _call(self, method: str, params: dict | None = None, session: str | None = None,
              events: list | None = None) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        for _ in range(100_000):
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply
                return reply["result"]
            if events is not None:
                events.append(reply)
        raise AssertionError(f"no reply to {method}")

    def load(self, path: Path) -> PageLoad:
        """Open ``path`` in a fresh tab; return the DOM facts, every request and every error it caused."""
        events: list[dict] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._call(f"{domain}.enable", session=session, events=events)
        self._call("Page.navigate", {"url": path.resolve().as_uri()}, session=session, events=events)
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        while not any(event.get("method") == "Page.loadEventFired" for event in events):
            assert time.monotonic() < deadline, "the page did not finish loading"
            events.append(json.loads(self.socket.recv()))
        result = self._call("Runtime.evaluate", {"expression": self.DOM_FACTS, "returnByValue": True},
                            session=session, events=events)
        self._call("Target.closeTarget", {"targetId": target}, events=events)
        load = PageLoad(json.loads(result["result"]["value"]))
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                load.requests.append(params["request"]["url"])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                load.errors.append(params["entry"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                load.errors.append(" ".join(str(arg.get("value")) for arg in params["args"]))
            elif method == "Runtime.exceptionThrown":
                load.errors.append(params["exceptionDetails"]["text"])
        return load

    def close(self) -> None:
        if getattr(self, "socket", None):
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class TableReader(HTMLParser):
    """Every ``<table id=...>`` of a page as rows of cell texts, and which cells are flagged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.flagged: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._flag = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell, self._flag = [], "flag" in (attrs.get("class") or "")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            self._table[-1].append(text)
            if self._flag:
                self.flagged.append(text)
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(CHROMIUM_MISSING)
    # Chromium's helper processes may still be writing the profile as it exits; leftovers are not a failure.
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        chromium = Browser(Path(profile))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def engine_bench(model_repository, tmp_path_factory) -> Path:
    """``ipsbench-serve bench --json`` of the same model at batch 1 and 4 (short)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [sys.executable, "-m", "ipsbench.server", "bench", "resnet18", "--model-repository", str(model_repository),
               "--batch-sizes", "1,4", "--duration", "300ms", "--warmup", "100ms", "--json", str(path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return path


@pytest.fixture(scope="module")
def sweep_out(server, engine_bench, tmp_path_factory) -> Path:
    """One short real sweep (concurrency 1,2; stability windows; a p50 objective; the engine bench) that scraped
    the server's metrics; its report folder."""
    out = tmp_path_factory.mktemp("html-sweep") / "report"
    command = [sys.executable, "-m", "ipsbench.loadgen", "sweep", "--target", server.grpc_url, "--model", "resnet18",
               "--concurrency", "1,2", "--metrics-url", server.metrics_url, "--engine-bench", str(engine_bench),
               "--latency-slo", "p50=10s", "--max-trials", "3", "--stability", "1.0", "--out", str(out), *SHORT]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    report = json.loads((out / "report.json").read_text())
    assert result.returncode == VERDICT_EXIT_CODES[report["verdict"]], result.stdout + result.stderr
    return out


def test_a_run_writes_html_beside_json_markdown_and_csv(sweep_out):
    assert sorted(path.name for path in sweep_out.iterdir()) == ["report.html", "report.json", "report.md",
                                                                 "steps.csv"]
    html = (sweep_out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert html.count("<svg") >= 4


@needs_chromium
def test_report_opens_in_chromium_with_plots_tables_and_no_requests(sweep_out, browser):
    report = json.loads((sweep_out / "report.json").read_text())
    page = browser.load(sweep_out / "report.html")

    assert page.errors == []
    assert page.requests == [(sweep_out / "report.html").resolve().as_uri()]
    facts = page.facts
    assert facts["scripts"] == 0
    assert set(facts["figures"]) >= {"plot-throughput-vs-p99", "plot-latency-percentiles", "plot-timeline",
                                     "plot-time-breakdown"}
    assert "images/sec" in facts["svgText"] and "p99 latency (ms)" in facts["svgText"]
    steps = facts["tables"]["steps-table"]
    assert steps["header"][:5] == ["concurrency", "window s", "requests", "images", "images/s"]
    assert [row[0] for row in steps["rows"]] == ["1", "2"]
    assert [row[4] for row in steps["rows"]] == [f"{step['images_per_s']:,.1f}" for step in report["steps"]]
    assert {"accounting-table", "server-table", "breakdown-table"} <= set(facts["tables"])
    for row in facts["tables"]["breakdown-table"]["rows"]:  # e2e = client + network + the server's four parts
        end_to_end, rest, front_end, queue, compute, response = (float(cell) for cell in row[1:7])
        assert front_end > 0 and response > 0  # ipsbench-serve exports its front end's time
        assert rest == pytest.approx(max(end_to_end - front_end - queue - compute - response, 0.0), abs=0.004)
    assert "VALID" in facts["summary"] and "status complete" in facts["summary"] and "warm-up" in facts["summary"]
    assert f"verdict {report['verdict']}" in facts["summary"] and f"SLO {report['slo']['verdict']}" in facts["summary"]
    objectives = facts["tables"]["slo-table"]["rows"]
    assert [row[0] for row in objectives] == ["p50", "error_rate"] and objectives[0][1] == "10s"
    assert objectives[0][2] == ms(report["slo"]["objectives"][0]["measured_us"]) + " ms"
    assert "plot-stability" in facts["figures"]
    assert [row[-3] for row in steps["rows"]] == [
        ("stable" if step["stability"]["stable"] else "UNSTABLE") + f" ({step['stability']['trials']})"
        for step in report["steps"]]
    # A CPU-only run has no GPU readings: said in one line, not drawn as empty axes.
    assert any("GPU util %, GPU power W" in note for note in facts["notes"])


@needs_chromium
def test_engine_figures_make_the_p40_table(sweep_out, browser):
    report = json.loads((sweep_out / "report.json").read_text())
    engine_bench = report["engine"]
    assert engine_bench["kind"] == "engine_bench"
    page = browser.load(sweep_out / "report.html")
    rows = page.facts["tables"]["p40-table"]["rows"]
    engine = [row for row in rows if row[3].startswith("engine")]
    end_to_end = [row for row in rows if row[3].startswith("end to end")]
    assert [row[2] for row in engine] == ["1", "4"] and len(end_to_end) == 2
    assert all(row[1] == engine_bench["precision"] for row in rows)
    for row, step in zip(end_to_end, report["steps"]):
        ratio = float(row[8].split()[0])
        reference = next(r for r in engine_bench["results"] if f"vs batch {r['batch_size']})" in row[8])
        assert ratio == pytest.approx(step["images_per_s"] / reference["images_per_s"], abs=0.006)
    meaning = " ".join(page.facts["p40Text"])
    assert "forward pass alone" in meaning and "50,000 ImageNet validation images take" in meaning


def test_without_engine_figures_the_p40_table_has_end_to_end_rows_only(sweep_out, tmp_path):
    report = json.loads((sweep_out / "report.json").read_text())
    write_reports({**report, "engine": None}, tmp_path)
    rows = TableReader((tmp_path / "report.html").read_text()).tables["p40-table"][1:]
    assert [row[3] for row in rows] == ["end to end, concurrency 1", "end to end, concurrency 2"]
    assert {row[8] for row in rows} == {"–"}
    assert "Engine** figures are absent" in (tmp_path / "report.md").read_text()


@needs_chromium
def test_the_browser_check_sees_requests_and_console_errors(browser, tmp_path):
    """The checks above can fail: a page that fetches and logs an error is caught on both counts."""
    page_path = tmp_path / "leaky.html"
    page_path.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                         '<script>console.error("broken")</script></body></html>')
    page = browser.load(page_path)
    assert "http://127.0.0.1:9/x.png" in page.requests
    assert "broken" in page.errors


def test_plots_without_data_are_left_out_with_a_note(sweep_out):
    report = json.loads((sweep_out / "report.json").read_text())
    for step in report["steps"]:
        step["server"] = None  # as a run without --metrics-url reports it
        step["window_start_unix"] = step["window_end_unix"] = None
    html = render_html(report)
    assert 'id="plot-time-breakdown"' not in html and 'id="plot-time-breakdown-absent"' in html
    assert 'id="plot-timeline"' not in html and "no wall-clock window bounds" in html
    assert 'id="plot-throughput-vs-p99"' in html  # what has data is still drawn
    assert "cannot be split into client + network, the server&#x27;s front end, queue and compute" in html


def test_slo_stability_and_client_flags_are_rendered(sweep_out):
    report = json.loads((sweep_out / "report.json").read_text())
    first, second = report["steps"]
    first["stability"] = {"stable": True, "trials": 3, "tolerance": 0.1,
                          "windows": [{"images_per_s": 100.0 + i, "p99_us": 9000 + i} for i in range(3)]}
    second["stability"] = {"stable": False, "trials": 10, "tolerance": 0.1,
                           "windows": [{"images_per_s": 100.0 * (i % 2 + 1), "p99_us": 9000} for i in range(10)]}
    second["client"] = {"cpu_percent": 97.0, "client_bound": True, "reasons": ["client CPU 97% above 90%"]}
    report["slo"] = {"verdict": "FAIL", "objectives": [
        {"name": "p99", "target": "100ms", "target_us": 100_000, "measured_us": 81_234, "met": True,
         "samples": 20_000, "enough_samples": True},
        {"name": "error_rate", "target": 0.01, "measured": 0.02, "met": False,
         "why": "error rate 2.00% above 1.00%"}],
        "search": {"kind": "concurrency", "bracket": [1, 2], "best": 1, "steps": [1, 2]}}
    html = render_html(report)
    assert "SLO FAIL" in html and 'id="plot-stability"' in html
    page = TableReader(html)
    header, *rows = page.tables["steps-table"]
    assert header[-3:] == ["stability", "client", "SLO"]
    assert [row[-3] for row in rows] == ["stable (3)", "UNSTABLE (10)"]
    assert rows[1][-2] == "client-bound CPU 97%" and {"UNSTABLE (10)", "client-bound CPU 97%"} <= set(page.flagged)
    assert "client-bound: client CPU 97% above 90%" in html
    assert page.tables["slo-table"] == [
        ["objective", "target", "measured", "samples", "verdict", "why"],
        ["p99", "100ms", "81.2 ms", "20,000", "PASS", ""],
        ["error_rate", "1.00%", "2.00%", "–", "FAIL", "error rate 2.00% above 1.00%"],
    ]
    assert "FAIL" in page.flagged and "PASS" not in page.flagged
    assert "Searched by concurrency in [1, 2]; highest concurrency meeting every objective: 1" in html


def test_an_interrupted_run_still_writes_the_html_report(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "2", "--warmup", "300ms", "--duration", "30s")
    run.wait_in_window()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=30) == 143, run.stdout + run.stderr()
    html = (run.out / "report.html").read_text()
    assert "status <strong>interrupted (SIGTERM)</strong>" in html
    assert 'id="steps-table"' in html and 'id="plot-latency-percentiles"' in html
