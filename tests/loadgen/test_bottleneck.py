"""The bottleneck named from a step's figures: each resource at its threshold, and the order when several are."""
import pytest

from ipsbench.loadgen.bottleneck import (
    ENGINE_BUSY,
    FRONTEND_LOOP_BUSY_CORES,
    FRONTEND_PROCESS_BUSY_SHARE,
    HOST_CPU_BUSY_PERCENT,
    StepFigures,
    classify,
    figures_of,
)

QUIET = dict(load_cpu_percent=30.0, host_cpu_percent=40.0, host_cpus=2, engine_busy=0.3, instances=1,
             frontend_loop_cores=0.2, frontend_process="server", loop_lag_p99_ms=1.0, queue_ms=0.1, compute_ms=5.0)
"""A step where nothing is near its limit."""


def resource(**changes) -> str:
    return classify(StepFigures(**{**QUIET, **changes}))["resource"]


def test_nothing_saturated_is_latency_bound():
    block = classify(StepFigures(**QUIET))
    assert block["resource"] == "none"
    assert block["sentence"].startswith("nothing saturated (server front end at 20 % of a core, loop lag p99 1.0 ms, "
                                        "engine 30 % busy (1 instance), host 40 % busy)")
    assert "latency-bound" in block["sentence"]
    assert block["figures"]["engine_busy"] == 0.3 and block["figures"]["host_cpu_percent"] == 40.0


@pytest.mark.parametrize("name, changes, expected", [
    ("engine at its threshold", dict(engine_busy=ENGINE_BUSY), "engine"),
    ("engine just under", dict(engine_busy=ENGINE_BUSY - 0.01), "none"),
    ("GPU at its threshold", dict(gpu_utilization=ENGINE_BUSY, engine_busy=0.2), "engine"),
    ("host at its threshold", dict(host_cpu_percent=HOST_CPU_BUSY_PERCENT), "host_cpu"),
    ("host just under", dict(host_cpu_percent=HOST_CPU_BUSY_PERCENT - 0.1), "none"),
    ("the load generator's own check", dict(client_bound=True), "load_generator"),
    ("a loop at its threshold", dict(frontend_loop_cores=FRONTEND_LOOP_BUSY_CORES), "server_frontend"),
    ("a loop just under", dict(frontend_loop_cores=FRONTEND_LOOP_BUSY_CORES - 0.01), "none"),
    ("a late loop, not busy: starved, not saturated", dict(loop_lag_p99_ms=400.0), "none"),
    ("a process using all its CPUs", dict(frontend_cpu_share=FRONTEND_PROCESS_BUSY_SHARE, frontend_cpus=1),
     "server_frontend"),
    ("a process just under", dict(frontend_cpu_share=FRONTEND_PROCESS_BUSY_SHARE - 0.01, frontend_cpus=1), "none"),
])
def test_each_resource_at_its_threshold(name, changes, expected):
    assert resource(**changes) == expected, name


def test_the_first_saturated_resource_names_the_step():
    everything = dict(engine_busy=0.99, host_cpu_percent=99.0, client_bound=True, frontend_loop_cores=0.99)
    assert resource(**everything) == "engine"  # the queue forms before the engine, whatever else is busy
    assert resource(**{**everything, "engine_busy": 0.5}) == "load_generator"  # its own limit, not the host's
    assert resource(**{**everything, "engine_busy": 0.5, "client_bound": False}) == "server_frontend"
    # a host the server shares: the front end's figures are what it got of the host, so the host names the step
    assert resource(**{**everything, "engine_busy": 0.5, "client_bound": False,
                       "shares_server_host": True}) == "host_cpu"
    assert resource(**{**everything, "engine_busy": 0.5, "client_bound": False,
                       "frontend_loop_cores": 0.5}) == "host_cpu"


def test_the_sentences_say_whose_figure_it_is():
    front = classify(StepFigures(**{**QUIET, "frontend_loop_cores": 0.98, "gpu_utilization": 0.15}))
    assert front["sentence"] == ("server front end at 98 % of a core, loop lag p99 1.0 ms, GPU 15 % busy: this "
                                 "figure is the server's, not the GPU's")
    engine = classify(StepFigures(**{**QUIET, "engine_busy": 0.97, "queue_ms": 20.5}))
    assert engine["sentence"] == ("engine 97 % busy (1 instance), requests waited 20.5 ms in its queue: this figure "
                                  "is the engine's capacity")
    host = classify(StepFigures(**{**QUIET, "host_cpu_percent": 96.0}))
    assert host["sentence"].startswith("the load generator's host at 96 % CPU (2 CPUs): its CPUs are saturated")
    shared = classify(StepFigures(**{**QUIET, "host_cpu_percent": 96.0, "shares_server_host": True}))
    assert shared["sentence"].startswith("the host the server and the load generator share at 96 % CPU (2 CPUs): "
                                         "neither figure is a capacity")
    client = classify(StepFigures(**{**QUIET, "client_bound": True,
                                     "client_reasons": ("the load generator used 95% of a core",)}))
    assert "(the load generator used 95% of a core)" in client["sentence"]
    assert client["sentence"].endswith("this figure is the load generator's, not the server's")
    forwarded = classify(StepFigures(**{**QUIET, "frontend_loop_cores": 0.9, "frontend_process": "front end 1"}))
    assert forwarded["sentence"].startswith("server front end at 90 % of a core (front end 1's event loop)")
    full = classify(StepFigures(**{**QUIET, "frontend_loop_cores": 0.7, "frontend_cpu_share": 0.99,
                                   "frontend_cpu_process": "server", "frontend_cpus": 1}))
    assert full["sentence"].startswith("server front end at 70 % of a core, its process at 99 % of its 1 CPU,")


def test_without_a_scrape_only_the_load_generator_can_be_named():
    assert classify(StepFigures(client_bound=True), scraped=False)["resource"] == "load_generator"
    unnamed = classify(StepFigures(engine_busy=None), scraped=False)
    assert unnamed["resource"] is None and "--metrics-url" in unnamed["sentence"]


def test_figures_from_a_report_step():
    step = {
        "client": {"cpu_percent": 42.0, "client_bound": False, "reasons": []},
        "open_loop": {"client_bound": False, "send_lateness_us": {"p50": 100, "p99": 2500, "max": 9000}},
        "server": {
            "engine_busy": 0.5, "instances": 2, "queue_ms": 1.0, "compute_ms": 2.0,
            "gpu": {"utilization_mean": 0.25}, "load_host": {"cpu_percent": 70.0, "cpus": 2},
            "processes": [
                {"role": "engine", "index": "0", "cpus": 4, "cpu_cores": 1.2, "loop_cpu_cores": 0.3,
                 "loop_lag_p99_ms": 4.0},
                {"role": "frontend", "index": "1", "cpus": 4, "cpu_cores": 0.8, "loop_cpu_cores": 0.7,
                 "loop_lag_p99_ms": 9.0},
            ],
        },
    }
    figures = figures_of(step)
    assert figures.frontend_loop_cores == 0.7 and figures.frontend_process == "front end 1"
    assert figures.frontend_cpu_cores == 2.0 and figures.loop_lag_p99_ms == 9.0
    assert figures.send_lateness_p99_ms == 2.5 and figures.host_cpu_percent == 70.0
    assert (figures.frontend_cpu_share, figures.frontend_cpu_process, figures.frontend_cpus) == (0.3, "engine", 4)
    assert figures.gpu_utilization == 0.25 and figures.instances == 2
    assert classify(figures)["resource"] == "none"
