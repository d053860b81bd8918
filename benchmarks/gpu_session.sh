#!/usr/bin/env bash
# One GPU session's measurements (issue #21 and the other benchmarks' --device cuda lines), at most
# 570 s of step limits (about 9.5 minutes) on one H200 with 16 CPU cores. Run from the repository root:
#
#   bash benchmarks/gpu_session.sh            # outputs in $OUT (or ./gpu_session_out)
#
# Each step has its own time limit, so one slow step cannot eat the others' time; a step that hits
# it says so in its output file. The JPEG folder (16,000 train + 2,000 val, ~1.5 GB) is written once
# to a scratch folder outside $OUT and removed at the end.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_session_out}"
mkdir -p "$OUT"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/prunelens-gpu-session.XXXXXX")"
trap 'rm -rf "$SCRATCH"; [ -n "${DMON:-}" ] && kill "$DMON" 2>/dev/null' EXIT
export PYTHONPATH=src
PY="${PYTHON:-python}"  # e.g. PYTHON=.venv/bin/python

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt and the console
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -i "warning" | tee -a "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name rc=$rc wall_s=$((SECONDS - t0))$([ "$rc" = 124 ] && echo ' TIMED OUT')" | tee -a "$OUT/$name.txt"
}

{ nvidia-smi; "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  > "$OUT/environment.txt" 2>&1
# SM busy % every second for the whole session (the issue's `nvidia-smi dmon` figure)
nvidia-smi dmon -s u -d 1 -o T > "$OUT/dmon.txt" 2>&1 &
DMON=$!

# the GPU-only tests (nvJPEG vs Pillow; decoding between queued kernels leaves their memory alone)
step gpu_tests 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_input_paths.py -k "nvjpeg or gpu_decoding"

JPEGS="$SCRATCH/jpegs"
COMMON=(--device cuda --train-images 16000 --val-images 2000 --workers 16 --data "$JPEGS")
# resnet50 recipe at bf16, channels-last, compiled (targets: >= 85 % of in-memory, GPU busy >= 80 %)
# and the accuracy suite's evaluation (target >= 5,000 img/s)
step input_pipeline_resnet50 240 "$PY" benchmarks/input_pipeline.py "${COMMON[@]}" \
  --recipes resnet50 --amp --channels-last --compile
# vit_b_32 recipe as configured (AutoAugment, RA sampler, MixUp/CutMix, EMA, bf16; target >= 70 %)
step input_pipeline_vit_b_32 120 "$PY" benchmarks/input_pipeline.py "${COMMON[@]}" \
  --recipes vit_b_32 --no-eval
# the in-memory figure the issue quotes (6,476 img/s, ratio 2.69)
step train 45 "$PY" benchmarks/train.py --device cuda --model resnet50 --size 224 --batch 256 \
  --amp --channels-last --compile --rounds 5 --sparsity 0.9
step prune_step 30 "$PY" benchmarks/prune_step.py --device cuda --model resnet50 --batch 128 --size 224
step rq1 60 "$PY" benchmarks/rq1.py --device cuda --models resnet50,vit_b_32 --batch 16
step lost 30 "$PY" benchmarks/lost.py --device cuda --n-images 1024 --batch-size 256
echo "outputs in $OUT"
