#!/usr/bin/env bash
# The main job on one box, as a one-network matrix: export ResNet-50 at each precision ONNX Runtime runs on a CPU
# (FP32, FP16, INT8) → the engine alone and training per batch size → ipsbench-serve → an ipsbench-load sweep → one
# report. `ipsbench matrix` does the work (and stops every process it starts, Ctrl-C included); this sets the knobs.
set -euo pipefail

MODEL=${MODEL:-resnet50}
PRECISIONS=${PRECISIONS:-fp32,fp16,int8}
BATCH_SIZES=${BATCH_SIZES:-1,4}
REPO=${REPO:-models}
CONCURRENCY=${CONCURRENCY:-1,2,4}
DURATION=${DURATION:-4s}   # one measurement window; each level runs 3 to MAX_TRIALS windows until they agree
MAX_TRIALS=${MAX_TRIALS:-4}
WARMUP=${WARMUP:-2s}
BENCH_DURATION=${BENCH_DURATION:-3s}
OUT=${OUT:-reports/demo-$(date +%Y%m%d-%H%M%S)}
IMAGE_SIZE=${IMAGE_SIZE:-}  # empty: the model's own input size

exec ipsbench matrix --networks "$MODEL" --precisions "$PRECISIONS" --batch-sizes "$BATCH_SIZES" \
  --repository "$REPO" --out "$OUT" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
  --max-trials "$MAX_TRIALS" --bench-duration "$BENCH_DURATION" --bench-warmup 1s \
  ${IMAGE_SIZE:+--image-size "$IMAGE_SIZE"}
