"""ONNX file → TensorRT engine (``model.plan``) with TensorRT 11's Python API: FP32, FP16 or INT8 from the graph.

TensorRT 11 networks are strongly typed: every tensor keeps the type the ONNX graph gives it, and there are no
precision flags and no calibrators. So the precision is the graph's: an FP32 graph builds an FP32 engine, an FP16
graph (FP16 weights and activations, casts to FP32 at the edges) an FP16 engine, and a graph with QuantizeLinear /
DequantizeLinear nodes (statically calibrated beforehand) an INT8 engine. :func:`check_graph_precision` refuses a
build whose parsed network does not say what was asked.

The engine has one optimization profile for the batch dimension (min 1, opt, max ``max_batch_size``). Kernel timings
are kept in a timing cache file in the model's folder (``<repo>/<name>/timing.cache``), so a rebuild of the same
network on the same GPU skips most of the autotuning. A SHA-256 manifest is written next to the plan: the server
deserializes only engines whose checksum matches.

An engine is specific to the GPU model and TensorRT version it was built with: build it on the serving host (or one
with the same GPU and TensorRT version). Importable without TensorRT; every entry point says what to install.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ipsbench.server.engines.tensorrt_engine import import_runtime
from ipsbench.server.repository.layout import MODEL_FILENAMES

FILENAME = MODEL_FILENAMES["tensorrt"]
TIMING_CACHE = "timing.cache"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class BuildSettings:
    precision: str = "fp16"
    """What the ONNX graph handed to :func:`build_engine` holds; checked against the parsed network."""
    max_batch_size: int = 64
    opt_batch_size: int | None = None
    """Batch size the kernels are tuned for (default: ``max_batch_size``)."""
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES


@dataclass(frozen=True)
class GraphTypes:
    """What a parsed network says about its precision."""

    io_types: dict[str, str]
    """Network input and output name → TensorRT data type name (``FLOAT``, ``HALF``, ...)."""
    tensor_types: frozenset[str]
    """Data type names of every layer's outputs."""
    quantize_layers: int
    dequantize_layers: int

    @property
    def has_fp16(self) -> bool:
        return "HALF" in self.tensor_types or "HALF" in self.io_types.values()

    @property
    def has_qdq(self) -> bool:
        return self.quantize_layers > 0 or self.dequantize_layers > 0


def _tensors(count: int, get) -> Iterator:
    for index in range(count):
        tensor = get(index)
        if tensor is not None:  # an optional output is absent
            yield tensor


def graph_types(network, trt) -> GraphTypes:
    """The types of ``network`` (a parsed ``INetworkDefinition``, or anything with its ``num_inputs`` /
    ``get_input``, ``num_outputs`` / ``get_output``, ``num_layers`` / ``get_layer`` and layers' ``type``,
    ``num_outputs`` / ``get_output`` and tensors' ``name`` / ``dtype``); ``trt`` gives ``LayerType``."""
    io = {
        tensor.name: tensor.dtype.name
        for tensor in (*_tensors(network.num_inputs, network.get_input),
                       *_tensors(network.num_outputs, network.get_output))
    }
    types: set[str] = set()
    quantize = dequantize = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.QUANTIZE:
            quantize += 1
        elif layer.type == trt.LayerType.DEQUANTIZE:
            dequantize += 1
        types.update(tensor.dtype.name for tensor in _tensors(layer.num_outputs, layer.get_output))
    return GraphTypes(io, frozenset(types), quantize, dequantize)


