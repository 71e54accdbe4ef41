#!/usr/bin/env bash
# Prepare, on a machine with PyPI, the files that scripts/gpu_check.sh installs on a GPU machine without network.
#
#     bash scripts/gpu_prepare.sh [DEST]     # default DEST: .whl/ (git-ignored through .git/info/exclude)
#     bash scripts/gpu_prepare.sh --list     # what is carried and why the rest of requirements/lock.txt is not
#
# The GPU machine brings its own Python 3.12 and CUDA torch (docs/speed.md, "The GPU check"); DEST gets, for CPython
# 3.12 on manylinux x86_64, the wheels of what the check imports that such a machine lacks, at the versions of
# requirements/lock.txt, the mmpretrain peer (DEST/peers/, requirements/peers/mmpretrain.txt) and the mmcv sdist,
# which gpu_check.sh builds there with CUDA. Nothing of torch's is downloaded. Needs .venv (make install): mmcv's
# sdist is fetched without build isolation, as scripts/install.sh fetches it, with .venv's setuptools and torch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
lock="$root/requirements/lock.txt"
mmcv_version="2.1.0"
max_mib=60  # the device tool carries at most 64 MiB of working tree, the checkout included

# Every name in requirements/lock.txt is in exactly one of these lists (tests/test_scripts/test_gpu_check.py checks
# this, and that every distribution the check's tools and tests import is carried, on the image or the GPU's own).
# Carried: the check imports them and the GPU image lacks them, or has them at another version (timm: our peer).
CARRIED=(addict ftfy importlib_metadata mat4py mmdet mmengine mmsegmentation model-index ordered-set platformdirs
         prettytable pycocotools setuptools shapely termcolor terminaltables timm wcwidth yapf)
# On the GPU image (its package list: /work/.library/device/KINDS.md in this workplace), used as they are there.
ON_IMAGE=(anyio click contourpy cycler einops filelock flatbuffers fonttools fsspec h11 hf-xet huggingface_hub idna
          iniconfig Jinja2 kiwisolver markdown-it-py Markdown MarkupSafe matplotlib mdurl ml_dtypes mpmath networkx
          ninja numpy onnx onnxruntime opencv-python-headless packaging pillow pluggy protobuf Pygments pyparsing
          pytest python-dateutil PyYAML regex rich safetensors scipy six sympy tqdm typing_extensions zipp)
# The GPU machine's own torch stack (shell patterns): never carried, its CUDA build is what the check measures.
GPU_OWN=(torch torchvision triton 'nvidia-*' 'cuda-*')
# Imported by lock.txt's huggingface_hub 2 only: the image's own huggingface_hub brings its own HTTP client.
HUB_HTTP=(httpcore2 httpx2 truststore)
# Not imported by any step of the check: the linter, and time zone data that no import reads.
UNUSED=(ruff tzdata)
PEER_FILES=(requirements/peers/mmpretrain.txt)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# lock.txt's pinned version of $1, or nothing.
pinned() {
    local name="$1"
    awk -F'==' -v want="$(normalize "$name")" '
        /^[^#].*==/ { n = tolower($1); gsub(/[-_.]+/, "-", n); if (n == want) { print $2; exit } }' "$lock"
}

normalize() { printf '%s' "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/-/g'; }

peer_pins() { grep -hE '^[A-Za-z0-9_.-]+==' "${PEER_FILES[@]}"; }

list() {
    local name version
    for name in "${CARRIED[@]}"; do
        version="$(pinned "$name")"
        [[ -n "$version" ]] || { echo "error: $name is carried but not pinned in requirements/lock.txt" >&2; return 1; }
        echo "carried $name==$version"
    done
    peer_pins | sed 's/^/peer /'
    echo "sdist mmcv==$mmcv_version"
    for name in "${ON_IMAGE[@]}"; do echo "image $name"; done
    for name in "${GPU_OWN[@]}"; do echo "gpu $name"; done
    for name in "${HUB_HTTP[@]}"; do echo "hub $name"; done
    for name in "${UNUSED[@]}"; do echo "unused $name"; done
}

if [[ "${1:-}" == "--list" ]]; then
    list
    exit 0
elif [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

dest="${1:-$root/.whl}"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    echo "error: $python not found: run make install (or set PYTHON: a Python with pip, torch, setuptools<81)" >&2
    exit 1
fi
log() { printf '[gpu_prepare %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Keep the downloads and the GPU check's own folders out of git, without touching .gitignore.
exclude="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [[ -n "$exclude" ]]; then
    mkdir -p "$(dirname "$exclude")"
    for pattern in /.whl/ /.gpu/; do
        grep -qxF "$pattern" "$exclude" 2>/dev/null || echo "$pattern" >> "$exclude"
    done
fi

listing="$(list)"
pins=()
while read -r kind pin; do
    if [[ "$kind" == carried ]]; then pins+=("$pin"); fi
done <<< "$listing"
peers=()
while read -r pin; do peers+=("$pin"); done < <(peer_pins)

# The wheels of CPython 3.12 on x86_64 Linux; pure-Python wheels match any platform.
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
pip=("$python" -m pip --disable-pip-version-check)
binary=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")

rm -rf "$dest.partial"
mkdir -p "$dest.partial/peers"
log "downloading ${#pins[@]} wheels for CPython 3.12 manylinux x86_64 (versions of requirements/lock.txt)"
"${pip[@]}" "${binary[@]}" -d "$dest.partial" "${pins[@]}"
log "downloading the peers: ${peers[*]}"
"${pip[@]}" "${binary[@]}" -d "$dest.partial/peers" "${peers[@]}"
log "downloading the mmcv $mmcv_version sdist (built with CUDA on the GPU machine)"
"${pip[@]}" download -q --no-deps --no-binary mmcv --no-build-isolation "mmcv==$mmcv_version" -d "$dest.partial"

# One file per carried name (two versions of one name stop the whole install there).
for pin in "${pins[@]}" "${peers[@]}"; do
    wheel_name="$(printf '%s' "${pin%%==*}" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')"
    count="$(find "$dest.partial" -iname "${wheel_name}-${pin##*==}-*.whl" | wc -l)"
    if [[ "$count" != 1 ]]; then
        echo "error: expected one wheel of $pin in $dest.partial, found $count" >&2
        exit 1
    fi
done

size_kib="$(du -sk "$dest.partial" | cut -f1)"
if (( size_kib > max_mib * 1024 )); then
    echo "error: the wheels take $((size_kib / 1024)) MiB, over the ${max_mib} MiB that can travel with the tree" >&2
    exit 1
fi
# A previous .whl/mmcv/ (a CUDA mmcv wheel a GPU check built and returned) is kept: it saves the build.
if [[ -d "$dest/mmcv" ]]; then
    mv "$dest/mmcv" "$dest.partial/mmcv"
fi
rm -rf "$dest"
mv "$dest.partial" "$dest"
log "done: $(find "$dest" -type f | wc -l) files, $((size_kib / 1024)) MiB in $dest"
log "next, on the GPU machine (the device tool: carry .whl): bash scripts/gpu_check.sh \$OUT"
