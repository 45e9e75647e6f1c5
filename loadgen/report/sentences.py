"""The report's sentences, shared by every rendering: what was loaded, how it was measured, what the numbers mean.

A sentence is a tuple of parts: plain text, :class:`Strong` words and :class:`Code` (a name, option or path as a
user types it). Markdown and HTML render the parts their own way (``**…**`` / ``<strong>``, backticks /
``<code>``); neither parses the other's markup.
"""

from __future__ import annotations

from ipsbench.loadgen.report.cells import duration_words, ms, payload_mode, rate
from ipsbench.loadgen.report.p40 import engine_rows, report_precision
from ipsbench.loadgen.report.schema import is_open_loop, step_load

IMAGENET_VALIDATION_IMAGES = 50_000


class Strong(str):
    """Words to stress (bold)."""


class Code(str):
    """A model, option, command or path, as a user types it."""


Sentence = tuple[str, ...]


def plain(sentence: Sentence) -> str:
    """The sentence without emphasis (the console)."""
    return "".join(sentence)


def simulated_words(report: dict) -> str | None:
    """``SIMULATED (device-time model from <device>)`` for a run against a device-time model, else None."""
    simulated = report.get("simulated")
    return str(simulated.get("label") or "SIMULATED") if simulated else None


def report_title(report: dict) -> str:
    """The report's title: scenario, model and target, headed by SIMULATED when no device computed."""
    title = f"ipsbench-load {report['scenario']}: {report['model']['name']} on {report['target']['address']}"
    simulated = simulated_words(report)
    return f"{simulated}: {title}" if simulated else title


def simulated_line(report: dict) -> Sentence | None:
    """What a simulated run's figures are, for the top of the report; None for a run against a real engine."""
    words = simulated_words(report)
    if words is None:
        return None
    device = (report.get("simulated") or {}).get("device") or "an unnamed device"
    return (Strong(words), f": the target's backend replays a profile measured on {device}; no device computed. "
            "Each batch took the time that profile states, so these figures show the serving path (client, "
            "network, queue, batching) around a modelled device, not a measurement of any GPU.")


def verdict_line(report: dict) -> Sentence:
    parts: list[str] = [Strong("VALID" if report["valid"] else "INVALID"), f", {report['status']}"]
    if report.get("interrupted_by"):
        parts.append(f" ({report['interrupted_by']})")
    if report.get("verdict"):
        parts += ["; verdict ", Strong(report["verdict"])]
    slo = report.get("slo")
    if slo and slo.get("verdict"):
        parts += ["; SLO ", Strong(slo["verdict"])]
        if slo["verdict"] == "INCONCLUSIVE":
            settle = slo.get("settle_duration_s")
            parts.append(" (too few samples to claim its percentile, so neither met nor missed"
                         + (f"; --duration {settle}s would settle it)" if settle else ")"))
    parts.append(f"; started {report['started_at']}, {report['duration_s']:.1f} s.")
    return tuple(parts)


def headline_words(report: dict) -> str | None:
    """``p90 latency 3.21 ms over 812 successful requests (MLPerf SingleStream's figure)``: the run's headline in
    words, or None when its scenario has none."""
    headline = report.get("headline")
    if not headline:
        return None
    name = headline["percentile"]
    if headline.get("value_us") is None:
        return f"{name} latency: none (no successful request in the measured window)"
    samples = "" if headline.get("enough_samples") else f", too few to claim {name}"
    return (f"{name} latency {ms(headline['value_us'])} ms over {headline['samples']} successful requests"
            f"{samples} (MLPerf SingleStream's figure)")


def request_log_words(report: dict) -> str | None:
    """Where the per-request logs went, for a reader; None when the run wrote none."""
    request_log = report.get("request_log")
    if not request_log:
        return None
    files = ", ".join(request_log["files"]) or request_log["path"]
    return f"Per-request log (one CSV row per request, raw timings): {files} (written by {request_log['written_by']})."


def skipped_images_words(payload: dict) -> str | None:
    """How many of the folder's images were skipped as unusable, naming the first few; None when none was."""
    skipped = payload.get("skipped_images")
    if not skipped:
        return None
    examples = list(payload.get("skipped_image_examples") or ())
    if skipped > len(examples):
        examples.append(f"{skipped - len(examples)} more")
    return (f"{skipped} of {payload.get('images_read')} images skipped as unusable (they do not decode, or exceed "
            f"the decode limits): {'; '.join(examples)}.")