def precision_mismatch(precision: str, types: GraphTypes) -> str | None:
    """Why a graph of ``types`` cannot give a ``precision`` engine under strong typing, or None when it can."""
    if precision == "fp32":
        if types.has_qdq:
            return ("the graph has Q/DQ (QuantizeLinear/DequantizeLinear) nodes, so its engine would be INT8, not "
                    "FP32: build it with --precision int8, or hand in the FP32 graph")
        if types.has_fp16:
            return ("the graph has FP16 tensors, so its engine would not be FP32: build it with --precision fp16, "
                    "or hand in the FP32 graph")
        return None
    if precision == "fp16":
        if types.has_qdq:
            return ("the graph has Q/DQ (QuantizeLinear/DequantizeLinear) nodes, so its engine would be INT8, not "
                    "FP16: build it with --precision int8, or hand in the FP16 graph")
        if not types.has_fp16:
            return ("the graph has no FP16 tensors, and TensorRT 11 builds every layer in the type the graph gives "
                    "it (no FP16 flag): an FP16 engine needs an FP16 ONNX graph (FP16 weights and activations, "
                    "casts at the edges)")
        return None
    if precision == "int8":
        if not (types.quantize_layers and types.dequantize_layers):
            return ("the graph has no Q/DQ (QuantizeLinear/DequantizeLinear) pairs, and TensorRT 11 has no INT8 "
                    "calibrator: an INT8 engine needs a graph quantized beforehand (static calibration writes the "
                    "Q/DQ nodes)")
        return None
    raise ValueError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, not {precision}")


def check_graph_precision(network, trt, precision: str, source: str = "the ONNX graph") -> GraphTypes:
    """The network's :class:`GraphTypes`; ``ValueError`` naming ``source`` when they contradict ``precision``."""
    types = graph_types(network, trt)
    problem = precision_mismatch(precision, types)
    if problem:
        raise ValueError(f"cannot build a TensorRT {precision} engine from {source}: {problem}")
    return types


def _parse(trt, builder, logger, onnx_path: Path):
    # No creation flags: TensorRT 11 networks are always strongly typed (its STRONGLY_TYPED flag is deprecated and
    # ignored), and explicit batch has been the only mode since TensorRT 10.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    # The network refers to the parser's weights: keep the parser alive as long as the network.
    return network, parser


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    settings: BuildSettings,
    *,
    input_name: str,
    sample_shape: tuple[int, ...],
    cache_dir: Path,
    progress=None,
) -> Path:
    """Build ``plan_path`` from ``onnx_path`` (an FP32, FP16 or Q/DQ INT8 graph, as ``settings.precision`` says);
    returns the plan path. Raises :class:`TensorRTUnavailable` when TensorRT or a GPU is missing, ``ValueError``
    when the graph's types contradict the precision, ``RuntimeError`` with the parser's or builder's errors."""
    from ipsbench.server.repository.checksum import write_checksum

    if settings.precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, not {settings.precision}")
    trt, _ = import_runtime("ipsbench-export --format tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    check_graph_precision(network, trt, settings.precision, onnx_path.name)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profile = builder.create_optimization_profile()
    opt = settings.opt_batch_size or settings.max_batch_size
    profile.set_shape(
        input_name, (1, *sample_shape), (opt, *sample_shape), (settings.max_batch_size, *sample_shape)
    )
    config.add_optimization_profile(profile)

    cache_dir.mkdir(parents=True, exist_ok=True)
    timing_path = cache_dir / TIMING_CACHE
    timing_cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    if progress:
        progress(f"building the TensorRT {settings.precision} engine (batch 1..{settings.max_batch_size}, opt {opt})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT messages above)")
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    partial = plan_path.with_name(plan_path.name + ".partial")
    partial.write_bytes(bytes(serialized))
    os.replace(partial, plan_path)
    write_checksum(plan_path)
    return plan_path


def verify_plan(model, plan_path: Path, crop_size: int, *, seed: int, precision: str, max_batch_size: int, images,
                required_top1: float | None = None):
    """Same inputs through PyTorch and the engine, run by the server's TensorRT engine."""
    from ipsbench.export.verify import check
    from ipsbench.server.engines.tensorrt_engine import TensorRTEngine

    engine = TensorRTEngine.open(plan_path, device_id=0)
    try:
        return check(
            model,
            lambda x: engine.run({engine.input_names[0]: x})[engine.output_names[0]],
            crop_size,
            seed=seed,
            device="cuda:0",
            precision=precision,
            images=images,
            max_batch_size=max_batch_size,
            required_top1=required_top1,
        )
    finally:
        engine.close()
