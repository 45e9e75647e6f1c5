#!/usr/bin/env bash
# The GPU check, one call: does ipsbench-serve keep a GPU busy? And the P40 table on this GPU.
#
# Export ResNet-50 FP16 (TorchScript, channels-last, CUDA graphs) with its uint8 and jpeg preprocessing fronts → the
# engine alone (ipsbench-serve bench) → for each --frontends value one server holding all three models, and against
# it an ipsbench-load sweep per payload (fp32 → <name>, uint8 → <name>_uint8, jpeg → <name>_jpeg), GPU utilization
# and power sampled through nvidia-smi → one Markdown summary with a verdict against the aims (end to end ≥ 0.8 of
# the engine with uint8 or jpeg, ≥ 0.5 with fp32, GPU ≥ 80 % busy at the best point), copied to
# results/gpu-check-<gpu>.md (a new name if that file exists).
#
# Every phase is bounded (timeout, and the whole run by GPU_CHECK_BUDGET_S); a phase that fails or runs out of time
# is recorded in the summary and the rest goes on where it can. Every process it starts is stopped on exit, failure,
# Ctrl-C or SIGTERM. Runs from the repository root, ipsbench installed or not. Exit: 0 every phase ok, 1 some phase
# failed (the summary says which), 2 refused before starting anything (no GPU), 130/143 interrupted.
#
# Budget on an H100/H200 with 16 cores (expected seconds; the defaults fit 9 minutes with about 1 to spare):
#   preflight                      ~10   GPU, CUDA in PyTorch, imports
#   export                         ~60   ResNet-50 FP16 TorchScript + CUDA graphs, top-1 check, two fronts
#   engine bench                   ~30   4 batch sizes × (1 s warm-up + BENCH_DURATION 2 s) + load and capture
#   per FRONTENDS value (1 of them):
#     server start                 ~40   three models loaded and captured, N front-end processes
#     load, per payload (3)        ~34   2 levels × (WARMUP 2 s + MAX_TRIALS 3 × DURATION 3 s + drain) + ~10 start
#     server stop                   ~5
#   matrix                        ~240   6 cells × (export ~15, engine and training bench 4 batch sizes × 1.5 s + load
#                                        ~20, server start ~10, load 1 level × (1 s + 2 s) + start ~8); MATRIX_LIMIT_S
#                                        caps it, and a matrix stopped there still writes the cells it finished
#   summary                         ~3
#   total                         ~490   (GPU_CHECK_BUDGET_S=540 caps it; a phase that no longer fits is skipped)
# FRONTENDS=8,1 adds the single-front-end baseline (~145 s more: raise GPU_CHECK_BUDGET_S, or set MATRIX=0).
#
# Where ipsbench's load-generator packages are missing (the bare H200 box: no locust, gevent, tritonclient, ...),
# fetch them here first with `bash deploy/gpu-check-wheels.sh` (into .whl/), then on the GPU box, as one command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && GPU_CHECK_DIR=/tmp/gc bash deploy/gpu-check.sh; rc=$?; cp /tmp/gc/summary.md "$OUT"/; tar czf "$OUT"/gpu-check-run.tgz -C /tmp/gc --exclude=./models --exclude=./image-cache .; exit $rc
# (the device tool: name .whl in carry, timeout_s 540; what comes back is the summary and the run's logs/reports:
# commit the summary as results/gpu-check-<gpu>.md, since the copy the script makes stays on that machine).
#
# GPU_CHECK_REHEARSAL=1 rehearses every phase on the CPU (no GPU needed, nothing copied to results/): a tiny
# ResNet-18 at 64×64, FP32 TorchScript, frontends 2 and 1, 1 s windows. tests/e2e/test_gpu_check.py runs it.
set -uo pipefail  # no -e: a failed phase is recorded and the others still run

REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
if [ "$REHEARSAL" = 1 ]; then
  : "${MODEL:=resnet18}" "${PRECISION:=fp32}" "${IMAGE_SIZE:=64}" "${MAX_BATCH_SIZE:=8}" "${BATCH_SIZES:=1,8}"
  : "${CONCURRENCY:=1,4}" "${IMAGES_PER_REQUEST:=2}" "${DURATION:=1s}" "${WARMUP:=1s}" "${MAX_TRIALS:=1}"
  : "${BENCH_DURATION:=1s}" "${LOAD_PROCESSES:=2}" "${FRONTENDS:=2,1}" "${GPU_CHECK_BUDGET_S:=480}"
  : "${MATRIX_NETWORKS:=resnet18}" "${MATRIX_PRECISIONS:=fp32}" "${MATRIX_BATCH_SIZES:=1,2}"
  : "${MATRIX_CONCURRENCY:=1}" "${MATRIX_IMAGE_SIZE:=64}"
