#!/usr/bin/env bash
# The GPU check: on a GPU box with no network, export → ipsbench-serve on the GPU → engine bench →
# ipsbench-load sweep → one P40-style table (engine and end-to-end images/sec, latency, GPU utilization, power).
# Runs from the repository root, with ipsbench installed or not (then its three role folders are linked into a
# temporary ipsbench/ package on PYTHONPATH). Stops everything it starts.
set -euo pipefail

MODEL=${MODEL:-resnet50}
PRECISION=${PRECISION:-fp16}  # fp32, fp16, or int8 (TensorRT only; CALIBRATION_IMAGES=DIR to calibrate on)
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64}
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-64}
CONCURRENCY=${CONCURRENCY:-1,16,64}
IMAGES_PER_REQUEST=${IMAGES_PER_REQUEST:-1}
DURATION=${DURATION:-5s}      # one measurement window; a level runs 3 to MAX_TRIALS of them until they agree
MAX_TRIALS=${MAX_TRIALS:-5}
WARMUP=${WARMUP:-3s}
BENCH_DURATION=${BENCH_DURATION:-3s}
LOAD_PROCESSES=${LOAD_PROCESSES:-4}  # locust worker processes of ipsbench-load
OUT=${OUT:-reports/gpu-check-$(date +%Y%m%d-%H%M%S)}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-300}
PYTHON=${PYTHON:-python3}

die() { echo "gpu-check: $*" >&2; exit 2; }

# Fail before starting anything when there is no GPU to check.
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi sees no GPU: $(nvidia-smi -L 2>&1 | head -n 1)"
"$PYTHON" - <<'EOF' || die "PyTorch cannot use the GPU (torch.cuda.is_available() is false); install a CUDA build of torch"
import sys
try:
    import torch
except ImportError:
    sys.exit("PyTorch is not installed")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

# Not installed: link the role folders as ipsbench.server/.loadgen/.export, the names they install under.
if ! "$PYTHON" -c 'import ipsbench.server' 2>/dev/null; then
  shim=$(mktemp -d)
  mkdir "$shim/ipsbench"
  for role in server loadgen export; do ln -s "$PWD/$role" "$shim/ipsbench/$role"; done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c 'import ipsbench.server' || die "cannot import ipsbench.server from $PWD (run from the repository root)"
fi

# The best GPU backend installed here: a TensorRT engine when TensorRT imports, else ONNX Runtime's CUDA provider
# when onnxruntime-gpu is installed, else PyTorch on CUDA (TorchScript, channels-last, CUDA graphs). INT8 needs TensorRT.
backend=$(PRECISION=$PRECISION "$PYTHON" -c '
import importlib.util, os
try:
    import onnxruntime
    ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
except ImportError:
    ort_cuda = False
if importlib.util.find_spec("tensorrt") is not None:
    print("tensorrt")
elif ort_cuda:
    print("onnxruntime-cuda")
else:
    print("pytorch-cuda")
')
case $PRECISION in
  fp32|fp16) ;;
  int8) [ "$backend" = tensorrt ] || die "PRECISION=int8 needs TensorRT (pip install 'ipsbench[tensorrt]'); found $backend" ;;
  *) die "PRECISION must be fp32, fp16 or int8, not '$PRECISION'" ;;
esac
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
echo "gpu-check: $gpu_name, backend $backend, $MODEL $PRECISION, output in $OUT"

mkdir -p "$OUT"
repo=$OUT/models
name=${MODEL}_${PRECISION}
case $backend in
  tensorrt)
    "$PYTHON" -m ipsbench.export "$MODEL" --format tensorrt --precision "$PRECISION" \
      ${CALIBRATION_IMAGES:+--calibration-images "$CALIBRATION_IMAGES"} \
      --max-batch-size "$MAX_BATCH_SIZE" --name "$name" --out "$repo" ;;
  onnxruntime-cuda)
    "$PYTHON" -m ipsbench.export "$MODEL" --format onnx --device gpu --precision "$PRECISION" \
      --max-batch-size "$MAX_BATCH_SIZE" --name "$name" --out "$repo" ;;
  pytorch-cuda)
    "$PYTHON" -m ipsbench.export "$MODEL" --format torchscript --device gpu --precision "$PRECISION" \
      --cuda-graphs --max-batch-size "$MAX_BATCH_SIZE" --name "$name" --out "$repo" ;;
esac

# Engine: the forward pass alone, in-process (the vendor-sheet number).
"$PYTHON" -m ipsbench.server bench "$name" --model-repository "$repo" --batch-sizes "$BATCH_SIZES" \
  --duration "$BENCH_DURATION" --warmup 1s --json "$OUT/bench.json"

# GPU utilization and power while the end-to-end load runs, sampled by NVML through nvidia-smi.
nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,memory.used --format=csv,noheader,nounits -lms 500 \
  >"$OUT/gpu-samples.csv" 2>/dev/null &
sampler_pid=$!

server_log=$OUT/server.log
"$PYTHON" -m ipsbench.server --model-repository "$repo" --grpc-port 0 --metrics-port 0 >"$server_log" 2>&1 &
server_pid=$!
cleanup() {
  kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
  grep -q '^ipsbench-serve: ready' "$server_log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; die "ipsbench-serve exited before it was ready"; }
  sleep 0.1
done
grep -q '^ipsbench-serve: ready' "$server_log" || { cat "$server_log" >&2; die "ipsbench-serve not ready in ${READY_TIMEOUT_S}s"; }
target=$(sed -n 's/^ipsbench-serve: gRPC listening on \(.*\)$/\1/p' "$server_log" | head -n 1)
metrics=$(sed -n 's/^ipsbench-serve: metrics on \(.*\)$/\1/p' "$server_log" | head -n 1)

load_status=0
"$PYTHON" -m ipsbench.loadgen sweep --target "$target" --model "$name" --concurrency "$CONCURRENCY" \
  --images-per-request "$IMAGES_PER_REQUEST" --duration "$DURATION" --warmup "$WARMUP" --out "$OUT/load" \
  --max-trials "$MAX_TRIALS" --metrics-url "$metrics" --engine-bench "$OUT/bench.json" \
  ${LOAD_PROCESSES:+--processes "$LOAD_PROCESSES"} || load_status=$?
curl -sf "$metrics" >"$OUT/server-metrics.txt" 2>/dev/null || true
cleanup
trap - EXIT

"$PYTHON" deploy/gpu_summary.py --gpu "$gpu_name" --backend "$backend" --precision "$PRECISION" \
  --bench "$OUT/bench.json" --load "$OUT/load/report.json" --gpu-samples "$OUT/gpu-samples.csv" \
  | tee "$OUT/summary.md"
exit "$load_status"
