"""Which resource limited a step, named from its measurements: the engine, the load generator's host, the load
generator itself, the server's front end, or none (latency-bound).

Pure: the figures come from the step's client block and the server's scrape deltas (:mod:`ipsbench.loadgen.scrape`);
nothing here measures. A resource counts as saturated at or above its threshold, and the first saturated one in this
order names the step: the engine (the queue forms before it, so the figure is its capacity, whatever else is busy),
the load generator (its own limit: a process at a core, or sends behind the schedule), the host when the server
shares it and its CPUs are busy (every CPU figure is then a share of a contended host), the server's front end (an
event loop at a core, or a serving process using all the CPUs it may run on; a late loop alone is not one: a loop
starved by other processes is late too), the load generator's host (the CPUs it may run on are busy, with no process
of its own at its limit: something else holds them, so the figure is no capacity of the server's), else none:
nothing was saturated, so the step's throughput is its concurrency over its latency.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_BUSY = 0.90
"""An engine whose instances computed at least this share of the interval (CPU), or a GPU at least this busy."""
HOST_CPU_BUSY_PERCENT = 90.0
"""The load generator's host with its CPUs busy at least this much (all of them together)."""
FRONTEND_LOOP_BUSY_CORES = 0.85
"""A serving process whose event-loop thread used at least this much of a core (one Python thread's limit)."""
FRONTEND_PROCESS_BUSY_SHARE = 0.90
"""A serving process that used at least this share of the CPUs it may run on (every thread: gRPC's too)."""

RESOURCES = ("engine", "host_cpu", "load_generator", "server_frontend", "none")


@dataclass(frozen=True)
class StepFigures:
    """What a step measured that bears on its bottleneck; None: not measured (no scrape, a server without the
    series, no GPU)."""

    client_bound: bool = False
    """The load generator's own check (:func:`ipsbench.loadgen.report.steps.client_entry`)."""
    client_reasons: tuple[str, ...] = ()
    load_cpu_percent: float | None = None
    """The busiest load-generating process, in % of a core."""
    send_lateness_p99_ms: float | None = None
    """Open loop: how late the sends left at p99."""
    host_cpu_percent: float | None = None
    """The load generator's CPUs (its affinity set) together, busy over the scrape interval."""
    host_cpus: int | None = None
    shares_server_host: bool = False
    """The server runs on the load generator's host (a loopback target)."""
    engine_busy: float | None = None
    """The instances' compute time over the interval and the instance count."""
    instances: int | None = None
    gpu_utilization: float | None = None
    """Mean of the GPUs' utilization (0..1)."""
    queue_ms: float | None = None
    compute_ms: float | None = None
    frontend_loop_cores: float | None = None
    """The busiest serving process's event-loop thread, in cores."""
    frontend_process: str | None = None
    """That process: ``server``, ``engine`` or ``frontend N``."""
    frontend_cpu_cores: float | None = None
    """Every serving process's CPU together (the engine's threads included), in cores."""
    frontend_cpu_share: float | None = None
    """The serving process busiest for its CPUs: its CPU time over the interval and the CPUs it may run on."""
    frontend_cpu_process: str | None = None
    frontend_cpus: int | None = None
    """The CPUs that process may run on."""
    loop_lag_p99_ms: float | None = None
    """The laggiest serving process's loop lag at p99."""


def figures_of(step: dict) -> StepFigures:
    """A report step's figures (its ``client``, ``open_loop`` and ``server`` blocks)."""
    client, open_loop, server = step.get("client") or {}, step.get("open_loop") or {}, step.get("server") or {}
    host, gpu = server.get("load_host") or {}, server.get("gpu") or {}
    processes = server.get("processes") or []
    busiest = max((p for p in processes if p.get("loop_cpu_cores") is not None),
                  key=lambda p: p["loop_cpu_cores"], default=None)
    lags = [p["loop_lag_p99_ms"] for p in processes if p.get("loop_lag_p99_ms") is not None]
    fullest = max((p for p in processes if p.get("cpu_cores") is not None and p.get("cpus")),
                  key=lambda p: p["cpu_cores"] / p["cpus"], default=None)
    cpus = [p["cpu_cores"] for p in processes if p.get("cpu_cores") is not None]
    lateness = open_loop.get("send_lateness_us") or {}
    return StepFigures(
        client_bound=bool(client.get("client_bound") or open_loop.get("client_bound")),
        client_reasons=tuple(client.get("reasons") or ()),
        load_cpu_percent=client.get("cpu_percent"),
        send_lateness_p99_ms=None if lateness.get("p99") is None else lateness["p99"] / 1000,
        host_cpu_percent=host.get("cpu_percent"),
        host_cpus=host.get("cpus"),
        shares_server_host=bool(host.get("shares_server_host")),
        engine_busy=server.get("engine_busy"),
        instances=server.get("instances"),
        gpu_utilization=gpu.get("utilization_mean"),
        queue_ms=server.get("queue_ms"),
        compute_ms=server.get("compute_ms"),
        frontend_loop_cores=None if busiest is None else busiest["loop_cpu_cores"],
        frontend_process=None if busiest is None else _process_name(busiest),
        frontend_cpu_cores=round(sum(cpus), 4) if cpus else None,
        frontend_cpu_share=None if fullest is None else round(fullest["cpu_cores"] / fullest["cpus"], 4),
        frontend_cpu_process=None if fullest is None else _process_name(fullest),
        frontend_cpus=None if fullest is None else fullest["cpus"],
        loop_lag_p99_ms=max(lags) if lags else None,
    )