fi
MODEL=${MODEL:-resnet50}
PRECISION=${PRECISION:-fp16}                 # fp16 or fp32 (TorchScript on CUDA)
IMAGE_SIZE=${IMAGE_SIZE:-}                   # empty: the network's own (224 for ResNet-50)
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-64}
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64}        # engine bench
BENCH_DURATION=${BENCH_DURATION:-2s}
PAYLOADS=${PAYLOADS:-fp32,uint8,jpeg}
FRONTENDS=${FRONTENDS:-8}                    # one server start per value
CONCURRENCY=${CONCURRENCY:-16,64}            # requests in flight; × IMAGES_PER_REQUEST images
IMAGES_PER_REQUEST=${IMAGES_PER_REQUEST:-8}  # 8 images per RPC: the load generator sends an eighth of the RPCs
DURATION=${DURATION:-3s}                     # one measured window; a level runs up to MAX_TRIALS of them
WARMUP=${WARMUP:-2s}
MAX_TRIALS=${MAX_TRIALS:-3}                  # 3: the fewest the stability rule judges
LOAD_PROCESSES=${LOAD_PROCESSES:-4}          # locust worker processes of ipsbench-load
GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
MATRIX=${MATRIX:-1}                          # 0: no P40 matrix
MATRIX_NETWORKS=${MATRIX_NETWORKS:-}         # empty: the p40 preset (AlexNet, GoogLeNet, ResNet-50)
MATRIX_PRECISIONS=${MATRIX_PRECISIONS:-fp32,fp16}
MATRIX_BATCH_SIZES=${MATRIX_BATCH_SIZES:-1,8,32,128}
MATRIX_CONCURRENCY=${MATRIX_CONCURRENCY:-16}
MATRIX_IMAGE_SIZE=${MATRIX_IMAGE_SIZE:-}
MATRIX_LIMIT_S=${MATRIX_LIMIT_S:-260}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-150}
GRACE_PERIOD_S=${GRACE_PERIOD_S:-5}
RUN_DIR=${GPU_CHECK_DIR:-reports/gpu-check-$(date +%Y%m%d-%H%M%S)}  # not $OUT: a device runner may own that name
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "gpu-check: $*" >&2; exit 2; }
say() { echo "gpu-check: [$(printf '%4d' "$SECONDS")s] $*" >&2; }
seconds_of() {  # "3s", "500ms", "2m" → whole seconds, rounded up
  case $1 in
    *ms) echo $(( (${1%ms} + 999) / 1000 )) ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *) echo "$1" ;;
  esac
}

# Refuse before starting or writing anything when there is no GPU to check.
if [ "$REHEARSAL" != 1 ]; then
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
  case $PRECISION in fp16|fp32) ;; *) die "PRECISION must be fp16 or fp32, not '$PRECISION'" ;; esac
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
else
  gpu_name="CPU rehearsal (no GPU)"
fi

# Not installed: link the role folders as ipsbench.server/.loadgen/.export, the names they install under.
if ! "$PYTHON" -c 'import ipsbench.server' 2>/dev/null; then
  shim=$(mktemp -d)
  mkdir "$shim/ipsbench"
  for role in server loadgen export matrix; do ln -s "$ROOT/$role" "$shim/ipsbench/$role"; done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c 'import ipsbench.server' || die "cannot import ipsbench.server from $ROOT"
fi

mkdir -p "$RUN_DIR/logs" || die "cannot create $RUN_DIR"
phases=$RUN_DIR/phases.tsv
printf 'phase\tstatus\tseconds\tlimit_s\n' >"$phases"
deadline=$(( SECONDS + GPU_CHECK_BUDGET_S ))
failed=0 current='' server_pid='' sampler_pid='' summarized=0

# phase NAME LIMIT_S COMMAND...: run COMMAND bounded by LIMIT_S (and by what is left of the budget), its output in
# logs/NAME.log, its outcome in phases.tsv. Returns its exit status (124: timed out, 125: skipped).
phase() {
  local name=$1 limit=$2 left=$(( deadline - SECONDS )) start=$SECONDS rc status
  shift 2
  if (( left < 5 )); then
    printf '%s\tskipped: the %ss budget was spent\t0\t%s\n' "$name" "$GPU_CHECK_BUDGET_S" "$limit" >>"$phases"
    say "$name: skipped (budget spent)"; failed=1; return 125
  fi
  (( limit > left )) && limit=$left
  say "$name (at most ${limit}s) ..."
  timeout --kill-after=10 "$limit" "$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
  current=$!
  wait "$current"; rc=$?
  current=
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( SECONDS - start ))" "$limit" >>"$phases"
  say "$name: $status in $(( SECONDS - start ))s"
  if (( rc != 0 )); then failed=1; tail -n 15 "$RUN_DIR/logs/$name.log" | sed 's/^/    /' >&2; fi
  return "$rc"
}

