"""The TensorRT 11 path without TensorRT: the precision a graph gives (strong typing), the install hints, the server
image's TensorRT dependencies, and a guard against the TensorRT 10 API that 11 removed. TensorRT's network objects are
faked here (TensorRT is third-party and cannot be installed on these machines); the real build runs only where
TensorRT and a GPU are."""

from __future__ import annotations

import ast
import ctypes
import enum
import importlib.util
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from packaging.requirements import Requirement
from tritonclient.grpc import model_config_pb2

from ipsbench.export import tensorrt as trt_export
from ipsbench.export.tensorrt import BuildSettings, build_engine, check_graph_precision, graph_types
from ipsbench.server.backends.tensorrt import _check_io
from ipsbench.server.engines import tensorrt_engine
from ipsbench.server.engines.tensorrt_engine import INSTALL_HINT, TensorRTEngine, TensorRTUnavailable, import_runtime
from ipsbench.server.model_spec import ModelSpec
from ipsbench.server.repository.checksum import write_checksum

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()


# -- a stand-in for the few TensorRT network objects the precision check reads ---------------------------------


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT64 = 3


class LayerType(enum.Enum):
    CONVOLUTION = 0
    ACTIVATION = 1
    CAST = 2
    QUANTIZE = 3
    DEQUANTIZE = 4
    CONSTANT = 5


class FakeTrt:
    LayerType = LayerType
    DataType = DataType


@dataclass
class Tensor:
    name: str
    dtype: DataType


@dataclass
class Layer:
    type: LayerType
    outputs: list[Tensor | None]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> Tensor | None:
        return self.outputs[index]


@dataclass
class Network:
    inputs: list[Tensor]
    outputs: list[Tensor]
    layers: list[Layer] = field(default_factory=list)

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, index: int) -> Tensor:
        return self.inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self.outputs[index]

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]


def _network(*body: tuple[LayerType, DataType], io: DataType = DataType.FLOAT) -> Network:
    """input → the body's layers (each one output of the given type) → output."""
    layers = [Layer(kind, [Tensor(f"t{i}", dtype)]) for i, (kind, dtype) in enumerate(body)]
    return Network([Tensor("input", io)], [Tensor("output", io)], layers)


FP32_GRAPH = _network((LayerType.CONVOLUTION, DataType.FLOAT), (LayerType.ACTIVATION, DataType.FLOAT))
# What export_onnx(precision="fp16") writes: FP32 at the edges, casts, FP16 inside.
FP16_GRAPH = _network(
    (LayerType.CAST, DataType.HALF), (LayerType.CONVOLUTION, DataType.HALF), (LayerType.ACTIVATION, DataType.HALF),
    (LayerType.CAST, DataType.FLOAT),
)
# A statically calibrated graph: Q/DQ pairs in front of the convolution, FP32 elsewhere.
QDQ_GRAPH = _network(
    (LayerType.QUANTIZE, DataType.INT8), (LayerType.DEQUANTIZE, DataType.FLOAT),
    (LayerType.CONSTANT, DataType.INT8), (LayerType.DEQUANTIZE, DataType.FLOAT),
    (LayerType.CONVOLUTION, DataType.FLOAT), (LayerType.ACTIVATION, DataType.FLOAT),
)


@pytest.mark.parametrize(
    ("graph", "precision"), [(FP32_GRAPH, "fp32"), (FP16_GRAPH, "fp16"), (QDQ_GRAPH, "int8")],
    ids=["fp32", "fp16", "int8"],
)
def test_a_graph_builds_the_precision_its_types_give(graph, precision):
    types = check_graph_precision(graph, FakeTrt, precision)
    assert types.io_types == {"input": "FLOAT", "output": "FLOAT"}


def test_an_fp16_build_from_a_graph_without_fp16_tensors_is_refused():
    with pytest.raises(ValueError) as refused:
        check_graph_precision(FP32_GRAPH, FakeTrt, "fp16", "model.onnx")
    message = str(refused.value)
    assert message.startswith("cannot build a TensorRT fp16 engine from model.onnx")
    assert "no FP16 tensors" in message and "FP16 ONNX graph" in message


