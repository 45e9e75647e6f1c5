#!/usr/bin/env bash
# Runs Seldon's MLServer with the arguments given, e.g.
#   scripts/mlserver.sh start tests/loadgen/mlserver_models
# MLServer is a second KServe v2 server (pure Python), for checking that ipsbench-load drives servers other than
# ipsbench-serve. The first call installs it into a virtual environment of its own under the cache folder, so its
# dependency pins never touch the project's environment. Exit status 2 with a `mlserver.sh:` message means setup
# failed; otherwise it is MLServer's.
set -euo pipefail

# Not named MLSERVER_*: MLServer reads every variable with that prefix as one of its settings.
ML_HOME=${IPSBENCH_MLSERVER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ipsbench/mlserver}
VENV=$ML_HOME/venv
PACKAGES=('mlserver==1.7.1')

fail() { echo "mlserver.sh: $*" >&2; exit 2; }
mkdir -p "$ML_HOME" || fail "cannot create $ML_HOME"

source "$(dirname "${BASH_SOURCE[0]}")/tool-venv.sh"
ensure_tool_venv "$ML_HOME" mlserver "${PACKAGES[@]}"

exec "$VENV/bin/mlserver" "$@"
