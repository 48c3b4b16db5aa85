#!/usr/bin/env bash
# Mixed precision by usage (issue #9) on a ModuleFormer byte LM (MODEL, default: trains the
# model of scripts/experiments/moduleformer_kjv.sh with MI loss 0.01, 400 steps).
# Files: F32, F16, Q8_0, Q4_0, and `--type mixed` at BUDGET MiB (hot experts Q8_0, cold Q4_0,
# other matrices Q8_0) picking the most used experts on Genesis-Job (the method) or the
# least used (the control). For each: tensor data size, validation loss on KJV (all of it),
# decode tokens/s (median of 3 runs, 2 threads, 256 tokens after a 16-byte prompt).
# Usage: bash scripts/experiments/mixed_precision.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${BUDGET:-1.8}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
model=${MODEL:-}
if [ -z "$model" ]; then
  $m train --arch moduleformer --d 128 --layers 4 --experts 8 --ffn 128 --top-k 2 --seq 64 \
    --batch 16 --data kjv --steps 400 --lr 3e-3 --aux-mi 0.01 --seed 1 --quiet \
    --out "$w/f32.gguf" > /dev/null
  model=$w/f32.gguf
fi
cp "$model" "$w/f32.gguf" 2>/dev/null || true
for t in f16 q8_0 q4_0; do
  $m quantize --in "$w/f32.gguf" --out "$w/$t.gguf" --type $t > /dev/null
done
for pick in used least-used; do
  $m quantize --in "$w/f32.gguf" --out "$w/mixed-$pick.gguf" --type mixed --budget-mb "$BUDGET" \
    --calib kjv --calib-slice 0:0.479 --hot-pick $pick | grep "mixed plan"
done
printf "%-18s %14s %12s %12s\n" file "tensor MiB" "val nats" "decode tok/s"
for f in f32 f16 q8_0 q4_0 mixed-used mixed-least-used; do
  bytes=$($m inspect "$w/$f.gguf" | sed -n 's/.*total tensor data: .*(\([0-9]*\) bytes).*/\1/p' | head -1)
  mib=$(python3 -c "print(f'{$bytes / 1048576:.2f}')")
  loss=$($m eval --model "$w/$f.gguf" --data kjv --seq 64 --batch 16 --batches 64 --seed 7 \
    | awk '/^validation/ {print $3}')
  tps=$(for r in 1 2 3; do $m run --model "$w/$f.gguf" --prompt "In the beginning" --tokens 256 \
    --temperature 0 --quiet 2>&1 >/dev/null | sed -E 's/.*decode 256 tokens: ([0-9.]+) tokens.*/\1/'; done \
    | sort -n | sed -n 2p)
  printf "%-18s %14s %12s %12s\n" "$f" "$mib" "$loss" "$tps"
done
