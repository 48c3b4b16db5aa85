#!/usr/bin/env bash
# Decode and 512-token prefill of the same dense file with two `modula` builds, interleaved
# (old, new, old, new, ...), and a training step of each: the before/after figures of
# docs/results.md. Usage:
#   bash scripts/experiments/before_after.sh OLD_BIN NEW_BIN MODEL.gguf [ROUNDS] [THREADS]
set -euo pipefail
old=$1 new=$2 model=$3 rounds=${4:-3} threads=${5:-1}
for r in $(seq "$rounds"); do
  for tag in old new; do
    bin=$old; [ $tag = new ] && bin=$new
    "$bin" bench --model "$model" --types file,q8_0,q4_0 --prompt 512 --tokens 32 \
      --rounds 3 --context 1024 --threads "$threads" 2>/dev/null |
      awk -v t=$tag -v r=$r 'NR>1 {print t, r, $1, $3, $4, $5}'
  done
done
# training: 20 steps of the same run, wall time of each build (interleaved)
for r in $(seq "$rounds"); do
  for tag in old new; do
    bin=$old; [ $tag = new ] && bin=$new
    s=$(date +%s.%N)
    "$bin" train --data tales --seq 64 --steps 20 --batch 8 --d 128 --layers 2 --heads 4 \
      --ffn 512 --quiet --threads "$threads" --eval-batches 1 --out /tmp/ba-train-$tag.gguf >/dev/null 2>&1
    e=$(date +%s.%N)
    echo "train $tag $r $(echo "$e - $s" | bc)"
  done
done
rm -f /tmp/ba-train-*