def _process_name(process: dict) -> str:
    role = process.get("role") or "server"
    return f"front end {process.get('index')}" if role == "frontend" else role


def classify(figures: StepFigures, scraped: bool = True) -> dict:
    """The step's ``bottleneck`` block: the resource, every figure it was decided from, and a sentence saying it.
    ``scraped``: the server's metrics were read (without them only the load generator can be named)."""
    resource = _resource(figures) if scraped else ("load_generator" if figures.client_bound else None)
    return {"resource": resource, "figures": _figure_dict(figures), "sentence": _sentence(resource, figures)}


def _resource(f: StepFigures) -> str:
    if _at_least(f.gpu_utilization, ENGINE_BUSY) or _at_least(f.engine_busy, ENGINE_BUSY):
        return "engine"
    if f.client_bound:
        return "load_generator"
    host_busy = _at_least(f.host_cpu_percent, HOST_CPU_BUSY_PERCENT)
    if host_busy and f.shares_server_host:  # the server's CPU figures are the share it got of a contended host
        return "host_cpu"
    if _at_least(f.frontend_loop_cores, FRONTEND_LOOP_BUSY_CORES) or _at_least(f.frontend_cpu_share,
                                                                               FRONTEND_PROCESS_BUSY_SHARE):
        return "server_frontend"
    if host_busy:
        return "host_cpu"
    return "none"


def _at_least(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold


def _figure_dict(f: StepFigures) -> dict:
    return {
        "load_generator_cpu_percent": f.load_cpu_percent,
        "load_generator_client_bound": f.client_bound,
        "send_lateness_p99_ms": f.send_lateness_p99_ms,
        "host_cpu_percent": f.host_cpu_percent,
        "host_cpus": f.host_cpus,
        "shares_server_host": f.shares_server_host,
        "frontend_loop_cpu_cores": f.frontend_loop_cores,
        "frontend_process": f.frontend_process,
        "server_cpu_cores": f.frontend_cpu_cores,
        "server_process_cpu_share": f.frontend_cpu_share,
        "server_process": f.frontend_cpu_process,
        "server_process_cpus": f.frontend_cpus,
        "loop_lag_p99_ms": f.loop_lag_p99_ms,
        "engine_busy": f.engine_busy,
        "instances": f.instances,
        "gpu_utilization": f.gpu_utilization,
        "queue_ms": f.queue_ms,
        "compute_ms": f.compute_ms,
    }


def _percent(share: float) -> str:
    return f"{share * 100:.0f} %"


def _engine_words(f: StepFigures) -> str | None:
    """``GPU 15 % busy`` / ``engine 12 % busy (1 instance)``; None when neither was measured."""
    if f.gpu_utilization is not None:
        return f"GPU {_percent(f.gpu_utilization)} busy"
    if f.engine_busy is not None:
        instances = f" ({f.instances} instance{'s' if f.instances != 1 else ''})" if f.instances else ""
        return f"engine {_percent(f.engine_busy)} busy{instances}"
    return None


def _engine_name(f: StepFigures) -> str:
    return "the GPU's" if f.gpu_utilization is not None else "the engine's"


def _frontend_words(f: StepFigures) -> str | None:
    if f.frontend_loop_cores is None:
        return None
    where = f" ({f.frontend_process}'s event loop)" if f.frontend_process not in (None, "server") else ""
    process = ""
    if f.frontend_cpu_share is not None and f.frontend_cpus:
        whose = "its process" if f.frontend_cpu_process == f.frontend_process else f.frontend_cpu_process
        plural = "s" if f.frontend_cpus != 1 else ""
        process = f", {whose} at {_percent(f.frontend_cpu_share)} of its {f.frontend_cpus} CPU{plural}"
    lag = f", loop lag p99 {f.loop_lag_p99_ms:.1f} ms" if f.loop_lag_p99_ms is not None else ""
    return f"server front end at {_percent(f.frontend_loop_cores)} of a core{where}{process}{lag}"


def _sentence(resource: str | None, f: StepFigures) -> str:
    engine, frontend = _engine_words(f), _frontend_words(f)
    if resource is None:
        return "not named: the run did not scrape the server's metrics (--metrics-url), so only the load " \
               "generator's own limit can be told"
    if resource == "engine":
        waited = f", requests waited {f.queue_ms:.1f} ms in its queue" if f.queue_ms is not None else ""
        return f"{engine}{waited}: this figure is {_engine_name(f)} capacity"
    if resource == "host_cpu":
        cpus = f" ({f.host_cpus} CPU{'s' if f.host_cpus != 1 else ''})" if f.host_cpus else ""
        if f.shares_server_host:
            return (f"the host the server and the load generator share at {f.host_cpu_percent:.0f} % CPU{cpus}: "
                    "neither figure is a capacity, this one is the share each got of a saturated host")
        return (f"the load generator's host at {f.host_cpu_percent:.0f} % CPU{cpus}: its CPUs are saturated, "
                "so this figure is no capacity of the server's")
    if resource == "load_generator":
        why = "; ".join(f.client_reasons) or "it fell behind its schedule"
        return f"the load generator at its own limit ({why}): this figure is the load generator's, not the server's"
    measured = ", ".join(words for words in (frontend, engine) if words)
    if resource == "server_frontend":
        return f"{measured}: this figure is the server's, not {_engine_name(f)}"
    host = f", host {f.host_cpu_percent:.0f} % busy" if f.host_cpu_percent is not None else ""
    return (f"nothing saturated ({measured or 'no server figures'}{host}): latency-bound, the throughput is the "
            "requests in flight over the latency")
