#!/usr/bin/env bash
# The GPU check: on one GPU machine without network, with its own Python and CUDA torch, install the rest from the
# files of scripts/gpu_prepare.sh, build mmcv's ops with CUDA, then run the CUDA tests, the demo (UperNet and Mask
# R-CNN trained with AMP and evaluated to the end) and the benchmark (fp16, the papers' sizes, --compare, --train,
# with and without --channels-last --compile), each step with its own time limit, all output under one folder.
#
#     bash scripts/gpu_check.sh [--quick | --dry-run] [--steps NAME,...] [--budget SECONDS] [OUT_DIR]
#
# OUT_DIR (default: $OUT) gets summary.tsv (each step's exit code, wall seconds, limit and a note, written as the
# steps end), report.md (the machine, the steps, the demo's metrics and every benchmark table), gpu_check.log (this
# script's output), logs.tar.gz (every step's log and output, the benchmark JSONs, the demo's logs and plots; no
# checkpoints) and, when it built one, the CUDA mmcv wheel, named for its torch and GPU arch: put it in .whl/mmcv/
# for the next run on such a machine and the build is skipped. report.md and logs.tar.gz are rewritten after every
# step, so a run stopped from outside keeps what it did. The exit code is 0 only if every step ran and passed.
#
#   --quick       a second try: no training-step rows, 2 warm-ups and 5 timed runs, a 400 s budget
#   --dry-run     on a CPU with .venv (CI: tests/test_scripts/test_gpu_check.py): no install, no mmcv build; every
#                 tool command line of a GPU run is parsed by its tool, the CUDA tests run (and skip), and one
#                 benchmark step runs at 64x64 on the CPU
#   --steps       only these steps (comma-separated names or shell patterns, e.g. demo,bench_*); env, install and
#                 mmcv always run (install and mmcv return at once when this machine has them already)
#   --budget      seconds for the whole run (default 525, --quick 400): a step starts only if the time left covers
#                 its minimum, and stops at the end of the budget; a step left out for time counts as failed
#
# Steps, in order (the budget cuts from the end): env, install, mmcv, test_cuda, demo, eval_mask_rcnn,
# bench_mask_rcnn, bench_upernet, bench_cascade, bench_mask_rcnn_fast, bench_upernet_fast, bench_cascade_fast
# (bench_*_fast: with --channels-last --compile; docs/speed.md, "The GPU check", has the expected time of each).
# Environment: PYTHON (default python3; --dry-run: .venv/bin/python), GPU_CHECK_WHEELS (default .whl),
# GPU_CHECK_HOME (default .gpu: the installed packages, kept between calls on a warm machine), TORCH_CUDA_ARCH_LIST
# (default: the GPU's compute capability), MAX_JOBS (default: every core), MMCV_CUDA_OPS (default nms,roi_align).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

mode=full
out_dir="${OUT:-}"
steps_filter=""
budget=""
while (($#)); do
    case "$1" in
        --quick) mode=quick ;;
        --dry-run) mode=dry-run ;;
        --steps) steps_filter="${2:?--steps needs a list}"; shift ;;
        --steps=*) steps_filter="${1#*=}" ;;
        --budget) budget="${2:?--budget needs seconds}"; shift ;;
        --budget=*) budget="${1#*=}" ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out_dir="$1" ;;
    esac
    shift
done
if [[ -z "$out_dir" ]]; then
    echo "error: give the output folder as an argument or in \$OUT (see --help)" >&2
    exit 2
fi
if [[ -z "$budget" ]]; then
    case "$mode" in full) budget=525 ;; quick) budget=400 ;; dry-run) budget=600 ;; esac
fi
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "error: --budget takes whole seconds, got $budget" >&2; exit 2; }

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"  # relative to where the script was called from
cd "$root"
# Every working file at least three folders down: the device tool brings back the files of $OUT up to two folders
# down, at most 8, and these must not crowd out summary.tsv, report.md, gpu_check.log and logs.tar.gz.
work="$out_dir/work/run"
logs="$work/logs"
rm -rf "$out_dir/work"
mkdir -p "$logs" "$work/bench" "$work/parse"
summary="$out_dir/summary.tsv"
printf 'step\texit\tseconds\tlimit\tnote\n' > "$summary"
exec > >(tee "$out_dir/gpu_check.log") 2>&1