record() {  # record NAME STATUS SECONDS LIMIT_S: a phase run inline (the server's start)
  printf '%s\t%s\t%s\t%s\n' "$@" >>"$phases"
  say "$1: $2 in $3s"
  [ "$2" = ok ] || failed=1
}

stop_server() {  # SIGTERM drains the engine, then the front ends; past the grace, the whole process group goes
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  local until=$(( SECONDS + GRACE_PERIOD_S + 15 ))
  while kill -0 "$server_pid" 2>/dev/null && (( SECONDS < until )); do sleep 0.2; done
  kill -KILL -- "-$server_pid" 2>/dev/null || kill -KILL "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=
}

cleanup() {
  [ -n "$current" ] && kill -TERM "$current" 2>/dev/null && wait "$current" 2>/dev/null
  current=
  stop_server
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null
  sampler_pid=
}

on_signal() {
  printf 'interrupted\tinterrupted by SIG%s\t0\t0\n' "$1" >>"$phases"
  say "interrupted by SIG$1: stopping everything"
  cleanup
  summarize
  trap - EXIT
  exit "$2"
}
trap 'cleanup; summarize' EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

# start_server FRONTENDS DIR: one server with every model of the repository; sets target and metrics.
start_server() {
  local frontends=$1 dir=$2 log=$2/server.log start=$SECONDS until=$(( SECONDS + READY_TIMEOUT_S ))
  local launcher=(); command -v setsid >/dev/null 2>&1 && launcher=(setsid)  # own process group: killable whole
  (( until > deadline )) && until=$deadline
  "${launcher[@]}" "$PYTHON" -m ipsbench.server --model-repository "$repo" --grpc-port 0 --metrics-port 0 \
    --frontends "$frontends" --grace-period-s "$GRACE_PERIOD_S" >"$log" 2>&1 &
  server_pid=$!
  while ! grep -q '^ipsbench-serve: ready' "$log"; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      record "serve-fe$frontends" "failed (exited before ready)" $(( SECONDS - start )) "$READY_TIMEOUT_S"
      tail -n 15 "$log" | sed 's/^/    /' >&2; server_pid=; return 1
    fi
    if (( SECONDS >= until )); then
      record "serve-fe$frontends" "timed out (not ready in $(( SECONDS - start ))s)" $(( SECONDS - start )) "$READY_TIMEOUT_S"
      stop_server; return 1
    fi
    sleep 0.2
  done
  target=$(sed -n 's/^ipsbench-serve: gRPC listening on \(.*\)$/\1/p' "$log" | head -n 1)
  metrics=$(sed -n 's/^ipsbench-serve: metrics on \(.*\)$/\1/p' "$log" | head -n 1)
  record "serve-fe$frontends" ok $(( SECONDS - start )) "$READY_TIMEOUT_S"
}

summarize() {  # the summary from whatever the phases left; copied to results/ after a real run
  (( summarized )) && return 0
  summarized=1
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null
  sampler_pid=
  if ! timeout 60 "$PYTHON" "$ROOT/deploy/gpu_summary.py" --run-dir "$RUN_DIR" >"$RUN_DIR/summary.md" \
      2>"$RUN_DIR/logs/summary.log"; then
    say "summary: failed"; cat "$RUN_DIR/logs/summary.log" >&2; failed=1; return 1
  fi
  cat "$RUN_DIR/summary.md"
  [ "$REHEARSAL" = 1 ] && return 0
  local slug=${GPU_SLUG:-$(echo "$gpu_name" | tr '[:upper:]' '[:lower:]' | tr ' -' '\n' | grep -m1 '[0-9]')}
  local copy=$ROOT/results/gpu-check-${slug:-gpu}.md
  [ -e "$copy" ] && copy=$ROOT/results/gpu-check-${slug:-gpu}-$(date +%Y%m%d-%H%M).md
  mkdir -p "$ROOT/results" && cp "$RUN_DIR/summary.md" "$copy" && say "summary copied to ${copy#"$ROOT"/}"
}

name=${MODEL}_${PRECISION}
repo=$RUN_DIR/models
if [ "$REHEARSAL" = 1 ]; then
  backend="pytorch-cpu (rehearsal)"
  export_flags=(--format torchscript --device cpu --precision "$PRECISION")
else
  backend="pytorch-cuda"
  export_flags=(--format torchscript --device gpu --precision "$PRECISION" --cuda-graphs)
