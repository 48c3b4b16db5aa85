#!/usr/bin/env bash
# SeqBoat on sparse associative recall with distant keys (spec C1b): 4 (key, value) pairs
# in the first 200 of 256 noise positions, query at the end (target: the value, 10-way).
# Arms: SeqBoat (learned gate, window 8 in activated tokens), local window 8 in original
# positions, dense causal attention, EMA only. Causal LM, pre-LN, d 64, 2 layers.
# Usage: scripts/experiments/seqboat_recall.sh [OUTDIR]
#   env: SEEDS, STEPS, THREADS, ARMS, SEQ (256), PAIRS (4), WINDOW (8)
set -euo pipefail
OUT=${1:-target/experiments/seqboat_recall}
SEEDS=${SEEDS:-"1"}
STEPS=${STEPS:-1500}
THREADS=${THREADS:-2}
ARMS=${ARMS:-"seqboat local dense ema"}
SEQ=${SEQ:-256}
PAIRS=${PAIRS:-4}
WINDOW=${WINDOW:-8}
BIN=${BIN:-target/release/modula}
[ -x "$BIN" ] || cargo build --release --bin modula
mkdir -p "$OUT"
common=(--data sparse-recall --seq "$SEQ" --pairs "$PAIRS" --d 64 --layers 2 --ndim 8 --zdim 32
  --hdim 128 --batch 32 --steps "$STEPS" --lr 3e-3 --eval-batches 32 --quiet --threads "$THREADS")
for seed in $SEEDS; do
  for arm in $ARMS; do
    case $arm in
      seqboat) extra=(--gate learned --window "$WINDOW") ;;
      local) extra=(--gate always --window "$WINDOW") ;;
      dense) extra=(--gate always --window 0) ;;
      ema) extra=(--gate off --window "$WINDOW") ;;
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