def _payload_words(payload: dict) -> str:
    words = f"payload {payload_mode(payload)}, {payload.get('images_per_request', 1)} image(s) per request"
    if payload.get("distinct_requests") is not None:
        words += f", {payload['distinct_requests']} distinct requests"
        if payload.get("request_bytes") is not None:
            words += f" of {payload['request_bytes']:,} bytes"
    if payload.get("description") or payload.get("source"):
        words += f" ({payload.get('description') or payload['source']})"
    if payload.get("transfer"):  # reports before it: not stated
        words += f", {transfer_words(payload)}"
    return words


def transfer_words(payload: dict) -> str:
    """How the tensors travelled: in the gRPC messages, or through shared memory (the report's ``transfer``)."""
    if payload.get("transfer") != "system_shared_memory":
        return "tensors sent in the gRPC messages"
    regions = payload.get("shared_memory") or {}
    return (f"tensors sent through system shared memory ({regions.get('regions', 0)} regions, "
            f"{regions.get('bytes', 0):,} bytes registered with the target; no tensor bytes in the gRPC messages)")


def setup_lines(report: dict) -> list[Sentence]:
    """What was loaded and how: target, model, payload, warm-up, deadline, open-loop arrivals, request log."""
    settings, model = report["settings"], report["model"]
    scenario_settings = settings.get(report["scenario"]) or {}
    model_input = model.get("input") or {}
    lines: list[Sentence] = []
    target = report.get("target") or {}
    server = target.get("server") or {}
    if server.get("name"):
        lines.append(("Target ", Code(str(target.get("address"))),
                      f": {server['name']} {server.get('version', '')}".rstrip() + "."))
    lines.append(("Model ", Code(model["name"]), " input ", Code(str(model_input.get("name"))),
                  f" {model_input.get('datatype')} {model_input.get('shape')}; {_payload_words(report['payload'])}."))
    if skipped := skipped_images_words(report["payload"]):
        lines.append((skipped,))
    warmup_s, drain_s = scenario_settings.get("warmup_s"), scenario_settings.get("drain_s")
    timing = (f"Each step: {warmup_s:g} s warm-up (counted, not measured), then the measured window"
              if warmup_s is not None else "Each step: the measured window")
    timing += f"; RPC deadline {settings['target']['deadline_s']:g} s"
    timing += f"; drain bound {drain_s:g} s." if drain_s is not None else "."
    lines.append((timing,))
    if any(is_open_loop(step) for step in report["steps"]):
        lines.append((
            f"Open loop: {scenario_settings.get('arrival')} arrivals, at most {scenario_settings.get('max_in_flight')} "
            "requests in flight; latency from each request's intended send time.",
        ))
    if request_log := request_log_words(report):
        lines.append((request_log,))
    return lines


def method_lines(report: dict) -> list[Sentence]:
    method = report["method"]
    lines = [(f"Latency: {method['latency']}.",), (f"Throughput: {method['throughput']}.",),
             (f"Accounting: {method['accounting']}.",)]
    for key, label in (("open_loop", "Open loop"), ("server", "Server side"), ("stability", "Stability"),
                       ("client", "Client"), ("slo", "SLO")):
        if method.get(key):
            lines.append((f"{label}: {method[key]}.",))
    return lines


def slo_search_line(slo: dict) -> str | None:
    """How the ``slo`` search went, in one sentence; None for a run that searched nothing."""
    search = slo.get("search")
    if not search:
        return None
    kind = search.get("kind", "load")
    unit = " requests/s" if kind == "rate" else ""
    bracket = search.get("bracket") or []
    text = f"Searched by {kind}"
    if len(bracket) == 2 and None not in bracket:
        text += f" in [{bracket[0]:g}, {bracket[1]:g}]{unit}"
    best = search.get("best")
    text += f"; highest {kind} meeting every objective: {best:g}{unit}" if best is not None else \
        f"; no {kind} met every objective"
    steps = search.get("steps")
    if steps:
        text += f" ({len(steps)} steps tried)"
    if search.get("stopped_because"):
        text += f"; stopped: {search['stopped_because']}"
    return text + "."


