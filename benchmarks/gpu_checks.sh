#!/usr/bin/env bash
# The GPU checks of one short lease, prepared to run end to end (about 8 min on
# one H100/H200): training MFU of the paper's 1B shape at 8k tokens, then a
# long far stage of the PassKey probe. Needs only JAX, Flax, Optax, Orbax and
# gin-config (no TensorFlow or seqio; on the lent image gin-config travels as
# a wheel). Results land in $OUT (default runs/gpu).
#
#   OUT=runs/gpu bash benchmarks/gpu_checks.sh
#
# What the last lease measured and left open: README "Measured" (MFU) and
# "PassKey" (the probe runs A and B).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
quiet='^[WI][0-9]\{4\} '  # absl/XLA log lines

# 1. MFU: remat none vs dots (full remat measured 15.7% fam, 20.0% bswa on an
#    H200), batch 1 and 4 rows of 8,192 tokens.
for batch in 1 4; do
  timeout 150 python3 benchmarks/train_step.py --model fam_1b --lengths 8192 \
    --batch "$batch" --dtype bfloat16 --finetune full --remat dots \
    --attention fam,bswa --repeats 5 2>&1 | grep -v "$quiet" \
    | tee -a "$OUT/mfu.txt"
done

# 2. PassKey probe, FAM only, without state passing (which cost in-window
#    copying at this scale): copy, fillers 64-384, then 20,000 far-stage steps
#    (3,000 were not enough to teach the memory).
timeout 330 python3 benchmarks/passkey_probe.py --out "$OUT/probe" \
  --attention fam --state-passing 0 --lr-later 1e-3 --eval-every 2000 \
  --watch 128,1024 --lengths 128,512,1024,2048,4096 \
  --stages induct_near:2500:384:32,pk64-384:1500:768:16,far:20000:1152:8 \
  2>&1 | grep -v "$quiet" | tee "$OUT/probe.log"
