"""``ipsbench-serve bench --mode train``: training images/s of an entry's network, per batch size, in PyTorch.

A repository entry is an exported engine (ONNX, TorchScript, TensorRT), which cannot be trained; what is trained is
the torchvision network it was exported from (the config's ``ipsbench.network`` parameter, which ipsbench-export
writes, or ``--network``), built with the exporter's seeded random weights at the entry's input size, on the
entry's instance device. One step is forward + cross-entropy on random labels + backward + an SGD step (momentum
0.9), timed with the same warm-up, duration and NVML sampling as inference (:func:`ipsbench.server.bench.measure`).
Every step waits for its loss (``loss.item()``), so a step's time includes all of its device work.

Precision: an FP32 entry trains in strict FP32 (TF32 off on CUDA, as the served FP32 engine); an FP16 or INT8 entry
on CUDA trains in mixed precision (``torch.autocast`` FP16 with a ``GradScaler``: ``amp_fp16``); on the CPU every
entry trains in FP32, and the result's ``note`` says so.
"""

from __future__ import annotations

import logging

from ipsbench.server.bench import (
    MEASURES,
    BatchSizeResult,
    BenchResult,
    BenchSettings,
    device_name,
    effective_batch_sizes,
    engine_parameters,
    find_entry,
    measure_batch_sizes,
    software_versions,
)
from ipsbench.server.bench_power import open_power_sampler
from ipsbench.server.model_spec import InstanceSpec, ModelSpec

log = logging.getLogger(__name__)

NETWORK_PARAMETER = "ipsbench.network"
"""Config parameter: the torchvision network an entry was exported from (ipsbench-export writes it)."""
LEARNING_RATE = 0.01
MOMENTUM = 0.9
INSTALL_HINT = "pip install 'ipsbench[export]'"


def _torch():
    try:
        import torch
        import torchvision  # noqa: F401 - the networks come from it
    except ImportError as exc:
        raise RuntimeError(
            f"ipsbench-serve bench --mode train needs PyTorch and torchvision ({exc.name} is not installed): "
            f"{INSTALL_HINT}"
        ) from exc
    return torch


class TrainStep:
    """One training step of ``network`` on a fixed random batch: forward, cross-entropy, backward, SGD."""

    def __init__(self, network, num_classes: int, device, precision: str, seed: int = 0) -> None:
        torch = _torch()
        self._torch = torch
        self.network = network.to(device).train()
        self.device = device
        self.num_classes = num_classes
        self.mixed = precision == "amp_fp16"
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.scaler = torch.amp.GradScaler("cuda") if self.mixed else None
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.last_loss: float | None = None

    def for_batch(self, batch_size: int, image_shape: tuple[int, ...]):
        """A callable running one step on a random batch of ``batch_size`` images of ``image_shape`` (C, H, W)."""
        torch = self._torch
        images = torch.rand((batch_size, *image_shape), generator=self.generator).to(self.device)
        labels = torch.randint(0, self.num_classes, (batch_size,), generator=self.generator).to(self.device)
        return lambda: self.step(images, labels)

    def step(self, images, labels) -> float:
        torch = self._torch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.mixed):
            outputs = self.network(images)
            # Inception v3 and GoogLeNet also give auxiliary logits in training mode; the main ones are trained.
            logits = getattr(outputs, "logits", outputs)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.steps += 1
        self.last_loss = loss.item()  # waits for the step's device work
        return self.last_loss


def train_device(instance: InstanceSpec):
    """The entry's instance device: ``cuda:N`` for a GPU (or AUTO) instance where CUDA is available, else the CPU."""
    torch = _torch()
    if instance.kind in ("GPU", "AUTO") and torch.cuda.is_available():
        return torch.device("cuda", instance.device_id or 0)
    if instance.kind == "GPU":
        log.info("the entry's instance is KIND_GPU but CUDA is not available here: training on the CPU")
    return torch.device("cpu")


