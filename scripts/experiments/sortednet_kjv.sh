#!/usr/bin/env bash
# SortedNet on KJV bytes (issue #7, dense model): d 128, 4 blocks, 4 heads, FFN 512, nested
# depths {2, 4} x FFN widths {128, 512} (4 sub-models); 400 steps of 16 x 64 bytes each run.
# Arms: (1) sorted training (SortedNet, uniform:1: the full model + one drawn sub-model per
# micro-batch), (2) MatFormer-style (one FFN width per step), (3) a plain model whose
# sub-models are naive truncations, (4) every size trained alone for 400 steps.
# Prints validation loss (nats/byte, KJV held-out tail) per arm and size, and per size:
# parameters (non-embedding), FLOPs per token and decode tokens/s (median of 3, 1 thread).
# Usage: bash scripts/experiments/sortednet_kjv.sh   (needs data/kjv.txt)
#        DATA=fashion-mnist bash scripts/experiments/sortednet_kjv.sh   (classifier on 7x7
#        patches, mean pooling, full attention; accuracy instead of loss; no decode timing)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-400}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=${WORK:-$(mktemp -d)}
mkdir -p "$w"
DATA=${DATA:-kjv}
pos=(--no-positions)   # text: no position table, so decoding can run past --seq
[ "$DATA" = kjv ] || pos=()
base=(--data "$DATA" --d 128 --heads 4 --seq 64 --batch 16 --steps "$STEPS" --lr 3e-3 --seed 1
      --eval-batches 8 "${pos[@]}" --quiet)
sizes="2x128 2x512 4x128 4x512"
ev() { $m eval --model "$1" --data "$DATA" --seq 64 --batch 16 --batches 32 --seed 7 ${2:+--size $2} \
  | grep '^validation' | sed -E 's/.*loss ([0-9.]+)[ ,].*accuracy ([0-9.]+)%.*/\1 \2%/'; }
for arm in "sorted uniform:1" "matformer matformer" "plain off"; do
  set -- $arm
  if [ "${SKIP_ARMS:-}" != 1 ]; then
    $m train "${base[@]}" --layers 4 --ffn 512 --nested-depths 2 --nested-ffn 128 --sorted "$2" \
      --out "$w/$1.gguf" > /dev/null
  fi
  for s in $sizes; do echo "$1 $s $(ev "$w/$1.gguf" "$s")"; done
done
for s in $sizes; do
  dp=${s%x*}; f=${s#*x}
  $m train "${base[@]}" --layers "$dp" --ffn "$f" --out "$w/alone$s.gguf" > /dev/null
  echo "alone $s $(ev "$w/alone$s.gguf")"
done
[ "$DATA" = kjv ] || { echo "work dir: $w"; exit 0; }
for s in $sizes; do
  dp=${s%x*}; f=${s#*x}
  tps=$(for r in 1 2 3; do $m run --model "$w/sorted.gguf" --size "$s" --prompt "In the beginning" \
    --tokens 256 --temperature 0 --threads 1 --quiet 2>&1 >/dev/null \
    | sed -E 's/.*decode 256 tokens: ([0-9.]+) tokens.*/\1/'; done | sort -n | sed -n 2p)
  # non-embedding parameters and multiply-adds per token (head included, attention over
  # the context excluded)
  python3 -c "d=128; dp=$dp; f=$f; p=dp*(4*d*d+4*d + 2*d*f+f+d + 4*d)+2*d; print(f'size $s params {p} flops_per_token {2*(dp*(4*d*d+2*d*f)+256*d)} decode_tps $tps')"
done
echo "work dir: $w"