def test_an_int8_build_without_qdq_layers_is_refused():
    for graph in (FP32_GRAPH, FP16_GRAPH):
        with pytest.raises(ValueError, match=r"int8 engine .*no Q/DQ .*static calibration"):
            check_graph_precision(graph, FakeTrt, "int8")
    # A lone Quantize without its Dequantize is no explicit quantization either.
    half_pair = _network((LayerType.QUANTIZE, DataType.INT8), (LayerType.CONVOLUTION, DataType.FLOAT))
    with pytest.raises(ValueError, match="no Q/DQ"):
        check_graph_precision(half_pair, FakeTrt, "int8")


@pytest.mark.parametrize(("graph", "precision", "says"), [
    (FP16_GRAPH, "fp32", "FP16 tensors"),
    (QDQ_GRAPH, "fp32", "would be INT8"),
    (QDQ_GRAPH, "fp16", "would be INT8"),
], ids=["fp16-graph-as-fp32", "qdq-graph-as-fp32", "qdq-graph-as-fp16"])
def test_a_graph_of_another_precision_is_refused_with_the_flag_that_fits(graph, precision, says):
    with pytest.raises(ValueError, match=says):
        check_graph_precision(graph, FakeTrt, precision)


def test_fp16_inputs_and_outputs_count_as_an_fp16_graph_and_optional_outputs_are_skipped():
    graph = _network((LayerType.CONVOLUTION, DataType.HALF), io=DataType.HALF)
    graph.layers.append(Layer(LayerType.ACTIVATION, [None, Tensor("kept", DataType.HALF)]))
    types = check_graph_precision(graph, FakeTrt, "fp16")
    assert types.io_types == {"input": "HALF", "output": "HALF"}
    assert types.tensor_types == {"HALF"} and not types.has_qdq


def test_graph_types_counts_quantize_and_dequantize_layers():
    types = graph_types(QDQ_GRAPH, FakeTrt)
    assert (types.quantize_layers, types.dequantize_layers) == (1, 2)
    assert types.tensor_types == {"INT8", "FLOAT"}


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="one of fp32, fp16, int8"):
        check_graph_precision(FP32_GRAPH, FakeTrt, "bf16")


def test_build_settings_have_no_calibration():
    settings = BuildSettings(precision="int8", max_batch_size=8, opt_batch_size=4, workspace_bytes=1 << 20)
    assert not any("calibration" in name for name in settings.__dataclass_fields__)
    assert not hasattr(trt_export, "CALIBRATION_CACHE")


# -- without TensorRT ----------------------------------------------------------------------------------------


