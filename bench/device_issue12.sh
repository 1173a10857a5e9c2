#!/usr/bin/env bash
# Issue 12's GPU check in one run (the device tool lends 15 minutes in all): an
# In-the-Wild-length corpus built on the machine's cores, training throughput (model alone,
# loader alone, the whole loop for one epoch), one torchrun rank on nccl, bulk scoring
# (onnxruntime on the CPU cores with threads vs --workers, torch eager on the GPU), one log.
#
# The device image has python3 with torch, timm, onnx, onnxruntime (CPU only: no
# onnxruntime-gpu, and its wheel is larger than the 64 MiB a call may carry), pandas,
# scikit-learn, typer, but not soundfile, soxr or librosa. Fetch those here first:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl soundfile==0.14.0 soxr==1.1.0 librosa==0.11.0 \
#     audioread==3.1.0 decorator==5.3.2 pooch==1.9.0 platformdirs==4.14.9
# (2.0 MB; the versions this checkout's venv has; checked to download on 2026-12-07.) Then,
# with the device tool: run(command="bash bench/device_issue12.sh", carry=[".whl"],
# timeout_s=560). Sizes: UTT=3000 builds 6,000 clips (about 2.5 min on 16 cores); the
# other steps are bounded by STEPS and FILES. Extrapolate the 10-epoch time from the one
# epoch, and say so.
#
# Locally, small (a dry run of every step on the CPU):
#   PY=.venv/bin/python DEVICE=cpu UTT=60 STEPS=2 FILES=100 bash bench/device_issue12.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
UTT=${UTT:-3000}        # utterance pairs: 6,000 clips, about 7 hours of audio
STEPS=${STEPS:-20}
FILES=${FILES:-4000}
BULK_FILES=${BULK_FILES:-1000}  # res2net50 on CPU onnxruntime: ~10 s per 1,000 files
CORES=$(nproc)
OUT=${OUT:-/tmp/dfa-device}
mkdir -p "$OUT"
WORK=$(mktemp -d)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
log() { echo "== $(date +%T) $*"; }
{
log "machine"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
echo "cores $CORES; $($PY -c 'import torch, onnxruntime; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())')"

log "corpus: $UTT utterance pairs with In-the-Wild's lengths, $CORES workers"
start=$(date +%s)
$PY -m trainer.synth "$WORK/itw" --utterances "$UTT" --speakers 58 --lengths itw \
  --workers "$CORES" >/dev/null
echo "corpus built in $(( $(date +%s) - start )) s, $(du -sh "$WORK/itw" | cut -f1)"

log "model alone: training samples/s (bf16 autocast + channels_last on CUDA)"
$PY bench/bench_train.py --device "$DEVICE" --presets res2net50,edge --batch 64 \
  --steps "$STEPS" --skip-cache

log "loader alone: windows/s of the default recipe's on-the-fly pipeline"
$PY bench/bench_loader.py --data "$WORK/itw" --files "$FILES" --workers "$((CORES / 2)),$CORES" \
  --repeat 3

log "whole loop: dfa-train res2net50, default recipe, 1 epoch (cache build timed apart)"
start=$(date +%s)
$PY -m trainer "$WORK/itw" --out "$WORK/run" --arch res2net50 --epochs 1 --device "$DEVICE" \
  --cache-dir "$WORK/cache" --batch-size 64 2>&1 | grep -v "^\s*$" | tail -25
echo "dfa-train wall $(( $(date +%s) - start )) s; cache $(du -sh "$WORK/cache" | cut -f1)"
$PY - "$WORK/run/metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r[k] for k in r if "time" in k or k in ("epoch", "val_eer")})
EOF

log "one rank under torchrun: the nccl process group (tiny preset, 1 epoch, the same cache)"
$PY -m torch.distributed.run --nproc_per_node 1 -m trainer "$WORK/itw" --out "$WORK/nccl" \
  --arch tiny --epochs 1 --device "$DEVICE" --cache-dir "$WORK/cache" --batch-size 64 2>&1 \
  | grep -E "^model:|EER  |error" || echo "one-rank torchrun run FAILED"

log "bulk scoring: onnxruntime on $CORES cores, threads vs --workers; torch eager on $DEVICE"
$PY bench/bench_bulk.py --data "$WORK/itw" --files "$BULK_FILES" --presets res2net50,edge \
  --precisions fp32,fp16,int8 --workers "0,$((CORES / 2)),$CORES" --repeat 1 --device cpu \
  --batch-size 16 --torch-device "$DEVICE"
} 2>&1 | tee "$OUT/log.txt"
rm -rf "$WORK"
