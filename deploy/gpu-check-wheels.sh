#!/usr/bin/env bash
# Wheels for deploy/gpu-check.sh on a GPU box that cannot reach a package index: downloads here, into .whl/, every
# package the check imports that such a box lacks (one pinned version each, CPython 3.12, manylinux x86-64, no
# dependency resolution: each dependency is named below), about 17 MiB in all.
#
# The box this is sized for has PyTorch (CUDA), torchvision, CuPy, numpy, onnx, onnxruntime (CPU), grpcio, protobuf,
# prometheus-client, nvidia-ml-py, msgpack, psutil, requests, rich, matplotlib, pillow, werkzeug, jinja2, click,
# pytest (BOX_PACKAGES below), but no locust, gevent, hdrhistogram or tritonclient. grpcio and protobuf travel even
# so: tritonclient's and grpcio-health-checking's generated code refuses an older runtime than it was generated for,
# so the check brings the pair it is tested with.
#
# On the GPU box, from the repository root, as one command (the device tool: carry .whl, timeout_s 540):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && GPU_CHECK_DIR=/tmp/gc bash deploy/gpu-check.sh; rc=$?; cp /tmp/gc/summary.md "$OUT"/; tar czf "$OUT"/gpu-check-run.tgz -C /tmp/gc --exclude=./models --exclude=./image-cache .; exit $rc
#
# Usage: bash deploy/gpu-check-wheels.sh            download (skips wheels already there), check the set
#        bash deploy/gpu-check-wheels.sh --verify   also install them into a fresh Python 3.12 that holds only
#                                                    packages of BOX_PACKAGES, and import and start the check's roles
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${WHEEL_DIR:-$ROOT/.whl}
PYTHON=${PYTHON:-python3}
MAX_MIB=60

# What the check imports that the box lacks, with their own needs (Requires-Dist, markers for Linux/CPython 3.12).
WHEELS=(
  grpcio==1.85.3 protobuf==6.33.6 grpcio-health-checking==1.81.1            # the pair tritonclient's stubs need
  tritonclient==2.73.0 python-rapidjson==1.25                               # ipsbench's KServe v2 protocol
  simplejpeg==1.9.0                                                         # the server's and load's JPEG codec
  hdrhistogram==0.10.8 pbr==7.1.3                                           # exact percentiles
  locust==2.47.0 configargparse==1.9.0 flask==3.1.3 flask-cors==6.0.5 flask-login==0.6.3 blinker==1.9.0
  itsdangerous==2.2.0 pyzmq==27.3.0 python-engineio==4.15.1 python-socketio==5.18.1 bidict==0.24.1
  simple-websocket==1.1.0 wsproto==1.3.2 websocket-client==1.9.2
  gevent==26.9.0 greenlet==3.5.6 zope.event==6.2 zope.interface==8.7 geventhttpclient==2.6.1 brotli==1.2.1
)
# Already on the box (its image's package list): requirements naming these need no wheel.
BOX_PACKAGES="numpy pillow psutil requests urllib3 certifi idna charset-normalizer rich matplotlib prometheus-client
nvidia-ml-py msgpack werkzeug jinja2 markupsafe click typing-extensions packaging pytest h11 ml-dtypes setuptools
pyyaml onnx onnxruntime torch torchvision"
# Named by a carried wheel but never imported by the check; the box's own copy (any version) is kept.
UNUSED_REQUIREMENTS="setuptools"

platforms=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28 manylinux1 \
           manylinux_2_5; do
  platforms+=(--platform "${tag}_x86_64")
done

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"

# The set: one wheel per name, each pinned one present, nothing a carried wheel needs left out, within the size.
"$PYTHON" - "$DEST" "$MAX_MIB" "$BOX_PACKAGES" "$UNUSED_REQUIREMENTS" "${WHEELS[@]}" <<'EOF'
import re, sys, zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

dest, max_mib, box, unused, pins = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5:]
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
wheels = {}
problems = []
for path in sorted(dest.glob("*.whl")):
    name, version, _, _ = parse_wheel_filename(path.name)
    if name in wheels:
        problems.append(f"two versions of {name}: {wheels[name][0]} and {version}")
    wheels[name] = (version, path)
wanted = {canonicalize_name(Requirement(p).name): Requirement(p) for p in pins}
for name, requirement in wanted.items():
    if name not in wheels:
        problems.append(f"{requirement} was not downloaded")
    elif not requirement.specifier.contains(wheels[name][0]):
        problems.append(f"{name} {wheels[name][0]} in {dest} is not the pinned {requirement}")
for name in wheels.keys() - wanted.keys():
    problems.append(f"{wheels[name][1].name} is in {dest} but not in the list (remove it: two versions stop pip)")