if [[ "$mode" == dry-run ]]; then
    default_python="$root/.venv/bin/python"
    [[ -x "$default_python" ]] || default_python=python3
else
    default_python=python3
fi
PY="${PYTHON:-$default_python}"
wheels="${GPU_CHECK_WHEELS:-$root/.whl}"
gpu_home="${GPU_CHECK_HOME:-$root/.gpu}"
site="$gpu_home/site"
peers="$gpu_home/peers"
mmcv_version="2.1.0"
mmcv_cuda_ops="${MMCV_CUDA_OPS:-nms,roi_align}"  # the compiled ops our detectors call; the others keep CPU kernels
case "$mode" in
    full) warmup=3; repeats=10 ;;
    quick) warmup=2; repeats=5 ;;
    dry-run) warmup=1; repeats=1 ;;
esac

if [[ "$mode" != dry-run ]]; then
    export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
    export CONVNEXT_DENSE_PEERS="$peers"
    # ninja and the other console scripts of this Python's environment (torch's extension build runs ninja).
    PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
else
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
export PATH PY mode root work logs out_dir wheels gpu_home site peers mmcv_version mmcv_cuda_ops warmup repeats
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------------------------------- the steps
# name, time limit (s), minimum time left to start it (s). Python tool steps have their command line in tool_argv.
names=()
declare -A limit_of min_of
add_step() { names+=("$1"); limit_of[$1]=$2; min_of[$1]=$3; }
add_step env 60 5
add_step install 180 15
add_step mmcv 420 60
add_step test_cuda 180 20
add_step demo 420 200
add_step eval_mask_rcnn 150 30
add_step bench_mask_rcnn 180 40
add_step bench_upernet 150 30
add_step bench_cascade 200 45
add_step bench_mask_rcnn_fast 240 60
add_step bench_upernet_fast 240 50
add_step bench_cascade_fast 240 50

config_of() {
    case "$1" in
        bench_mask_rcnn*) echo configs/det/mask_rcnn_convnext_t.py ;;
        bench_cascade*) echo configs/det/cascade_convnext_t.py ;;
        bench_upernet*) echo configs/seg/upernet_convnext_t.py ;;
    esac
}

