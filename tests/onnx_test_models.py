"""Tiny ONNX test models built with ``onnx.helper``, with their config.pbtxt: an affine model, a deliberately slow one
(a loop that only spends time), a fragile one and an image-shaped one the load generator can drive, plus their
building blocks for test models of other shapes.
Imported by tests/conftest.py (the ``write_test_model`` fixture) and by any test folder's helpers."""

from __future__ import annotations

from pathlib import Path


SLOW_ITERATIONS_PER_MS = 3
"""Loop iterations of a 256x256 MatMul per millisecond, roughly, on one core; slow models are only 'slow enough'."""


def busy_output(trip: str, start: str, result: str) -> tuple[list, list]:
    """ONNX nodes and initializers that make ``output`` equal to ``result`` after ``trip`` iterations of a 256x256
    MatMul + Tanh on ``start``: single-threaded compute that takes time without changing the answer. The weights are
    the initializer ``W``, so ``start`` may be ``"W"`` or a tensor computed from it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    size = 256
    weights = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["m_in", "W"], ["product"]),
            helper.make_node("Tanh", ["product"], ["m_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("m_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("m_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    nodes = [
        helper.make_node("Loop", [trip, "cond", start], ["m_last"], body=body),
        # The loop's result, times zero, joins the output so ONNX Runtime cannot drop the loop as dead code.
        helper.make_node("ReduceSum", ["m_last"], ["last_total"], keepdims=0),
        helper.make_node("Mul", ["last_total", "zero"], ["nothing"]),
        helper.make_node("Add", [result, "nothing"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
    ]
    return nodes, inits


def save_test_model(graph, folder: Path, version: int = 1) -> None:
    """Check ``graph`` as an opset-17 model and save it as ``folder/<version>/model.onnx``."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / str(version) / "model.onnx")


def write_image_model(
    repository: Path,
    name: str,
    *,
    delay_ms: int = 0,
    max_batch_size: int = 8,
    max_queue_size: int = 0,
    max_queue_delay_us: int = 0,
    size: int = 8,
    extra_config: str = "",
) -> Path:
    """``repository/name``: input FP32 [-1,3,size,size], output FP32 [-1,3] (the per-channel mean). With
    ``delay_ms``, every execution first spends about that long in a loop of 256x256 MatMuls (one thread)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0)]
    inits = []
    if delay_ms:
        loop_nodes, inits = busy_output("trip", "W", "mean")
        nodes += loop_nodes
        inits.append(numpy_helper.from_array(np.array(delay_ms * SLOW_ITERATIONS_PER_MS, np.int64), "trip"))
    else:
        nodes.append(helper.make_node("Identity", ["mean"], ["output"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    folder = Path(repository) / name
    save_test_model(graph, folder)
    warm_one = (
        'model_warmup [ { name: "one" batch_size: 1 inputs { key: "input" value { data_type: TYPE_FP32 '
        f"dims: [ 3, {size}, {size} ] zero_data: true }} }} }} ]\n"
    )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}"
        f" default_queue_policy {{ max_queue_size: {max_queue_size} }} }}\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        f"{warm_one if delay_ms else ''}{extra_config}"
    )
    return folder


def write_test_model(
    repository: Path,
    name: str,
    *,
    kind: str = "affine",
    max_batch_size: int = 8,
    features: int = 4,
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 0,
    max_queue_size: int = 0,
    preferred_batch_sizes: tuple[int, ...] = (),
    instance_count: int = 1,
    delay_ms: int = 0,
    extra_config: str = "",
    version: int = 1,
    dims: tuple[int, ...] | None = None,
) -> Path:
    """Write ``repository/name`` with an ONNX model and its config.pbtxt; return the model folder.

    ``kind="affine"``: ``output = 2 * input + 1`` (input and output FP32 ``[features]`` per sample) — each response
    can be checked against its own request. ``kind="slow"``: ``output = input``, after about
    ``delay_ms * max(input)`` of single-threaded compute (so the all-zero warm-up is quick and a request of ones
    takes about ``delay_ms``). ``kind="fragile"``: ``output = input`` for one sample; the engine fails on any
    batch of more than one sample (to test engine errors). ``dims``: a sample's shape instead of ``[features]``
    (an image's ``(3, H, W)``, for the load generator), input and output alike (not for ``fragile``).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    batch_dims = ["batch"] if max_batch_size > 0 else []
    sample_dims = list(dims) if dims is not None else [features]
    shape = [*batch_dims, *sample_dims]
    inits = [
        numpy_helper.from_array(np.array(2, np.float32), "two"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
    ]
    if kind == "affine":
        nodes = [
            helper.make_node("Mul", ["input", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["output"]),
        ]
    elif kind == "slow":
        nodes = [
            helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0),
            helper.make_node("Mul", ["largest", "iterations_per_unit"], ["iterations"]),
            helper.make_node("Cast", ["iterations"], ["trip"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
            helper.make_node("Mul", ["W", "total"], ["m0"]),
        ]
        loop_nodes, loop_inits = busy_output("trip", "m0", "input")
        nodes += loop_nodes
        inits += [
            numpy_helper.from_array(np.array(delay_ms * SLOW_ITERATIONS_PER_MS, np.float32), "iterations_per_unit"),
            *loop_inits,
        ]
    elif kind == "fragile":
        shape_init = numpy_helper.from_array(np.array([1, features], np.int64), "one_sample")
        nodes = [helper.make_node("Reshape", ["input", "one_sample"], ["output"])]
        inits.append(shape_init)
    else:
        raise ValueError(f"unknown test model kind {kind!r}")
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        inits,
    )
    folder = Path(repository) / name
    save_test_model(graph, folder, version)

    config_dims = ", ".join(map(str, sample_dims))
    batching = ""
    if dynamic_batching:
        preferred = "".join(f" preferred_batch_size: {p}" for p in preferred_batch_sizes)
        batching = (
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}{preferred}"
            f" default_queue_policy {{ max_queue_size: {max_queue_size} }} }}\n"
        )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {config_dims} ] }} ]\n'
        f'output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {config_dims} ] }} ]\n'
        f"{batching}"
        f"instance_group [ {{ count: {instance_count} kind: KIND_CPU }} ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        f"{extra_config}"
    )
    return folder