@pytest.fixture
def without_tensorrt(monkeypatch):
    """``import tensorrt`` fails here even where TensorRT is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_the_modules_import_without_tensorrt():
    script = ("import sys; sys.modules['tensorrt'] = None\n"
              "import ipsbench.export.tensorrt, ipsbench.server.engines.tensorrt_engine\n"
              "import ipsbench.server.backends.tensorrt\n"
              "assert 'torch' not in sys.modules, 'importing the TensorRT modules imported PyTorch'\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_tensorrt_build_and_open_say_what_to_install(without_tensorrt, tmp_path):
    plan = tmp_path / "repo" / "m" / "1" / "model.plan"
    with pytest.raises(TensorRTUnavailable) as unavailable:
        build_engine(tmp_path / "model.onnx", plan, BuildSettings(precision="fp16"), input_name="input",
                     sample_shape=(3, 8, 8), cache_dir=tmp_path / "repo" / "m")
    assert str(unavailable.value).startswith("ipsbench-export --format tensorrt needs TensorRT")
    assert INSTALL_HINT in str(unavailable.value)
    assert not (tmp_path / "repo").exists()  # refused before anything was written

    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not an engine")
    write_checksum(plan)
    with pytest.raises(TensorRTUnavailable, match="the TensorRT backend needs TensorRT"):
        TensorRTEngine.open(plan, 0)


def _fake_tensorrt(monkeypatch, version: str) -> None:
    module = type(sys)("tensorrt")
    module.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", module)


def test_tensorrt_10_is_refused_naming_11(monkeypatch):
    _fake_tensorrt(monkeypatch, "10.13.3.9")
    with pytest.raises(TensorRTUnavailable, match=r"written for TensorRT 11 .*this is TensorRT 10\.13\.3\.9"):
        import_runtime("ipsbench-export --format tensorrt")


def test_missing_cuda_bindings_names_the_extra(monkeypatch):
    _fake_tensorrt(monkeypatch, "11.4.0.106")
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(TensorRTUnavailable, match=r"CUDA runtime bindings \(cuda-python\)") as unavailable:
        import_runtime()
    assert INSTALL_HINT in str(unavailable.value)


def _cuda_devices() -> int | None:
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return None
    from cuda.bindings import runtime

    error, count = runtime.cudaGetDeviceCount()
    return count if error == runtime.cudaError_t.cudaSuccess else 0


def test_no_gpu_is_reported_through_the_cuda_runtime(monkeypatch):
    devices = _cuda_devices()
    if devices is None:
        pytest.skip("cuda-bindings (cuda-python) is not installed here")
    if devices:
        pytest.skip("a GPU is present: the no-GPU message cannot be seen")
    _fake_tensorrt(monkeypatch, "11.4.0.106")
    with pytest.raises(TensorRTUnavailable, match=r"the TensorRT backend needs an NVIDIA GPU; the CUDA runtime sees "
                                                  r"none here \(cuda\w+\)"):
        import_runtime()


def test_an_engine_tensor_type_without_numpy_type_is_named():
    class Trt:
        @staticmethod
        def nptype(trt_type):
            if trt_type is DataType.FLOAT:
                return np.float32
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    assert tensorrt_engine.numpy_dtype(Trt, DataType.FLOAT, "input") == np.float32
    with pytest.raises(ValueError, match="engine tensor 'logits' is INT64, which has no numpy type"):
        tensorrt_engine.numpy_dtype(Trt, DataType.INT64, "logits")


# -- the engine's buffers and calls, over a CUDA runtime in host memory and a fake engine ----------------------


class HostCudaRuntime:
    """The few ``cuda.bindings.runtime`` calls the engine makes, with host memory standing in for the device."""

    class cudaError_t(enum.Enum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaStreamNonBlocking = 1

    class Stream:
        def __int__(self) -> int:
            return 0x5EED

    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array] = {}
        self.allocations = 0
        self.streams: set[HostCudaRuntime.Stream] = set()
        self.device = None

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaGetErrorName(self, error):
        return self._ok(error.name.encode())

    def cudaGetDeviceCount(self):
        return self._ok(1)

    def cudaSetDevice(self, device):
        self.device = device
        return self._ok()

    def cudaMalloc(self, nbytes):
        memory = ctypes.create_string_buffer(nbytes)
        self.live[ctypes.addressof(memory)] = memory
        self.allocations += 1
        return self._ok(ctypes.addressof(memory))

    def cudaFree(self, pointer):
        if self.live.pop(pointer, None) is None:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return self._ok()

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert stream in self.streams
        device, host = (dst, src) if kind is self.cudaMemcpyKind.cudaMemcpyHostToDevice else (src, dst)
        assert device in self.live and nbytes <= len(self.live[device]), "a copy outside a device buffer"
        ctypes.memmove(dst, src, nbytes)
        return self._ok()

    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        stream = self.Stream()
        self.streams.add(stream)
        return self._ok(stream)

    def cudaStreamSynchronize(self, stream):
        return self._ok()

    def cudaStreamDestroy(self, stream):
        self.streams.remove(stream)
        return self._ok()


class FakeRuntimeTrt:
    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    @staticmethod
    def nptype(trt_type):
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[trt_type]


class DoublingEngine:
    """An engine of one (batch, 3) input and its double as output, of the given TensorRT types, batch 1..8."""

    def __init__(self, input_type=DataType.FLOAT, output_type=DataType.HALF) -> None:
        self.types = {"input": input_type, "output": output_type}
        self.num_io_tensors = 2

    def get_tensor_name(self, index):
        return ("input", "output")[index]

    def get_tensor_shape(self, name):
        return (-1, 3)

    def get_tensor_dtype(self, name):
        return self.types[name]

    def get_tensor_mode(self, name):
        return FakeRuntimeTrt.TensorIOMode.INPUT if name == "input" else FakeRuntimeTrt.TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return [(1, 3), (8, 3), (8, 3)]

    def create_execution_context(self):
        return DoublingContext(self)


class DoublingContext:
    def __init__(self, engine: DoublingEngine) -> None:
        self.engine = engine
        self.shape = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= 8 or tuple(shape[1:]) != (3,):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 0x5EED
        count = int(np.prod(self.shape))
        dtypes = {name: np.dtype(FakeRuntimeTrt.nptype(t)) for name, t in self.engine.types.items()}
        source = np.frombuffer((ctypes.c_char * (count * dtypes["input"].itemsize)).from_address(
            self.addresses["input"]), dtype=dtypes["input"])
        target = np.frombuffer((ctypes.c_char * (count * dtypes["output"].itemsize)).from_address(
            self.addresses["output"]), dtype=dtypes["output"])
        target[:] = source * 2
        return True


def test_the_engine_casts_on_the_host_reuses_device_buffers_and_frees_them_on_close():
    cuda = HostCudaRuntime()
    engine = TensorRTEngine(FakeRuntimeTrt, cuda, DoublingEngine(), device_id=0)
    assert engine.inputs["input"].max_batch_size == 8 and engine.outputs["output"].dtype == np.float16
    batch = np.arange(12, dtype=np.float64).reshape(4, 3)  # cast to the engine's FP32 on the host
    result = engine.run({"input": batch})["output"]
    assert result.dtype == np.float16 and result.shape == (4, 3)
    np.testing.assert_array_equal(result, batch * 2)
    assert cuda.allocations == 2
    engine.run({"input": batch[:2]})  # smaller: the same buffers
    assert cuda.allocations == 2
    bigger = np.ones((8, 3), dtype=np.float32)
    np.testing.assert_array_equal(engine.run({"input": bigger})["output"], bigger * 2)
    assert cuda.allocations == 4 and len(cuda.live) == 2  # grown, the smaller ones freed
    with pytest.raises(ValueError, match=r"TensorRT refused shape \[9, 3\] for input 'input'"):
        engine.run({"input": np.ones((9, 3), dtype=np.float32)})
    engine.close()
    assert not cuda.live and not cuda.streams
    engine.close()  # a second close is a no-op


def _spec(datatype: str) -> ModelSpec:
    config = text_format.Parse(
        'name: "m" platform: "tensorrt_plan" max_batch_size: 8\n'
        f'input [ {{ name: "input" data_type: {datatype} dims: [ 3 ] }} ]\n'
        f'output [ {{ name: "output" data_type: {datatype} dims: [ 3 ] }} ]\n',
        model_config_pb2.ModelConfig(),
    )
    return ModelSpec.from_config(config, "tensorrt", "tensorrt_plan")


def test_the_backend_checks_fp16_engine_io_against_the_config():
    cuda = HostCudaRuntime()
    fp16_io = TensorRTEngine(FakeRuntimeTrt, cuda, DoublingEngine(DataType.HALF, DataType.HALF), device_id=0)
    fp32_io = TensorRTEngine(FakeRuntimeTrt, cuda, DoublingEngine(DataType.FLOAT, DataType.FLOAT), device_id=0)
    _check_io(_spec("TYPE_FP16"), fp16_io)
    _check_io(_spec("TYPE_FP32"), fp32_io)  # an FP16 graph that casts at its edges: FP32 I/O, FP32 config
    with pytest.raises(ValueError, match="input 'input' is float16 in the engine but float32 in the config: "
                                         "declare it TYPE_FP16"):
        _check_io(_spec("TYPE_FP32"), fp16_io)
    with pytest.raises(ValueError, match="declare it TYPE_FP32"):
        _check_io(_spec("TYPE_FP16"), fp32_io)
    for engine in (fp16_io, fp32_io):
        engine.close()


# -- the server image serves plans: TensorRT 11 and cuda-python, no PyTorch -----------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name.split(".")[0] for name in names}


def test_the_tensorrt_backend_needs_no_pytorch():
    for path in (ROOT / "server" / "engines" / "tensorrt_engine.py", ROOT / "server" / "backends" / "tensorrt.py"):
        imported = _imports(path)
        assert "torch" not in imported, f"{path.name} imports PyTorch, which the server image does not install"
    assert {"tensorrt", "cuda"} <= _imports(ROOT / "server" / "engines" / "tensorrt_engine.py")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_the_server_image_installs_what_the_tensorrt_extra_names_at_pinned_11x_versions():
    extra = [Requirement(text) for text in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]]
    assert {r.name for r in extra} == {"tensorrt", "cuda-bindings"}
    dockerfile = (ROOT / "deploy" / "docker" / "server.Dockerfile").read_text()
    # RUN instructions with their continuation lines joined
    installs = " ".join(line for line in dockerfile.replace("\\\n", " ").splitlines()
                        if line.startswith("RUN") and "pip install" in line)
    pins = _pins()
    for requirement in extra:
        # The image takes TensorRT's CUDA 13 build of the metapackage, as its CUDA 13 base needs.
        installed = "tensorrt-cu13" if requirement.name == "tensorrt" else requirement.name
        assert re.search(rf"(?<![\w-]){re.escape(installed)}(?![\w-])", installs), f"the image lacks {installed}"
        assert requirement.specifier.contains(pins[installed]), f"{installed}=={pins[installed]} vs {requirement}"
        assert requirement.specifier.contains(pins[requirement.name])
    assert pins["tensorrt-cu13"].split(".")[0] == "11" == pins["tensorrt"].split(".")[0]


# -- the TensorRT 10 API that TensorRT 11 removed stays out ----------------------------------------------------

# TensorRT 11.x removed these (docs.nvidia.com/deeplearning/tensorrt, "Removed Python APIs and Replacements"); any of
# them fails only at build time on a GPU machine, so it is caught here instead.
REMOVED_API = ("BuilderFlag.FP16", "BuilderFlag.INT8", "IInt8EntropyCalibrator", "IInt8Calibrator",
               "set_calibration_profile", "int8_calibrator", "platform_has_fast_fp16", "platform_has_fast_int8",
               "OBEY_PRECISION_CONSTRAINTS")


def _project_python() -> list[Path]:
    skipped = {".git", ".venv", "build", "dist", "node_modules"}
    return [path for path in ROOT.rglob("*.py")
            if not skipped & set(path.relative_to(ROOT).parts) and path.resolve() != THIS_FILE]


def test_no_removed_tensorrt_api_appears_in_the_project():
    files = _project_python()
    assert any(path.name == "tensorrt.py" for path in files) and len(files) > 100  # the walk found the project
    found = [f"{path.relative_to(ROOT)}: {name}" for path in files for name in REMOVED_API if name in path.read_text()]
    assert not found, "TensorRT 11 removed these APIs: " + "; ".join(found)


# -- the real build, where TensorRT and a GPU are --------------------------------------------------------------


def _tensorrt_and_gpu() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and bool(_cuda_devices())


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs TensorRT 11 and a GPU")
def test_a_tiny_network_builds_at_the_graph_precision_and_runs(tmp_path):
    import torch

    from ipsbench.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    for precision, atol in (("fp32", 1e-4), ("fp16", 2e-2)):
        onnx_path = export_onnx(model, 8, tmp_path / f"{precision}.onnx", precision=precision)
        plan = tmp_path / precision / "1" / "model.plan"
        build_engine(onnx_path, plan, BuildSettings(precision=precision, max_batch_size=4, workspace_bytes=1 << 28),
                     input_name=INPUT_NAME, sample_shape=(3, 8, 8), cache_dir=tmp_path / precision)
        assert (tmp_path / precision / "timing.cache").is_file()
        engine = TensorRTEngine.open(plan, 0)
        try:
            assert engine.inputs[INPUT_NAME].dtype == np.float32  # the FP16 graph casts at its edges
            assert engine.inputs[INPUT_NAME].max_batch_size == 4
            for _ in range(2):  # the second batch reuses the device buffers
                served = engine.run({INPUT_NAME: x})[OUTPUT_NAME]
                np.testing.assert_allclose(served, expected, rtol=0, atol=atol)
        finally:
            engine.close()
    with pytest.raises(ValueError, match="no FP16 tensors"):
        build_engine(tmp_path / "fp32.onnx", tmp_path / "refused" / "model.plan", BuildSettings(precision="fp16"),
                     input_name=INPUT_NAME, sample_shape=(3, 8, 8), cache_dir=tmp_path / "refused")
