#!/usr/bin/env bash
# SortedNet beyond the dense model (issue #7): ModuleFormer nested expert counts and SeqBoat
# nested depths on KJV bytes, each with three arms — (1) sorted training (uniform:1: the
# full model + one drawn sub-model per micro-batch), (2) a plain model whose sub-models are
# naive truncations, (3) every sub-model size trained alone for the same steps.
#   ModuleFormer: d 128, 4 blocks, 8 attention + 8 FFN experts (FFN experts 128 wide), top-2;
#                 nested counts {2, 4, 8} (the first N experts of every mixture).
#   SeqBoat:      d 128, 3 layers, window 16; nested depths {1, 2, 3}.
# 300 steps of 16 x 64 bytes, lr 3e-3, seed 1; validation loss (nats/byte) and accuracy on
# KJV's held-out tail (32 batches, same windows for all).
# Usage: WORK=/tmp/snarch bash scripts/experiments/sortednet_archs.sh   (needs data/kjv.txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-300}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=${WORK:-$(mktemp -d)}
mkdir -p "$w"
common=(--data kjv --d 128 --seq 64 --batch 16 --steps "$STEPS" --lr 3e-3 --seed 1
        --eval-batches 8 --quiet)
mf=(--arch moduleformer --layers 4 --ffn 128 --top-k 2)
sb=(--arch seqboat --window 16)
ev() { $m eval --model "$1" --data kjv --seq 64 --batch 16 --batches 32 --seed 7 ${2:+--size $2} \
  | grep -E '^(validation|depth|act-bias)' | sed -E 's/.*loss ([0-9.]+)[ ,].*accuracy ([0-9.]+)%.*/\1 \2%/'; }
t0=$(date +%s)
$m train "${common[@]}" "${mf[@]}" --experts 8 --nested-experts 2,4 --sorted uniform:1 --out "$w/mf-sorted.gguf" >/dev/null
echo "mf sorted trained in $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
$m train "${common[@]}" "${mf[@]}" --experts 8 --out "$w/mf-plain.gguf" >/dev/null
echo "mf plain trained in $(( $(date +%s) - t0 )) s"
for n in 2 4 8; do
  echo "mf sorted $n $(ev "$w/mf-sorted.gguf" "$n")"
  echo "mf plain $n $(ev "$w/mf-plain.gguf" "$n")"
done
for n in 2 4; do
  $m train "${common[@]}" "${mf[@]}" --experts "$n" --out "$w/mf-alone$n.gguf" >/dev/null
  echo "mf alone $n $(ev "$w/mf-alone$n.gguf")"
done
t0=$(date +%s)
$m train "${common[@]}" "${sb[@]}" --layers 3 --nested-depths 1,2 --sorted uniform:1 --out "$w/sb-sorted.gguf" >/dev/null
echo "sb sorted trained in $(( $(date +%s) - t0 )) s"
$m train "${common[@]}" "${sb[@]}" --layers 3 --out "$w/sb-plain.gguf" >/dev/null
for n in 1 2 3; do
  echo "sb sorted $n $(ev "$w/sb-sorted.gguf" "$n")"
  echo "sb plain $n $(ev "$w/sb-plain.gguf" "$n")"
done
for n in 1 2; do
  $m train "${common[@]}" "${sb[@]}" --layers "$n" --out "$w/sb-alone$n.gguf" >/dev/null
  echo "sb alone $n $(ev "$w/sb-alone$n.gguf")"
done
echo "work dir: $w"
