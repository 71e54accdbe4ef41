#!/usr/bin/env bash
# Set up .venv with the pinned stack and mmcv 2.1.0 built with its compiled ops.
#
# Idempotent: a stamp in .venv records what was installed; when the lock file, this script and the
# mmcv build are unchanged, a second run only checks and returns. The mmcv wheel is built once per
# machine and cached outside the clone (MMCV_CACHE_DIR, default ~/.cache/convnext-dense/wheels),
# keyed by mmcv version, torch version, Python, CPU/CUDA and compiler flags.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PYTHON="${PYTHON:-python3.11}"
venv="$root/.venv"
lock="$root/requirements/lock.txt"
mmcv_version="2.1.0"
pip_version="26.3"
torch_version="$(sed -n 's/^torch==//p' "$lock")"
build_cflags="-g0 -O1"
cache_dir="${MMCV_CACHE_DIR:-$HOME/.cache/convnext-dense/wheels}"

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The pinned torch 2.14.1 and mmcv build are for CPython 3.11: say so in one line rather than fail later.
python_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [[ "$python_version" != "3.11" ]]; then
    echo "error: make needs Python 3.11; PYTHON=$PYTHON is ${python_version:-not a runnable Python}. Install 3.11 (pyenv install 3.11, or your distribution's python3.11) or set PYTHON=/path/to/python3.11." >&2
    exit 1
fi

if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    mmcv_device="cuda"
else
    mmcv_device="cpu"
fi
py_tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
flags_tag="$(printf '%s' "$build_cflags" | tr -c 'A-Za-z0-9' '_')"
mmcv_key="mmcv-${mmcv_version}_torch-${torch_version}_${py_tag}_${mmcv_device}_${flags_tag}"
peers_dir="$root/requirements/peers"
stamp_value="$(cat "$lock" "$peers_dir"/*.txt "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)_${mmcv_key}"
stamp_file="$venv/.convnext-dense-installed"

if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_value" ]]; then
    log "environment up to date (.venv, $mmcv_key)"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# The pip bundled with Python 3.11 cannot build mmcv's sdist without build isolation; pin a newer one.
"${pip[@]}" install -q "pip==$pip_version"

log "installing the pinned stack from requirements/lock.txt (torch $torch_version is a large CUDA build; ~2 min)"
"${pip[@]}" install -q --no-deps -r "$lock"

mmcv_ops_ok() {
    "$venv/bin/python" - "$mmcv_version" <<'PY' >/dev/null 2>&1
import sys
import mmcv
from mmcv import _ext  # noqa: F401  compiled ops
sys.exit(0 if mmcv.__version__ == sys.argv[1] else 1)
PY
}

build_mmcv_wheel() {
    local out_dir="$1" work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    log "downloading the mmcv $mmcv_version sdist"
    "${pip[@]}" download -q --no-deps --no-binary mmcv --no-build-isolation "mmcv==$mmcv_version" -d "$work"
    tar -xzf "$work/mmcv-$mmcv_version.tar.gz" -C "$work"
    # torch >= 2.10 headers need C++20; the sdist hard-codes older standards.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work/mmcv-$mmcv_version/setup.py"
    local cuda_env=()
    if [[ "$mmcv_device" == "cuda" ]]; then
        cuda_env=(FORCE_CUDA=1)
    fi
    log "building mmcv $mmcv_version with its $mmcv_device ops (CFLAGS='$build_cflags', MAX_JOBS=${MAX_JOBS:-$(nproc)})"
    log "this is done once per machine (measured times: docs/installation.md); the wheel is cached in $out_dir"
    local start=$SECONDS
    env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="$build_cflags" CXXFLAGS="$build_cflags" \
        "${cuda_env[@]}" \
        "${pip[@]}" wheel -q --no-deps --no-build-isolation "$work/mmcv-$mmcv_version" -w "$work/dist"
    local wheel
    wheel="$(ls "$work"/dist/mmcv-*.whl)"
    mkdir -p "$out_dir"
    cp "$wheel" "$out_dir/.partial.whl"
    mv "$out_dir/.partial.whl" "$out_dir/$(basename "$wheel")"
    log "mmcv built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

if mmcv_ops_ok; then
    log "mmcv $mmcv_version with compiled ops already installed"
else
    wheel_dir="$cache_dir/$mmcv_key"
    mkdir -p "$cache_dir"
    # One build at a time per cache: a second install waits for the first and then reuses its wheel.
    exec 9>"$cache_dir/.lock"
    flock 9
    if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
        build_mmcv_wheel "$wheel_dir"
    else
        log "reusing cached mmcv wheel from $wheel_dir"
    fi
    flock -u 9
    "${pip[@]}" install -q --no-deps --force-reinstall "$wheel_dir"/mmcv-*.whl
    if ! mmcv_ops_ok; then
        log "ERROR: mmcv installed from $wheel_dir but 'mmcv._ext' does not import."
        log "Delete that folder and run 'make install' again to rebuild it."
        exit 1
    fi
fi

# The peers live in folders of their own (requirements/peers/ says why), each replaced whole.
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("mmpretrain") is None)' 2>/dev/null; then
    log "removing mmpretrain from .venv (it now lives in .venv/peers/mmpretrain)"
    "${pip[@]}" uninstall -q -y mmpretrain
fi
for requirements in "$peers_dir"/*.txt; do
    name="$(basename "$requirements" .txt)"
    log "installing the $name peer into .venv/peers/$name"
    rm -rf "$venv/peers/$name.partial"
    "${pip[@]}" install -q --no-deps --no-compile --target "$venv/peers/$name.partial" -r "$requirements"
    rm -rf "$venv/peers/$name"
    mv "$venv/peers/$name.partial" "$venv/peers/$name"
done

log "installing this project in editable mode"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"

echo "$stamp_value" > "$stamp_file"
log "done: $("$venv/bin/python" -c 'import torch, mmcv, mmdet, mmseg, timm; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}")')"