fi
[ -n "$IMAGE_SIZE" ] && export_flags+=(--image-size "$IMAGE_SIZE")
"$PYTHON" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2])), indent=1))' \
  gpu "$gpu_name" backend "$backend" precision "$PRECISION" model "$name" rehearsal "$REHEARSAL" \
  payloads "$PAYLOADS" frontends "$FRONTENDS" concurrency "$CONCURRENCY" images_per_request "$IMAGES_PER_REQUEST" \
  duration "$DURATION" warmup "$WARMUP" max_trials "$MAX_TRIALS" load_processes "$LOAD_PROCESSES" \
  bench_duration "$BENCH_DURATION" budget_s "$GPU_CHECK_BUDGET_S" started "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  cpus "$(nproc 2>/dev/null || echo '?')" shm_free_mib "$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')" \
  >"$RUN_DIR/run.json"
say "$gpu_name, $backend, $MODEL $PRECISION, output in $RUN_DIR"

phase export 240 "$PYTHON" -m ipsbench.export "$MODEL" "${export_flags[@]}" --max-batch-size "$MAX_BATCH_SIZE" \
  --front jpeg,uint8 --name "$name" --out "$repo"
exported=$?

if (( exported == 0 )); then
  phase bench 150 "$PYTHON" -m ipsbench.server bench "$name" --model-repository "$repo" \
    --batch-sizes "$BATCH_SIZES" --duration "$BENCH_DURATION" --warmup 1s --json "$RUN_DIR/bench.json"
fi

# NVML through nvidia-smi, for the whole run (a rehearsal too, where there is one); the summary cuts each step's window
if [ "$REHEARSAL" != 1 ] || nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,memory.used --format=csv,noheader,nounits -lms 500 \
    >"$RUN_DIR/gpu-samples.csv" 2>/dev/null &
  sampler_pid=$!
fi

IFS=, read -r -a levels <<<"$CONCURRENCY"
load_limit=$(( ${#levels[@]} * ($(seconds_of "$WARMUP") + MAX_TRIALS * $(seconds_of "$DURATION") + 10) + 60 ))
engine_bench=(); [ -s "$RUN_DIR/bench.json" ] && engine_bench=(--engine-bench "$RUN_DIR/bench.json")
IFS=, read -r -a frontend_counts <<<"$FRONTENDS"
IFS=, read -r -a payloads <<<"$PAYLOADS"
for frontends in "${frontend_counts[@]}"; do
  (( exported == 0 )) || break
  dir=$RUN_DIR/fe$frontends
  mkdir -p "$dir"
  start_server "$frontends" "$dir" || continue
  phase "probe-fe$frontends" 30 "$PYTHON" "$ROOT/deploy/gpu_probe.py" --target "$target" --out "$dir/models.json" \
    "$name" "${name}_uint8" "${name}_jpeg"
  for payload in "${payloads[@]}"; do
    case $payload in fp32) model=$name ;; uint8|jpeg) model=${name}_$payload ;; *) continue ;; esac
    phase "load-fe$frontends-$payload" "$load_limit" "$PYTHON" -m ipsbench.loadgen sweep --target "$target" \
      --model "$model" --payload "$payload" --concurrency "$CONCURRENCY" --images-per-request "$IMAGES_PER_REQUEST" \
      --duration "$DURATION" --warmup "$WARMUP" --max-trials "$MAX_TRIALS" --drain 5s --metrics-url "$metrics" \
      --processes "$LOAD_PROCESSES" --cache-dir "$RUN_DIR/image-cache" --out "$dir/$payload" "${engine_bench[@]}"
  done
  curl -sf --max-time 5 "$metrics" >"$dir/server-metrics.txt" 2>/dev/null || true
  stop_server
done

# The P40 table on this GPU: every network × precision exported, benched (power, training), served and loaded.
if [ "$MATRIX" = 1 ]; then
  matrix_cells=(--preset p40); [ -n "$MATRIX_NETWORKS" ] && matrix_cells=(--networks "$MATRIX_NETWORKS")
  [ -n "$MATRIX_IMAGE_SIZE" ] && matrix_cells+=(--image-size "$MATRIX_IMAGE_SIZE")
  phase matrix "$MATRIX_LIMIT_S" "$PYTHON" -m ipsbench.matrix matrix "${matrix_cells[@]}" \
    --precisions "$MATRIX_PRECISIONS" --batch-sizes "$MATRIX_BATCH_SIZES" --repository "$RUN_DIR/matrix-models" \
    --out "$RUN_DIR/matrix" --bench-duration 1s --bench-warmup 0.5s --concurrency "$MATRIX_CONCURRENCY" \
    --duration 2s --warmup 1s --max-trials 1
fi

cleanup
summarize
trap - EXIT
exit "$failed"
