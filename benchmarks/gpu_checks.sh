#!/usr/bin/env bash
# The GPU checks of one short lease: the CPU-scale PassKey models of issue 12
# trained through the recall drill (README, PassKey), then the training MFU of
# the paper's 1B shape at 8k tokens. On one H100, stages 1-4 and the MFU took
# 480 s, stage 5 132 s: two calls of the lease's 10-minute limit,
#   LAST_STAGE=4 ..., then FIRST_STAGE=5 MFU_SECONDS=0 WORK=<carried> ...
# FIRST_STAGE=6 runs the MFU sets alone (about 45 s each on an H100).
# Needs only JAX, Flax, Optax, Orbax and gin-config (no TensorFlow or seqio;
# on the lent image gin-config travels as a wheel). Results land in $OUT
# (default runs/gpu): log.txt, mfu.txt and passkey_*.tgz (every stage's
# <attention>.npz and probe.json, for benchmarks/passkey.py's evaluation).
#
#   OUT=runs/gpu bash benchmarks/gpu_checks.sh
#   STEPS_SCALE=0.001 OUT=/tmp/gpu bash benchmarks/gpu_checks.sh  # CPU smoke
#
# The GPU is mostly idle with these 2-layer models, so the three PassKey
# pipelines (FAM F=8, FAM F=16, the BSWA twin) run side by side, with batches
# 2-4x the CPU recipe's (README, PassKey). Every stage has a time limit (those
# of the run the README reports, on an H100; they cut stages 1 and 3 short); a
# stage cut short leaves its last evaluation's npz, and the next starts there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
WORK=${WORK:-/tmp/gpu_checks}
SCALE=${STEPS_SCALE:-1}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
quiet='^[WI][0-9]\{4\} \|^WARNING: All'  # absl/XLA log lines
steps() { python3 -c "print(max(2, round($1 * $SCALE)))"; }

# stage DIR SECONDS PREVIOUS_NPZ ATTENTION [probe args...]: one probe run, from
# the previous stage's npz (or from scratch when PREVIOUS_NPZ is '').
stage() {
  local dir=$1 seconds=$2 init=$3 attention=$4
  shift 4
  mkdir -p "$dir"
  timeout "$seconds" python3 benchmarks/passkey_probe.py --out "$dir" \
    --attention "$attention" --state-passing 0 ${init:+--init "$init"} "$@" \
    2>&1 | grep -v "$quiet" > "$dir/log.txt"
  echo "$(date +%T) $dir: $(tail -n 1 "$dir/log.txt")"
}

# pipeline NAME ATTENTION MODEL: copy -> m=0 recall -> m=0 long recall -> m=3
# -> m=3 with keys 8x past the receptive field. Only stages FIRST_STAGE to
# LAST_STAGE run; earlier ones' npz must be in $WORK/NAME (a resumed lease).
pipeline() {
  local name=$1 attention=$2 model=$3 dir=$WORK/$1 npz=""
  run() {  # NUMBER DIR SECONDS [probe args...]
    local number=$1 stage_dir=$dir/$2 seconds=$3
    shift 3
    if (( number >= ${FIRST_STAGE:-1} && number <= ${LAST_STAGE:-5} )); then
      stage "$stage_dir" "$seconds" "$npz" "$attention" "$@"
    fi
    [[ -f $stage_dir/$attention.npz ]] && npz=$stage_dir/$attention.npz
  }
  # 1. Copying (run B's first two stages): the copy drill, then keys 64-384
  #    tokens back, m=3, from scratch.
  run 1 1_copy 120 ${model:+--model "$model"} \
    --lr 3e-3 --lr-later 1e-3 --eval-every 250 --watch 32,128 --lengths 128 \
    --stages "induct_near:$(steps 2000):384:64,pk64-384:$(steps 800):768:32"
  # 2. The recall drill at m=0: only the FAM reaches past the block.
  run 2 2_recall 120 --model memory_segments=0 \
    --lr 1e-3 --eval-every 250 --watch 32,128 --lengths 128 \
    --stages "recall0-64:$(steps 3000):768:32"
  # 3. Longer gaps, still m=0.
  run 3 3_long 80 --lr 1e-3 --eval-every 250 --watch 256,1024 --lengths 1024 \
    --stages "recall0-768:$(steps 1200):2048:16"
  # 4. The benchmark's m=3 (receptive field 448 tokens): keys inside it come
  #    through the memory segments, keys beyond only through the FAM.
  run 4 4_m3 100 --model memory_segments=3 --lr 5e-4 --eval-every 250 \
    --watch 256,1024 --lengths 32,128,256,512,1024,2048,4096 \
    --stages "recall0-768:$(steps 1200):2048:16"
  # 5. Short gaps (inside every window), then gaps up to 3,072 tokens in rows
  #    of 4,096, so that keys 8x past the receptive field are trained ones.
  run 5 5_far 220 --lr 5e-4 --lr-later 5e-4 --eval-every 200 \
    --watch 32,4096 --lengths 32 \
    --stages "recall0-448:$(steps 500):1024:32,recall0-3072:$(steps 700):4096:16"
}

start=$(date +%s)
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())"
  for spec in ${PIPELINES:-fam8:fam: fam16:fam:fam_length=16 bswa:bswa:}; do
    IFS=: read -r name attention model <<< "$spec"
    pipeline "$name" "$attention" "$model" &
  done
  wait
  echo "passkey: $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT/log.txt"
pack() {  # NAME GLOBS: the stages' directories that exist, if any
  local dirs
  dirs=$(cd "$WORK" && ls -d $2 2>/dev/null)
  [[ -n $dirs ]] && tar czf "$OUT/passkey_$1.tgz" -C "$WORK" $dirs
}
pack early "*/1_copy */2_recall"
pack late "*/3_long */4_m3"
pack far "*/5_far"

# MFU of the paper's 1B shape, 8,192 tokens, bf16, remat dots: cuDNN's flash
# attention with the FAM scan unrolled, then fam-jax's einsum kernel (README,
# Measured, one H100: 22.6% fam / 32.7% bswa with cuDNN, 17.1% / 22.5%
# einsum; the unrolled scan took fam from 400 to 338 ms). Then the FAM scan's
# weight gradients batched (not yet measured on a GPU). About 45 s a set.
cudnn=attention_kernel=cudnn,fam_scan_unroll=8
for settings in ${MFU_SETS:-$cudnn attention_kernel=einsum $cudnn,fam_scan_batched_grads=True}; do
  (( ${MFU_SECONDS:-110} > 0 )) && timeout "${MFU_SECONDS:-110}" python3 benchmarks/train_step.py --model fam_1b \
    --lengths 8192 --batch 1 --dtype bfloat16 --finetune full --remat dots \
    --attention fam,bswa --repeats 3 --set "$settings" 2>&1 \
    | grep -v "$quiet" | tee -a "$OUT/mfu.txt"
done
echo "all: $(( $(date +%s) - start )) s" | tee -a "$OUT/log.txt"