# tool_argv NAME [gpu|tiny]: the step's command line after the Python executable, in $argv. gpu: what runs on the
# GPU; tiny: the dry run's CPU form (64x64, one warm-up and one timed run, fp32, no --compile, which takes minutes
# to compile on a CPU).
tool_argv() {
    local name="$1" form="${2:-gpu}" config
    argv=()
    case "$name" in
        test_cuda)
            argv=(-m pytest -q -p no:cacheprovider -rs tests/test_backbones/test_cuda.py
                  --junitxml "$logs/test_cuda.xml")
            ;;
        demo)
            argv=(tools/demo.py --models upernet mask_rcnn --precision auto --work-dir "$work/demo")
            ;;
        eval_mask_rcnn)
            # The demo's Mask R-CNN evaluated again in fp16 without --show-dir (the demo draws every held-out
            # image): the evaluation's own time on the GPU, apart from the drawing.
            local checkpoint="$work/demo/mask_rcnn/epoch_4.pth" last="$work/demo/mask_rcnn/last_checkpoint"
            [[ -f "$last" ]] && checkpoint="$(cat "$last")"
            argv=(tools/test.py configs/demo/mask_rcnn_convnext_demo.py "$checkpoint" --data-root data/demo/coco/
                  --precision fp16 --work-dir "$work/eval_mask_rcnn")
            ;;
        bench_*)
            # The papers' sizes are the tool's defaults: 800x1344 (an 800x1333 COCO image padded to 32) for the
            # detectors, one 512x512 crop for UperNet. Batch 2: the papers' images per GPU in training.
            # score_thr=0: max_per_img detections reach the mask heads whatever the random weights give.
            # Training steps (with and without with_cp) in the full run's plain rows only: they are the slowest rows.
            config="$(config_of "$name")"
            argv=(tools/analysis/benchmark.py "$config" --batch-size 2 --compare)
            [[ "$name" != *_fast && "$mode" != quick ]] && argv+=(--train)
            if [[ "$form" == tiny ]]; then
                argv+=(--device cpu --precision fp32 --shape 64 64 --warmup 1 --repeats 1)
                [[ "$name" == *_fast ]] && argv+=(--channels-last)
            else
                argv+=(--device cuda --precision fp16 --warmup "$warmup" --repeats "$repeats")
                [[ "$name" == *_fast ]] && argv+=(--channels-last --compile)
            fi
            argv+=(--json "$work/bench/$name.json" --cfg-options model.backbone.init_cfg=None)
            [[ "$config" == configs/det/* ]] && argv+=(model.test_cfg.rcnn.score_thr=0)
            ;;
    esac
    return 0
}

# The dry run runs these Python steps at tiny size; it parses the command lines of the others.
dry_run_real=(test_cuda bench_mask_rcnn)

step_env() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPU cores, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB memory"}')"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
    else
        echo "nvidia-smi: not found"
    fi
    if command -v nvcc >/dev/null 2>&1; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
    "$PY" - <<'PY'
import os
import sys

import torch

print(f'python {sys.version.split()[0]} ({sys.executable})')
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f'GPU {props.name}: compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, '
          f'{props.total_memory / 2**30:.0f} GiB')
elif os.environ['mode'] != 'dry-run':
    sys.exit('error: torch sees no CUDA GPU; this check is for a GPU machine (--dry-run runs it on a CPU)')
else:
    print('no CUDA GPU (dry run)')
PY
    "$PY" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(numpy|scipy|matplotlib|opencv-python-headless|pillow|onnx|onnxruntime|timm|setuptools)==' \
        || true
}

# The carried wheels (gpu_prepare.sh --list), each checked present, installed with --target into $site (and the
# mmpretrain peer into $peers/mmpretrain, where backbones.patches finds it through CONVNEXT_DENSE_PEERS).
step_install() {
    local kind pin wheel_name found missing=0 files=() stamp
    while read -r kind pin; do
        [[ "$kind" == carried || "$kind" == peer ]] || continue
        wheel_name="$(printf '%s' "${pin%%==*}" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')"
        found="$(find "$wheels" -maxdepth 2 -type f -iname "${wheel_name}-${pin##*==}-*.whl" -print -quit 2>/dev/null)"
        if [[ -z "$found" ]]; then
            echo "missing: no wheel of $pin in $wheels"
            missing=1
        fi
    done < <(bash "$root/scripts/gpu_prepare.sh" --list)
    if [[ ! -f "$wheels/mmcv-$mmcv_version.tar.gz" ]]; then
        echo "missing: $wheels/mmcv-$mmcv_version.tar.gz"
        missing=1
    fi
    if ((missing)); then
        echo "error: run 'bash scripts/gpu_prepare.sh' on a machine with PyPI and carry .whl (docs/speed.md)"
        return 1
    fi
    mapfile -t files < <(find "$wheels" -maxdepth 1 -type f -name '*.whl' ! -name 'mmcv-*' | sort)
    stamp="$( (printf '%s\n' "${files[@]}" "$wheels"/peers/*.whl; "$PY" --version) | sha256sum | cut -c1-16)"
    if [[ -f "$site/.gpu_check_installed" && "$(cat "$site/.gpu_check_installed")" == "$stamp" ]]; then
        echo "already installed in $site (stamp $stamp)"
    else
        rm -rf "$site" "$peers" "$gpu_home/mmcv.installed"  # mmcv goes into $site too: the next step puts it back
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${files[@]}"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$peers/mmpretrain" \
            "$wheels"/peers/*.whl
        echo "$stamp" > "$site/.gpu_check_installed"
        echo "installed ${#files[@]} wheels into $site and the mmpretrain peer into $peers/mmpretrain"
    fi
    "$PY" - <<'PY'
import importlib.metadata as metadata

import pkg_resources  # noqa: F401  mmcv's setup.py and mmengine's mmdet::/mmseg:: bases import it

missing = []
for name in ('mmengine', 'mmdet', 'mmsegmentation', 'timm', 'pycocotools', 'shapely', 'setuptools', 'numpy', 'scipy',
             'matplotlib', 'opencv-python-headless', 'pytest'):
    try:
        print(f'{name} {metadata.version(name)}')
    except metadata.PackageNotFoundError:
        missing.append(name)
if missing:
    raise SystemExit(f'error: not importable here: {", ".join(missing)} (the GPU image is expected to have them)')
PY
}

# mmcv 2.1.0 with its compiled ops: CUDA kernels for $mmcv_cuda_ops only (the ops our detectors call on the GPU),
# every op's CPU kernel, for this GPU's arch only. A wheel built for the same torch and arch (in .whl/mmcv/, from an
# earlier run) is installed instead.
step_mmcv() {
    local torch_version arch build_tag wheel_glob wheel src jobs start
    torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
    arch="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
    build_tag="1torch${torch_version//[^A-Za-z0-9.]/}sm${arch//[^0-9]/}"
    wheel_glob="mmcv-$mmcv_version-$build_tag-*.whl"
    if [[ -f "$gpu_home/mmcv.installed" && "$(cat "$gpu_home/mmcv.installed")" == "$build_tag" ]]; then
        echo "mmcv $mmcv_version ($build_tag) already installed in $site"
    else
        wheel="$(find "$wheels/mmcv" -maxdepth 1 -type f -name "$wheel_glob" -print -quit 2>/dev/null || true)"
        if [[ -n "$wheel" ]]; then
            echo "installing the carried $wheel"
        else
            src="$gpu_home/mmcv-build"
            rm -rf "$src"
            mkdir -p "$src"
            tar -xzf "$wheels/mmcv-$mmcv_version.tar.gz" -C "$src"
            # torch >= 2.10 headers need C++20; the sdist hard-codes older standards (as scripts/install.sh does).
            sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/mmcv-$mmcv_version/setup.py"
            "$PY" - "$src/mmcv-$mmcv_version" "$mmcv_cuda_ops" <<'PY'
"""Keep the CUDA kernels of the named ops only: their blocks of cuda/cudabind.cpp and their cuda/<op>_cuda.cu.

The other ops keep their CPU kernels; the few dispatchers that call a CUDA function directly (under
MMCV_WITH_CUDA) are compiled as in a CPU build, so nothing refers to a kernel that is not built.
"""
import re
import sys
from pathlib import Path

source, ops = Path(sys.argv[1]), sys.argv[2].split(',')
pytorch = source / 'mmcv/ops/csrc/pytorch'
cudabind = pytorch / 'cuda/cudabind.cpp'
wanted = re.compile(r'(?:%s)(?:_forward|_backward)?_impl' % '|'.join(map(re.escape, ops)))

text = cudabind.read_text()
header = re.match(r'(?:#include[^\n]*\n)+', text).group(0)
parts = re.split(r'((?:REGISTER_DEVICE_IMPL\([^;]*\);\s*)+)', text[len(header):])
if parts[-1].strip():
    sys.exit('error: cudabind.cpp does not end with a block of REGISTER_DEVICE_IMPL lines; its layout changed')
kept, registered = [], []
for code, registrations in zip(parts[0::2], parts[1::2]):
    impls = re.findall(r'REGISTER_DEVICE_IMPL\(\s*(\w+)\s*,', registrations)
    if any(wanted.fullmatch(impl) for impl in impls):
        kept.append(code + registrations)
        registered += impls
for op in ops:
    if not any(re.fullmatch(rf'{re.escape(op)}(?:_forward|_backward)?_impl', impl) for impl in registered):
        sys.exit(f'error: no CUDA registration of {op} in cudabind.cpp')
    if not (pytorch / f'cuda/{op}_cuda.cu').is_file():
        sys.exit(f'error: no cuda/{op}_cuda.cu in mmcv')
cudabind.write_text(header + ''.join(kept))
for kernel in (pytorch / 'cuda').glob('*.cu'):
    if kernel.name not in {f'{op}_cuda.cu' for op in ops}:
        kernel.unlink()
for dispatcher in pytorch.glob('*.cpp'):
    text = dispatcher.read_text()
    if dispatcher.name != 'info.cpp' and 'MMCV_WITH_CUDA' in text:  # info.cpp reports the CUDA version built with
        text = text.replace('#ifdef MMCV_WITH_CUDA', '#ifdef MMCV_WITH_CUDA_ALL_OPS')
        if re.search(r'MMCV_WITH_CUDA\b', text):
            sys.exit(f'error: {dispatcher.name} uses MMCV_WITH_CUDA other than in #ifdef; cannot trim')
        dispatcher.write_text(text)
print(f'CUDA kernels kept: {", ".join(sorted(registered))}')
PY
            # torch's CUDA headers include the CUDA libraries' headers (cusparse.h, ...): where the toolkit lacks
            # them, the copies of torch's own nvidia-* wheels serve (CPATH comes after the toolkit's -I folders).
            CPATH="${CPATH:+$CPATH:}$("$PY" -c 'import glob, os, sys; print(":".join(sorted({d for p in sys.path
                for d in glob.glob(os.path.join(p, "nvidia", "*", "include"))})))')"
            export CPATH
            jobs="${MAX_JOBS:-$(nproc)}"
            command -v ninja >/dev/null || echo "warning: no ninja on PATH: torch compiles the 80 files one at a time"
            echo "building mmcv $mmcv_version: CUDA arch $arch, $jobs jobs, nvcc: $(command -v nvcc || echo none)"
            start=$SECONDS
            env MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$jobs" \
                CFLAGS="-g0 -O1" CXXFLAGS="-g0 -O1" \
                "$PY" -m pip wheel -v --no-deps --no-build-isolation --no-index "$src/mmcv-$mmcv_version" \
                -w "$src/dist" > "$logs/mmcv_build.log" 2>&1 \
                || { tail -n 40 "$logs/mmcv_build.log"; return 1; }
            echo "built in $((SECONDS - start)) s (compiler output: work/run/logs/mmcv_build.log)"
            wheel="$(find "$src/dist" -name "mmcv-$mmcv_version-*.whl" -print -quit)"
            # The build tag names the torch and arch it was built for: a later run on such a machine installs it.
            mv "$wheel" "$src/dist/$(basename "$wheel" | sed "s/^mmcv-$mmcv_version-/mmcv-$mmcv_version-$build_tag-/")"
            wheel="$(find "$src/dist" -name "$wheel_glob" -print -quit)"
            cp "$wheel" "$out_dir/"
            echo "wheel for the next run: $(basename "$wheel") in the output folder (put it in .whl/mmcv/)"
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheel"
        echo "$build_tag" > "$gpu_home/mmcv.installed"
    fi
    "$PY" - <<'PY'
import mmcv
import torch
import torchvision
from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms

print(f'mmcv {mmcv.__version__}, compiled ops built with CUDA {get_compiling_cuda_version()}')
if torch.cuda.is_available():  # the CUDA kernels against torchvision's
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32, device='cuda')
    scores = torch.tensor([0.9, 0.8, 0.7], device='cuda')
    _, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2], keep
    features = torch.randn(1, 8, 32, 32, device='cuda')
    rois = torch.tensor([[0, 1.5, 2.5, 20.0, 27.0]], device='cuda')
    ours = RoIAlign((7, 7), 0.5, 2, aligned=True)(features, rois)
    expected = torchvision.ops.roi_align(features, rois, (7, 7), 0.5, 2, True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)  # tests/test_env.py's tolerance
    print('CUDA nms and RoIAlign match torchvision')
PY
}

# step_parse NAME...: parse every tool command line of a GPU run with its own parser (the dry run's first step).
step_parse() {
    local name
    : > "$work/parse/requests.tsv"
    for name in "$@"; do
        [[ "$name" == demo || "$name" == eval_* || "$name" == bench_* ]] || continue
        tool_argv "$name" gpu
        (IFS=$'\t'; printf '%s\t%s\n' "$name" "${argv[*]}") >> "$work/parse/requests.tsv"
    done
    "$PY" - "$work/parse/requests.tsv" "$work/parse" <<'PY'
"""Parse each command line with the parser of its tool, loaded once per tool, and load the config it names."""
import runpy
import sys
from pathlib import Path

from mmengine.config import Config

requests, answers = Path(sys.argv[1]), Path(sys.argv[2])
tools = {}
for line in requests.read_text().splitlines():
    name, tool, *argv = line.split('\t')
    try:
        namespace = tools.setdefault(tool, runpy.run_path(tool, run_name='gpu_check_parse'))
        sys.argv = [tool, *argv]
        if 'build_parser' in namespace:
            args = namespace['build_parser']().parse_args(argv)
        else:
            args = namespace['parse_args']()
        if getattr(args, 'config', None):
            cfg = Config.fromfile(args.config)
            cfg.merge_from_dict(args.cfg_options or {})
        code, text = 0, f'parsed by {tool}: {vars(args)}'
    except SystemExit as error:
        code, text = error.code if isinstance(error.code, int) else 1, f'{tool} refused it: {error}'
    except Exception as error:  # noqa: BLE001  any error is this step's failure, reported as one line
        code, text = 1, f'{tool}: {type(error).__name__}: {error}'
    print(f'{name}: {text}')
    (answers / f'{name}.txt').write_text(text + '\n')
    (answers / f'{name}.rc').write_text(f'{code}\n')
PY
}

# On a GPU a skipped CUDA test is a failure: pytest's own exit code is 0 then.
step_test_cuda() {
    local code=0
    "$PY" "${argv[@]}" || code=$?
    ((code == 0)) || return "$code"
    [[ "$mode" == dry-run ]] && return 0
    "$PY" - "$logs/test_cuda.xml" <<'PY'
import sys
import xml.etree.ElementTree as ElementTree

suite = ElementTree.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
if int(suite.get('skipped', 0)) or not int(suite.get('tests', 0)):
    sys.exit(f'error: {suite.get("skipped")} of {suite.get("tests")} CUDA tests skipped on the GPU machine')
PY
}

# Each step function runs in a shell of its own with -e and pipefail (run_limited below): any failing command fails it.
export -f step_env step_install step_mmcv step_test_cuda step_parse tool_argv config_of log

# ------------------------------------------------------------------------------------------------- the runner
failed=0
run_start=$SECONDS

selected() {
    local name="$1" pattern patterns=()
    [[ -z "$steps_filter" ]] && return 0
    [[ "$mode" != dry-run && ("$name" == env || "$name" == install || "$name" == mmcv) ]] && return 0
    IFS=',' read -r -a patterns <<< "$steps_filter"
    for pattern in "${patterns[@]}"; do
        # shellcheck disable=SC2053  # a pattern on purpose
        [[ "$name" == $pattern ]] && return 0
    done
    return 1
}

record() {  # record NAME EXIT SECONDS LIMIT NOTE
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$summary"
}

# run_limited NAME LIMIT NOTE COMMAND...: run COMMAND with its output in logs/NAME.log, stopped after LIMIT seconds.
run_limited() {
    local name="$1" limit="$2" note="$3" start code=0
    shift 3
    log "$name: start (limit ${limit} s): ${*:1:14}"
    start=$SECONDS
    timeout --kill-after=15 "$limit" "$@" > "$logs/$name.log" 2>&1 < /dev/null || code=$?
    local seconds=$((SECONDS - start))
    if ((code == 124 || code == 137)); then
        note="stopped at its ${limit} s limit${note:+; $note}"
    fi
    record "$name" "$code" "$seconds" "$limit" "$note"
    if ((code == 0)); then
        log "$name: ok in ${seconds} s"
    else
        failed=1
        log "$name: FAILED (exit $code) in ${seconds} s; last lines of work/run/logs/$name.log:"
        tail -n 25 "$logs/$name.log" | sed 's/^/    /'
    fi
}

# The report and the archive, rewritten after every step.
pack() {
    local name
    {
        echo "# GPU check ($mode), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo
        echo "| step | exit | seconds | limit | note |"
        echo "|---|---|---|---|---|"
        tail -n +2 "$summary" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}'
        if [[ -f "$logs/env.log" ]]; then
            printf '\n## Machine\n\n```\n'; cat "$logs/env.log"; printf '```\n'
        fi
        if [[ -f "$logs/mmcv.log" ]]; then
            printf '\n## mmcv\n\n```\n'; grep -vE '^\s*$' "$logs/mmcv.log" | tail -n 6; printf '```\n'
        fi
        if [[ -f "$logs/test_cuda.log" ]]; then
            printf '\n## tests/test_backbones/test_cuda.py\n\n```\n'; tail -n 8 "$logs/test_cuda.log"; printf '```\n'
        fi
        if [[ -f "$work/demo/summary.txt" ]]; then
            printf '\n## Demo (--models upernet mask_rcnn --precision auto)\n\n```\n'
            cat "$work/demo/summary.txt"
            printf '```\n'
        fi
        if [[ -f "$logs/eval_mask_rcnn.log" ]]; then
            printf '\n## eval_mask_rcnn (tools/test.py, fp16, no --show-dir)\n\n```\n'
            grep -E 'Epoch\(test\)|coco/bbox_mAP|error' "$logs/eval_mask_rcnn.log" | tail -n 4 | cut -c1-400
            printf '```\n'
        fi
        for name in "${names[@]}"; do
            [[ "$name" == bench_* && -f "$logs/$name.log" ]] || continue
            tool_argv "$name" "$([[ "$mode" == dry-run ]] && echo tiny || echo gpu)"
            printf '\n## %s\n\n`python %s`\n\n' "$name" "${argv[*]}"
            grep -E '^(\||GPU |CPU |weights:|with_cp:|--compare|error)' "$logs/$name.log" \
                || echo "(no table: see its log)"
        done
    } > "$out_dir/report.md.partial" && mv "$out_dir/report.md.partial" "$out_dir/report.md"
    local code=0  # 1: a file changed while read (gpu_check.log grows as tar reads it)
    tar -czf "$out_dir/logs.tar.gz.partial" -C "$out_dir" --exclude='*.pth' --exclude='work/run/demo/*/predictions' \
        --exclude='work/run/demo/*/*/vis_image' summary.tsv report.md gpu_check.log work 2>/dev/null || code=$?
    if ((code <= 1)); then
        mv "$out_dir/logs.tar.gz.partial" "$out_dir/logs.tar.gz"
    else
        rm -f "$out_dir/logs.tar.gz.partial"
    fi
}
trap 'log "stopped from outside"; record interrupted 130 0 0 "the check was stopped here"; pack; exit 130' INT TERM

log "mode $mode, budget ${budget} s, python $PY, output in $out_dir"
if [[ "$mode" == dry-run ]]; then
    run_limited parse 120 "dry run: every demo and benchmark command line of a GPU run, parsed by its tool" \
        bash -eo pipefail -c 'step_parse "$@"' _ "${names[@]}"
    pack
fi
for name in "${names[@]}"; do
    if ! selected "$name"; then
        continue
    fi
    limit="${limit_of[$name]}"
    left=$((budget - (SECONDS - run_start)))
    if [[ "$mode" != dry-run ]] && ((left < ${min_of[$name]})); then
        record "$name" skip 0 "$limit" "not started: ${left} s of the budget left, it needs ${min_of[$name]} s"
        log "$name: not started, ${left} s of the ${budget} s budget left"
        failed=1
        continue
    fi
    ((left < limit)) && limit=$((left > 1 ? left : 1))
    note=""
    case "$name" in
        env | install | mmcv)
            if [[ "$mode" == dry-run && "$name" != env ]]; then
                record "$name" 0 0 "$limit" "dry run: not run (no wheels are installed and mmcv is not built on a CPU)"
                log "$name: dry run, not run"
                continue
            fi
            run_limited "$name" "$limit" "" bash -eo pipefail -c "step_$name"
            ;;
        *)
            if [[ "$mode" == dry-run ]]; then
                if [[ " ${dry_run_real[*]} " == *" $name "* ]]; then
                    tool_argv "$name" tiny
                    note="dry run: ran on the CPU"
                    if [[ "$name" == bench_* ]]; then note+=" at 64x64, fp32, 1+1 runs"; fi
                else
                    run_limited "$name" "$limit" "dry run: command line parsed by its tool, not run" \
                        bash -c 'cat "$1.txt" && exit "$(cat "$1.rc")"' _ "$work/parse/$name"
                    pack
                    continue
                fi
            else
                tool_argv "$name" gpu
            fi
            if [[ "$name" == test_cuda ]]; then
                run_limited "$name" "$limit" "$note" bash -eo pipefail -c 'argv=("$@"); step_test_cuda' _ "${argv[@]}"
            else
                run_limited "$name" "$limit" "$note" "$PY" "${argv[@]}"
            fi
            ;;
    esac
    pack
done
trap - INT TERM

total=$((SECONDS - run_start))
record total "$failed" "$total" "$budget" "$mode run; exit 0 only if every step ran and passed"
pack
if [[ "$mode" != dry-run ]]; then
    rm -rf "$out_dir/work"  # logs.tar.gz holds it (without checkpoints and per-image predictions)
fi
echo
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
echo
cat "$out_dir/report.md"
log "done in ${total} s: $([[ $failed == 0 ]] && echo 'every step passed' || echo 'some steps failed or did not run')"
exit "$failed"