RESOURCE_WORDS = {"engine": "engine", "host_cpu": "host CPU", "load_generator": "load generator",
                  "server_frontend": "server front end", "none": "none (latency-bound)"}
"""A step's bottleneck resource in words."""


def bottleneck_lines(report: dict) -> list[Sentence]:
    """Each step's bottleneck: ``concurrency 4: **server front end**: server front end at 98 % of a core, …``."""
    lines = []
    for step in report["steps"]:
        bottleneck = step.get("bottleneck")
        if bottleneck:
            name = RESOURCE_WORDS.get(bottleneck.get("resource"), "not named")
            lines.append((f"{step_load(step)}: ", Strong(name), f": {bottleneck.get('sentence')}."))
    return lines


NO_SLO: Sentence = ("No SLO was set for this run, so there is no PASS/FAIL verdict.",)
NO_SCRAPE: Sentence = ("The run did not scrape the server's metrics (", Code("--metrics-url"),
                       "), so the time cannot be split into client + network, the server's front end, queue and "
                       "compute.")
NO_ERRORS: Sentence = ("No request ended in an error.",)
ONE_PROCESS: Sentence = ("The load ran in one process (no locust workers).",)


def what_numbers_mean(report: dict, images: int = IMAGENET_VALIDATION_IMAGES) -> list[Sentence]:
    """Short paragraphs: forward pass only vs end to end, batch and precision, their ratio, and how long
    ``images`` images take at the measured rates."""
    engine = report.get("engine") or {}
    best_engine = max(engine_rows(report), key=lambda result: result["images_per_s"], default=None)
    measured = [step for step in report["steps"] if step.get("images_per_s")]
    best_step = max(measured, key=lambda step: step["images_per_s"], default=None)
    paragraphs: list[Sentence] = []
    if best_engine:
        paragraphs.append((
            Strong("Engine"), " rows are the forward pass alone, inside one process (", Code("ipsbench-serve bench"),
            f"): one engine instance on {engine.get('device', 'the device')} "
            f"({engine.get('device_name', 'unnamed')}), {report_precision(report)}, each call timed whole with its "
            "host-device copies, and no network, serialization, queueing or image decoding. This is the number "
            "vendor sheets (NVIDIA's P40 inference report, MLPerf offline) quote.",
        ))
    else:
        paragraphs.append((
            Strong("Engine"), " figures are absent: this run was given no ", Code("ipsbench-serve bench --json"),
            " results, so only end-to-end rows are shown. The engine number (forward pass only, in one process) is "
            "the one vendor sheets quote; it is always higher.",
        ))
    paragraphs.append((
        Strong("End-to-end"), " rows are what clients got: images of successful requests that were serialized, "
        "crossed the network as KServe v2 gRPC, waited in the server's batching queue, ran and came back, counted "
        "inside each step's measured window (warm-up excluded); latency is per request.",
    ))
    paragraphs.append((
        Strong("Batch and precision"), " set the engine figure: a larger batch keeps the device busier and raises "
        "images/sec, but every image waits for its whole batch, so latency per request grows. Lower precision "
        "(FP16, INT8) runs faster where the hardware supports it; compare rows of the same precision only.",
    ))
    if best_engine and best_step:
        share = best_step["images_per_s"] / best_engine["images_per_s"]
        paragraphs.append((
            Strong("The ratio"), f": the best end-to-end rate, {rate(best_step['images_per_s'])} images/sec "
            f"({step_load(best_step)}), is {share:.0%} of the best engine rate, "
            f"{rate(best_engine['images_per_s'])} images/sec (batch {best_engine['batch_size']}). The gap is the "
            "cost of serving: client, network, serialization, queueing and preprocessing.",
        ))
    if best_step:
        text = (f": at {rate(best_step['images_per_s'])} images/sec end to end, the {images:,} ImageNet validation "
                f"images take {duration_words(images / best_step['images_per_s'])}")
        if best_engine:
            text += (f"; at the engine's {rate(best_engine['images_per_s'])} images/sec, "
                     f"{duration_words(images / best_engine['images_per_s'])}")
        paragraphs.append((Strong("How long"), text + "."))
    return paragraphs
