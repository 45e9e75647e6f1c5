"""The server's side of each step, scraped from its Prometheus endpoint during a run."""
import math

import pytest
from load_helpers import assert_accounted

from ipsbench.loadgen.scrape import ScrapeError, StepScrapes, histogram_quantile, parse_metrics, server_side

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


def own_page(answered: int, pre_s: float, post_s: float, busy_s: float, fast: int, lag_ticks: int,
             cpu_s: float, loop_cpu_s: float) -> str:
    """ipsbench-serve's own series: ``fast`` of ``answered`` requests within 1 ms, the rest within 2 ms."""
    labels = 'model="m",version="1"'
    who = 'index="0",role="server"'
    return "\n".join([
        "# TYPE ipsbench_pre_queue_duration_seconds_total counter",
        f"ipsbench_pre_queue_duration_seconds_total{{{labels}}} {pre_s}",
        "# TYPE ipsbench_post_compute_duration_seconds_total counter",
        f"ipsbench_post_compute_duration_seconds_total{{{labels}}} {post_s}",
        "# TYPE ipsbench_execution_compute_duration_seconds_total counter",
        f"ipsbench_execution_compute_duration_seconds_total{{{labels}}} {busy_s}",
        "# TYPE ipsbench_model_instances gauge", f"ipsbench_model_instances{{{labels}}} 2",
        "# TYPE ipsbench_request_duration_seconds histogram",
        f'ipsbench_request_duration_seconds_bucket{{{labels},le="0.001"}} {fast}',
        f'ipsbench_request_duration_seconds_bucket{{{labels},le="0.002"}} {answered}',
        f'ipsbench_request_duration_seconds_bucket{{{labels},le="+Inf"}} {answered}',
        f"ipsbench_request_duration_seconds_count{{{labels}}} {answered}",
        f"ipsbench_request_duration_seconds_sum{{{labels}}} {answered * 0.0015}",
        "# TYPE ipsbench_process_cpu_seconds_total counter", f"ipsbench_process_cpu_seconds_total{{{who}}} {cpu_s}",
        "# TYPE ipsbench_event_loop_cpu_seconds_total counter",
        f"ipsbench_event_loop_cpu_seconds_total{{{who}}} {loop_cpu_s}",
        "# TYPE ipsbench_event_loop_lag_seconds histogram",
        f'ipsbench_event_loop_lag_seconds_bucket{{{who},le="0.001"}} {lag_ticks}',
        f'ipsbench_event_loop_lag_seconds_bucket{{{who},le="+Inf"}} {lag_ticks}',
        f"ipsbench_event_loop_lag_seconds_count{{{who}}} {lag_ticks}",
        f"ipsbench_event_loop_lag_seconds_sum{{{who}}} {lag_ticks * 0.0005}",
    ]) + "\n"


def test_the_servers_own_time_around_the_queue_and_its_percentiles_from_the_histogram():
    start = parse_metrics(page(100, 100, 100, 0, 0) + own_page(100, 1.0, 1.0, 5.0, 100, 10, 3.0, 1.0), at_ns=0)
    # 400 answered: 300 within 1 ms, 100 within 1..2 ms; 0.2 s before the queue and 0.1 s after, in all
    end = parse_metrics(page(500, 500, 500, 0, 0) + own_page(500, 1.2, 1.1, 6.6, 400, 50, 4.8, 2.6),
                        at_ns=2_000_000_000)
    block, _ = server_side(start, end, "m")
    assert block["pre_queue_ms"] == 0.5 and block["post_compute_ms"] == 0.25 and block["frontend_ms"] == 0.75
    # p50: rank 200 of 400 in the first bucket (300 in 0..1 ms); p99: rank 396 in the second (100 in 1..2 ms)
    assert block["request_p50_ms"] == pytest.approx(200 / 300, abs=1e-4)
    assert block["request_p99_ms"] == pytest.approx(1 + 96 / 100, abs=1e-4)
    assert block["instances"] == 2 and block["engine_busy"] == 0.4  # 1.6 s of compute over 2 s on 2 instances
    [process] = block["processes"]
    assert (process["role"], process["index"]) == ("server", "0")
    assert process["cpu_cores"] == 0.9 and process["loop_cpu_cores"] == 0.8
    assert process["loop_lag_mean_ms"] == 0.5 and process["loop_lag_p99_ms"] == pytest.approx(0.99, abs=1e-4)


def test_a_triton_page_has_none_of_the_servers_own_figures():
    block, _ = server_side(parse_metrics(page(1, 1, 1, 1, 1)), parse_metrics(page(2, 2, 2, 2, 2), at_ns=10**9), "m")
    assert block["pre_queue_ms"] is None and block["request_p99_ms"] is None and block["engine_busy"] is None
    assert block["processes"] is None


def test_buckets_without_a_numeric_bound_are_ignored():
    text = ("# TYPE h histogram\n" 'h_bucket{le="0.1"} 3\n' 'h_bucket{le="lots"} 5\n' 'h_bucket{le="+Inf"} 4\n'
            "h_count 4\nh_sum 1\n")
    assert parse_metrics(text).buckets("h") == {0.1: 3.0, math.inf: 4.0}


def test_histogram_quantile_interpolates_as_prometheus_does():
    buckets = {0.1: 10.0, 0.2: 10.0, 0.5: 20.0, math.inf: 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.2 + 0.3 * 5 / 10)  # the empty bucket is skipped
    assert histogram_quantile(0.99, {0.1: 1.0, math.inf: 100.0}) == 0.1  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


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
        # ipsbench-serve's own time around the queue, and its request time's percentiles from its histogram
        assert side["pre_queue_ms"] > 0 and side["post_compute_ms"] > 0
        assert 0 < side["request_p50_ms"] <= side["request_p99_ms"]
        assert side["instances"] >= 1 and 0 < side["engine_busy"] <= 1.05
        assert {"server", "0"} == {side["processes"][0]["role"], side["processes"][0]["index"]}
        assert 0 <= step["server"]["load_host"]["cpu_percent"] <= 100
    markdown = (run.out / "report.md").read_text()
    assert f"## Server side (scraped from {server.metrics_url})" in markdown
    assert "avg batch" in markdown and "server p99 ms" in markdown
    assert "| client + network ms | server front end ms | server queue ms | server compute ms | server response ms |" \
        in markdown


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
