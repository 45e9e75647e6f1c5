#!/usr/bin/env bash
# Runs Triton's perf_analyzer with the arguments given, e.g.
#   scripts/perf-analyzer.sh -m resnet18 -u 127.0.0.1:8001 -i grpc --concurrency-range 1:4
# The binary is the C++ one shipped in the tritonclient[all] 2.50.0 wheel: newer wheels need glibc >= 2.38 or no
# longer ship it. The first call installs it into a virtual environment of its own under the cache folder, with the
# two shared libraries it links: libb64 (Debian's libb64-0d) and libcudart 12 (PyPI's nvidia-cuda-runtime-cu12; it
# only has to load, no GPU is needed). Exit status 2 means setup failed; otherwise it is perf_analyzer's.
set -euo pipefail

PA_HOME=${PA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ipsbench/perf-analyzer}
VENV=$PA_HOME/venv
PACKAGES=('tritonclient[all]==2.50.0' 'nvidia-cuda-runtime-cu12')

fail() { echo "perf-analyzer.sh: $*" >&2; exit 2; }
mkdir -p "$PA_HOME" || fail "cannot create $PA_HOME"

# libb64: installed from Debian when we are root and it is missing; otherwise say what to install. (The loader
# cache is read whole first: `ldconfig -p | grep -q` can die of SIGPIPE, which pipefail reports as "missing".)
loader_cache=$(PATH=$PATH:/sbin:/usr/sbin ldconfig -p 2>/dev/null || true)
if [[ $loader_cache != *libb64.so.0d* ]]; then
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
    || fail "libb64.so.0d is missing: install the Debian package libb64-0d (as root)"
  { apt-get install -y -q libb64-0d || { apt-get update -q && apt-get install -y -q libb64-0d; }; } \
    >"$PA_HOME/apt.log" 2>&1 || fail "apt-get could not install libb64-0d, see $PA_HOME/apt.log"
fi

source "$(dirname "${BASH_SOURCE[0]}")/tool-venv.sh"
ensure_tool_venv "$PA_HOME" perf_analyzer "${PACKAGES[@]}"

# libcudart.so.12 lives inside the nvidia-cuda-runtime-cu12 package, which is not on the loader's path.
cudart_lib=$("$VENV/bin/python" -c \
  'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))') \
  || fail "nvidia-cuda-runtime-cu12 is not importable in $VENV"
export LD_LIBRARY_PATH=$cudart_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

exec "$VENV/bin/perf_analyzer" "$@"
