# Sourced by the scripts that run a foreign tool from a virtual environment of its own (perf-analyzer.sh,
# mlserver.sh). ensure_tool_venv HOME COMMAND PACKAGE...: creates HOME/venv with PACKAGE... unless it is already
# complete, and checks that it provides bin/COMMAND. Setup failures call the sourcing script's fail().
ensure_tool_venv() {
  local home=$1 command=$2
  shift 2
  local venv=$home/venv
  # The virtual environment is marked complete only after pip succeeded, so an interrupted setup is redone.
  [[ -f $venv/.complete ]] && return 0
  rm -rf "$venv"
  python3 -m venv "$venv" >"$home/setup.log" 2>&1 || fail "python3 -m venv failed, see $home/setup.log"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" >>"$home/setup.log" 2>&1 \
    || fail "pip install $* failed, see $home/setup.log"
  [[ -x $venv/bin/$command ]] || fail "the packages $* installed no $command command"
  touch "$venv/.complete"
}