def train_precision(entry_precision: str, device_type: str) -> tuple[str, str | None]:
    """(precision trained in, note or None) for an entry of ``entry_precision`` on ``device_type``."""
    if entry_precision == "fp32":
        return "fp32", None
    if device_type == "cuda":
        return "amp_fp16", (f"the entry is {entry_precision}: trained in mixed precision (FP16 autocast, FP32 "
                            "weights, gradient scaling)")
    return "fp32", f"the entry is {entry_precision}: trained in FP32 on the CPU (no mixed precision there)"


def network_name(spec: ModelSpec, asked: str | None) -> str:
    """``--network``, else the entry's ``ipsbench.network``; ValueError naming what to pass when neither is there."""
    if asked:
        name = asked
    elif NETWORK_PARAMETER in spec.config.parameters and spec.config.parameters[NETWORK_PARAMETER].string_value:
        name = spec.config.parameters[NETWORK_PARAMETER].string_value.strip()
    else:
        raise ValueError(
            f"model '{spec.name}' does not say which network it was exported from (no '{NETWORK_PARAMETER}' "
            "parameter in its config): pass --network NAME (a torchvision classifier, e.g. resnet50)"
        )
    from ipsbench.export import models

    if name not in models.available_models():
        raise ValueError(f"unknown network '{name}': `ipsbench-export --list` shows the torchvision networks")
    return name


def image_input(engine: ModelSpec) -> tuple[str, tuple[int, int, int]]:
    """The entry's one image input: its name and its (C, H, W) per sample."""
    if len(engine.inputs) != 1:
        raise ValueError(f"--mode train needs a model with one image input, got {len(engine.inputs)} inputs")
    name, tensor = next(iter(engine.inputs.items()))
    if len(tensor.dims) != 3 or not tensor.fixed:
        raise ValueError(f"--mode train needs a fixed (C, H, W) input; '{name}' has dims {list(tensor.dims)}")
    return name, tuple(tensor.dims)


def num_classes(engine: ModelSpec) -> int:
    """Classes of the entry's first output (its logits per sample); the random labels are drawn among them."""
    output = next(iter(engine.outputs.values()))
    if not output.fixed or not output.dims or output.dims[-1] < 1:
        raise ValueError(f"--mode train needs fixed logits as the first output, got dims {list(output.dims)}")
    return output.dims[-1]


def run_train_bench(settings: BenchSettings, on_result=None) -> BenchResult:
    """Time a training step at every batch size; ``on_result(result, batch)`` as each batch size finishes."""
    _torch()  # the missing-package error before the repository is read
    spec, version, _ = find_entry(settings)
    engine = spec.engine_spec()
    name = network_name(spec, settings.network)
    input_name, image_shape = image_input(engine)
    device = train_device(spec.instances[0])
    parameters = engine_parameters(spec)
    precision, note = train_precision(parameters.get("precision", "fp32").strip().lower(), device.type)

    from ipsbench.export import models
    from ipsbench.server.engines.torch_engine import configure_process
    from ipsbench.server.engines.torch_options import TorchOptions

    configure_process(device, TorchOptions(precision="fp32" if precision == "fp32" else "fp16"))
    network = models.build(name, seed=settings.seed, image_size=image_shape[-1])
    trainer = TrainStep(network, num_classes(engine), device, precision, seed=settings.seed)
    result = BenchResult(
        model=spec.name,
        version=version,
        platform=spec.platform,
        backend="pytorch",
        device=str(device),
        device_name=device_name(str(device)),
        precision=precision,
        parameters=parameters,
        input_shapes={input_name: [-1, *image_shape]},
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        software=software_versions(),
        mode="train",
        measures=MEASURES["train"],
        network=name,
        note=note,
    )
    if note:
        log.info("%s", note)

    def record_loss(result: BenchResult, batch: BatchSizeResult) -> None:
        batch.final_loss = trainer.last_loss
        if on_result is not None:
            on_result(result, batch)

    measure_batch_sizes(
        result,
        effective_batch_sizes(spec, settings.batch_sizes),
        lambda batch_size: trainer.for_batch(batch_size, image_shape),
        settings,
        open_power_sampler(str(device)),
        record_loss,
    )
    return result
