"""The server's side of each step, scraped from its Prometheus endpoint during a run."""
import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.scrape import ScrapeError, StepScrapes, parse_metrics, server_side

SHORT = ("--warmup", "500ms", "--duration", "1500ms", "--drain", "5s")


def page(count: int, execs: int, success: int, queue_us: int, infer_us: int, energy_j: float | None = None,
         power_w: float = 100.0, utilization: float = 0.5) -> str:
    """A metrics page as Triton writes it (counter samples without ``_total``)."""
    labels = 'model="m",version="1"'
    lines = [
        "# TYPE nv_inference_count counter", f"nv_inference_count{{{labels}}} {count}",
        f'nv_inference_count{{model="other",version="1"}} {count * 10}',
        "# TYPE nv_inference_exec_count counter", f"nv_inference_exec_count{{{labels}}} {execs}",
        "# TYPE nv_inference_request_success counter", f"nv_inference_request_success{{{labels}}} {success}",
        "# TYPE nv_inference_request_duration_us counter",
        f"nv_inference_request_duration_us{{{labels}}} {queue_us + infer_us + 3 * success}",
        "# TYPE nv_inference_queue_duration_us counter", f"nv_inference_queue_duration_us{{{labels}}} {queue_us}",
        "# TYPE nv_inference_compute_input_duration_us counter",
        f"nv_inference_compute_input_duration_us{{{labels}}} {success}",
        "# TYPE nv_inference_compute_infer_duration_us counter",
        f"nv_inference_compute_infer_duration_us{{{labels}}} {infer_us}",
        "# TYPE nv_inference_compute_output_duration_us counter",
        f"nv_inference_compute_output_duration_us{{{labels}}} {success}",
    ]
    if energy_j is not None:
        lines += [
            "# TYPE nv_gpu_utilization gauge", f'nv_gpu_utilization{{gpu_uuid="GPU-a"}} {utilization}',
            "# TYPE nv_gpu_power_usage gauge", f'nv_gpu_power_usage{{gpu_uuid="GPU-a"}} {power_w}',
            "# TYPE nv_energy_consumption counter", f'nv_energy_consumption{{gpu_uuid="GPU-a"}} {energy_j}',
        ]
    return "\n".join(lines) + "\n"


def test_deltas_per_request_and_gpu_energy_over_the_scrape_interval():
    start = parse_metrics(page(100, 50, 100, 10_000, 200_000, energy_j=1000.0, power_w=90, utilization=0.4),
                          at_ns=0)
    end = parse_metrics(page(500, 150, 500, 50_000, 1_000_000, energy_j=1400.0, power_w=110, utilization=0.6),
                        at_ns=2_000_000_000)
    block, warnings = server_side(start, end, "m")
    assert warnings == []
    assert block["scrape_interval_s"] == 2.0
    assert (block["inference_count"], block["exec_count"], block["request_success"]) == (400, 100, 400)
    assert block["avg_batch_size"] == 4.0
    assert block["queue_ms"] == 0.1  # 40,000 us over 400 requests
    assert block["compute_ms"] == pytest.approx((400 + 800_000 + 400) / 400 / 1000)
    assert block["inferences_per_s"] == 200.0
    gpu = block["gpu"]
    assert gpu["utilization_mean"] == 0.5 and gpu["power_w_mean_of_scrapes"] == 100.0
    assert gpu["energy_j"] == 400.0 and gpu["power_w_from_energy"] == 200.0
    assert gpu["images_per_joule"] == 1.0 and gpu["joules_per_image"] == 1.0


def test_counter_names_with_total_and_no_gpu_series():
    text = page(10, 5, 10, 100, 1000).replace("nv_inference_count{", "nv_inference_count_total{")
    start = parse_metrics(text, at_ns=0)
    end = parse_metrics(page(30, 10, 30, 300, 3000), at_ns=10**9)
    block, _ = server_side(start, end, "m", version="1")
    assert block["inference_count"] == 20 and block["avg_batch_size"] == 4.0 and block["gpu"] is None


def test_a_model_without_series_or_a_counter_reset_gives_a_warning_not_figures():
    start, end = parse_metrics(page(10, 5, 10, 1, 1)), parse_metrics(page(3, 1, 3, 1, 1), at_ns=1)
    assert server_side(start, end, "absent")[0] is None
    block, warnings = server_side(start, end, "m")
    assert block is None and "went down" in warnings[0]
    with pytest.raises(ScrapeError):
        parse_metrics("nv_inference_count{model= 3\n")


def test_an_unreachable_endpoint_is_a_warning():
    scrapes = StepScrapes("http://127.0.0.1:1/metrics", "m", timeout_s=1.0)
    scrapes.window_start(0)
    scrapes.window_end(0, 0, 0)
    assert scrapes.blocks == {} and len(scrapes.warnings) == 1
    assert scrapes.warnings[0].startswith("step 0 server metrics: scrape at the window's start failed")


def test_sweep_reports_the_servers_side_of_each_step(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1,4", "--metrics-url", server.metrics_url, *SHORT)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"] and report["warnings"] == [] and report["server_metrics_url"] == server.metrics_url
    assert_accounted(report)
    for step in report["steps"]:
        side = step["server"]
        assert side["avg_batch_size"] >= 1 and side["queue_ms"] > 0 and side["compute_ms"] > 0
        # The scrapes bracket the window, so the server counts what the client saw complete in it, less at most
        # one request per user (answered by the server before the opening scrape, seen by the client after it),
        # and no more than the whole step sent.
        assert step["window_requests"]["ok"] - step["concurrency"] <= side["inference_count"] <= step["ok"]
        assert side["request_success"] == side["inference_count"]  # one image per request
        assert side["scrape_interval_s"] >= step["window_s"]
        assert side["gpu"] is None  # no GPU here
    markdown = (run.out / "report.md").read_text()
    assert f"## Server side (scraped from {server.metrics_url})" in markdown
    assert "avg batch" in markdown


def test_an_unreachable_metrics_endpoint_warns_and_the_run_still_counts(server, start_load):
    run = start_load(server.grpc_url, "--concurrency", "1", "--metrics-url", "http://127.0.0.1:1/metrics", *SHORT)
    assert run.finish(timeout=60) == 0, run.stdout + run.stderr()
    report = run.report()
    assert report["valid"] and report["steps"][0]["server"] is None
    assert any("scrape at the window's start failed" in warning for warning in report["warnings"])


def test_a_distributed_rate_run_scrapes_from_the_master(server, start_load):
    run = start_load(server.grpc_url, "--rate", "40", "--processes", "2", "--metrics-url", server.metrics_url,
                     *SHORT, scenario="rate")
    assert run.finish(timeout=90) == 0, run.stdout + run.stderr()
    report = run.report()
    [step] = report["steps"]
    side = step["server"]
    assert side is not None and side["avg_batch_size"] >= 1 and side["queue_ms"] > 0 and side["compute_ms"] > 0
    assert step["window_requests"]["ok"] <= side["inference_count"] <= step["ok"]
