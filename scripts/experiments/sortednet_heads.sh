#!/usr/bin/env bash
# SortedNet nested attention heads on KJV bytes (issue #7, dense model): d 128, 4 blocks,
# 4 heads of width 32, FFN 512; nested head counts {1, 2, 4} at full depth and width.
# Arms: (1) sorted training (uniform:1: the full model + one drawn head count per
# micro-batch), (2) a plain model whose head sub-models are naive truncations (the first H
# heads of every block of a normally trained model). 400 steps of 16 x 64 bytes each.
# Prints validation loss (nats/byte, KJV held-out tail, 32 batches) per arm and size, and
# the decode speed of each head count of the sorted file (5 runs, 1 thread) and the bytes
# of weights each reads (`modula plan`).
# Usage: bash scripts/experiments/sortednet_heads.sh   (needs data/kjv.txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-400}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=${WORK:-$(mktemp -d)}
mkdir -p "$w"
base=(--data kjv --d 128 --heads 4 --layers 4 --ffn 512 --seq 64 --batch 16 --steps "$STEPS"
      --lr 3e-3 --seed 1 --eval-batches 8 --no-positions --quiet)
sizes="4x512x1 4x512x2 4x512x4"
ev() { $m eval --model "$1" --data kjv --seq 64 --batch 16 --batches 32 --seed 7 --size "$2" \
  | grep '^validation' | sed -E 's/.*loss ([0-9.]+)[ ,].*accuracy ([0-9.]+)%.*/\1 \2%/'; }
$m train "${base[@]}" --nested-heads 1,2 --sorted uniform:1 --out "$w/sorted.gguf" > /dev/null
$m train "${base[@]}" --out "$w/plain.gguf" > /dev/null
for s in $sizes; do
  echo "sorted $s $(ev "$w/sorted.gguf" "$s")"
  echo "plain $s $(ev "$w/plain.gguf" "$s")"
done
# decode speed: 5 rounds interleaved over the sizes (a change in load hits all alike)
for r in 1 2 3 4 5; do
  for s in $sizes; do
    echo "$s $($m run --model "$w/sorted.gguf" --size "$s" --prompt "In the beginning" --tokens 256 \
      --temperature 0 --threads 1 --quiet 2>&1 >/dev/null | sed -E 's/.*decode 256 tokens: ([0-9.]+) tokens.*/\1/')"
  done
done | sort | awk '{a[$1]=a[$1]" "$2} END {for (k in a) print "decode tokens/s", k, a[k]}'
$m plan --model "$w/sorted.gguf" --size all --context 256
echo "work dir: $w"