have = set(wheels) | {canonicalize_name(n) for n in box}
for name, (version, path) in sorted(wheels.items()):
    with zipfile.ZipFile(path) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist") or []
    for text in requires:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        needed = canonicalize_name(requirement.name)
        if needed in wheels and not requirement.specifier.contains(wheels[needed][0], prereleases=True):
            problems.append(f"{name} needs {requirement}, the set has {needed} {wheels[needed][0]}")
        elif needed not in have and needed not in {canonicalize_name(n) for n in unused}:
            problems.append(f"{name} needs {requirement}: neither carried nor on the box")
        extras = requirement.extras
        if extras and needed in wheels:  # e.g. python-socketio[client]: its extra's own requirements
            with zipfile.ZipFile(wheels[needed][1]) as archive:
                meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                for extra_text in Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist") or []:
                    extra_req = Requirement(extra_text)
                    if extra_req.marker and any(extra_req.marker.evaluate({**env, "extra": e}) for e in extras) \
                            and canonicalize_name(extra_req.name) not in have:
                        problems.append(f"{name} needs {needed}[{','.join(extras)}] → {extra_req}: not carried")
total = sum(path.stat().st_size for _, path in wheels.values())
if total > max_mib * 1024 * 1024:
    problems.append(f"{total / 2**20:.1f} MiB of wheels, over {max_mib} MiB")
for problem in problems:
    print(f"gpu-check-wheels: {problem}", file=sys.stderr)
print(f"gpu-check-wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}" + (": INCOMPLETE" if problems else ""))
sys.exit(1 if problems else 0)
EOF

[ "${1:-}" = --verify ] || exit 0

# A fresh Python 3.12 with only box packages (no torch: the check's imports of torch are lazy), the wheels installed
# as on the box, then the roles imported and started: the server's and the load generator's --help, and imports.
if [ -z "${PY312:-}" ]; then
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { PY312=$candidate; break; }
  done
fi
[ -n "${PY312:-}" ] || { echo "gpu-check-wheels: --verify needs a Python 3.12 (PY312=...)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY312" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy pillow psutil requests rich \
  prometheus-client nvidia-ml-py msgpack werkzeug jinja2 markupsafe click typing-extensions packaging pytest h11 \
  ml-dtypes pyyaml matplotlib onnxruntime
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target "$work/site" "$DEST"/*.whl
mkdir -p "$work/shim/ipsbench"
for role in server loadgen export; do ln -s "$ROOT/$role" "$work/shim/ipsbench/$role"; done
export PYTHONPATH="$work/site:$work/shim"
"$work/venv/bin/python" - <<'EOF'
import importlib
for module in ("locust", "gevent", "hdrh.histogram", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2",
               "grpc_health.v1.health_pb2_grpc", "simplejpeg", "zmq", "socketio", "geventhttpclient",
               "ipsbench.loadgen.cli", "ipsbench.loadgen.run", "ipsbench.loadgen.environment", "ipsbench.loadgen.worker",
               "ipsbench.server.cli", "ipsbench.server.app", "ipsbench.server.frontends.supervisor",
               "ipsbench.server.frontends.frontend", "ipsbench.server.frontends.engine",
               "ipsbench.server.backends.onnx"):
    importlib.import_module(module)
print("gpu-check-wheels: every module of the check imports")
EOF
"$work/venv/bin/python" -m ipsbench.loadgen sweep --help >/dev/null

# Then the check's path for real, from that Python: a server with two front ends (a tiny ONNX ResNet-18 and its jpeg
# front, exported by EXPORT_PYTHON, which has torch), the probe, and a two-process jpeg sweep against it.
EXPORT_PYTHON=${EXPORT_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$EXPORT_PYTHON" ] || { echo "gpu-check-wheels: imports verified; no EXPORT_PYTHON to export a model, no load run"; exit 0; }
PYTHONPATH='' timeout 300 "$EXPORT_PYTHON" -m ipsbench.export resnet18 --image-size 64 --max-batch-size 8 --front jpeg \
  --verify-image-count 0 --out "$work/models" >"$work/export.log" 2>&1 || { cat "$work/export.log"; exit 1; }
"$work/venv/bin/python" -m ipsbench.server --model-repository "$work/models" --grpc-port 0 --metrics-port 0 \
  --frontends 2 --grace-period-s 5 >"$work/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 600); do
  grep -q '^ipsbench-serve: ready' "$work/server.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.2
done
target=$(sed -n 's/^ipsbench-serve: gRPC listening on \(.*\)$/\1/p' "$work/server.log" | head -n 1)
[ -n "$target" ] || { cat "$work/server.log"; exit 1; }
"$work/venv/bin/python" "$ROOT/deploy/gpu_probe.py" --target "$target" --out "$work/models.json" resnet18 resnet18_jpeg
timeout 300 "$work/venv/bin/python" -m ipsbench.loadgen sweep --target "$target" --model resnet18_jpeg --payload jpeg \
  --concurrency 2 --duration 1s --warmup 1s --max-trials 1 --processes 2 --cache-dir "$work/images" \
  --out "$work/load" >"$work/load.log" 2>&1 || { cat "$work/load.log"; exit 1; }
"$work/venv/bin/python" -c 'import json, sys; r = json.load(open(sys.argv[1])); s = r["steps"][0]
assert s["ok"] > 0 and s["errors_total"] == 0, s
print("gpu-check-wheels: jpeg sweep from that Python:", s["ok"], "requests, no errors")' "$work/load/report.json"
echo "gpu-check-wheels: verified in a fresh Python 3.12 with box packages only"