KNOWN_COLOURS = (
    ("red", (185, 20, 20)),
    ("blue", (20, 20, 185)),
    ("orange", (185, 130, 20)),
    ("azure", (20, 130, 185)),
    ("yellow", (235, 235, 20)),
    ("cyan", (20, 235, 235)),
)
"""The classes of :func:`write_colour_classifier`, in class-index order: RGB colours in pairs that swapping R and B
turns into each other (so a front feeding BGR to an RGB model answers the other colour of the pair, every time), at
least 110 levels apart, and placed so that unnormalized input (mean 0, std 1) lands nearest its own prototype for
only two of the six (orange and azure), each with a margin of over 20 levels."""


def write_colour_classifier(
    repository: Path,
    name: str,
    *,
    colours: tuple[tuple[str, tuple[int, int, int]], ...] = KNOWN_COLOURS,
    size: int = 32,
    resize: int = 36,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    max_batch_size: int = 8,
) -> Path:
    """Write ``repository/name``: an image classifier whose right answer is known; return the model folder.

    Input ``input``: FP32 ``[3, size, size]`` per sample, an RGB image normalized as ``(pixel / 255 - mean) / std``
    (what a front or ipsbench-load's fp32 payload feeds; the config states that recipe, with ``resize``). Output
    ``output``: FP32 logits over the ``colours``, class k being the k-th colour: the image's mean per channel is
    compared with each colour's normalized prototype p_k, the logits being ``2 x·p_k - |p_k|²`` (``|x|² - |x - p_k|²``,
    so the top class is the nearest colour). A GlobalAveragePool and a MatMul plus bias; ``labels.txt`` names the
    classes (the classification extension's ``score:index:name``).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from ipsbench.server.preprocess.recipe import Recipe

    rgb = np.array([colour for _, colour in colours], dtype=np.float64)
    prototypes = (rgb / 255.0 - np.asarray(mean)) / np.asarray(std)  # N x 3, in the normalized space
    weights = (2.0 * prototypes.T).astype(np.float32)  # 3 x N
    bias = -(prototypes**2).sum(axis=1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["channel_means"]),
            helper.make_node("Flatten", ["channel_means"], ["means"], axis=1),
            helper.make_node("MatMul", ["means", "weights"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["output"]),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(colours)])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    folder = Path(repository) / name
    save_test_model(graph, folder)
    recipe = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
        for key, value in Recipe(size, resize, mean, std).parameters().items()
    )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
        f'output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {len(colours)} ]'
        ' label_filename: "labels.txt" } ]\n'
        "dynamic_batching { }\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        f"{recipe}"
    )
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label, _ in colours))
    return folder
