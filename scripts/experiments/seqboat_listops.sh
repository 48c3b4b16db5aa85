#!/usr/bin/env bash
# SeqBoat on ListOps-mini (spec C1a): SeqBoat vs dense attention vs a local window in
# original positions vs the EMA path alone, same model otherwise (d 64, 2 layers, N 8,
# z 32, e 128, bidirectional, softmax, post-LN), same steps, per seed.
# Usage: scripts/experiments/seqboat_listops.sh [OUTDIR]   (env: SEEDS, STEPS, THREADS, ARMS)
set -euo pipefail
OUT=${1:-target/experiments/seqboat_listops}
SEEDS=${SEEDS:-"1 2"}
STEPS=${STEPS:-1800}
THREADS=${THREADS:-2}
ARMS=${ARMS:-"seqboat dense local ema"}
BIN=${BIN:-target/release/modula}
[ -x "$BIN" ] || cargo build --release --bin modula
mkdir -p "$OUT"
common=(--data listops --seq 128 --d 64 --layers 2 --ndim 8 --zdim 32 --hdim 128
  --batch 32 --steps "$STEPS" --lr 3e-3 --eval-batches 62 --quiet --threads "$THREADS")
for seed in $SEEDS; do
  for arm in $ARMS; do
    case $arm in
      seqboat) extra=(--gate learned --window 16) ;;
      dense) extra=(--gate always --window 0) ;;
      local) extra=(--gate always --window 16) ;;
      ema) extra=(--gate off --window 16) ;;
      *) echo "unknown arm $arm" >&2; exit 2 ;;
    esac
    f="$OUT/$arm.s$seed"
    [ -f "$f.gguf" ] && continue
    start=$(date +%s.%N)
    "$BIN" train --arch seqboat "${common[@]}" "${extra[@]}" --seed "$seed" --out "$f.gguf" > "$f.log" 2>&1
    end=$(date +%s.%N)
    acc=$(grep '^validation' "$f.log" | sed 's/.*accuracy \([0-9.]*\)%.*/\1/')
    act=$(grep -o '"activation":\[[^]]*\]' "$f.gguf.metrics.jsonl" | tail -1)
    printf '%s seed %s: accuracy %s%%  %s  %.0f s\n' "$arm" "$seed" "$acc" "$act" "$(echo "$end - $start" | bc)" | tee -a "$OUT/summary.txt"
  done
done
