"""Tiny ONNX test models built with ``onnx.helper``, with their config.pbtxt: an affine model, a deliberately slow one
(a loop that only spends time) and a fragile one, plus their building blocks for test models of other shapes.
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
