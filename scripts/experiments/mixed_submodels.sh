#!/usr/bin/env bash
# Mixed precision by sub-model usage (issue #9): a nested (SortedNet) dense, SeqBoat or
# ModuleFormer (nested experts; usage = routed traffic on KJV's first 47.9 %, Genesis–Job,
# measured at every expert count) model quantised
# to Q8_0, Q4_0 and three mixed plans under one budget — halfway between all blocks at
# Q4_0 and all at Q8_0 (embedding and head at BASE, default q4_0, so that only the
# blocks' precision differs between the mixed files):
#   used     --sizes all (every declared size equally often), most read blocks first
#   control  the same mix, least read first (--hot-pick least-used)
#   small    --sizes <smallest size> (a device that runs only the smallest sub-model)
# then evaluates every file at every declared size (`modula eval --size all`, KJV's
# held-out tail, 64 batches of 16 x 128 bytes, the same windows for all) and prints the
# validation loss per file and size.
# Usage: MODEL=nested.gguf bash scripts/experiments/mixed_submodels.sh
#   (e.g. modula train --data kjv --d 256 --heads 4 --layers 4 --ffn 1024 --nested-depths 1,2
#    --nested-ffn 256 --sorted uniform:1 --seq 64 --batch 16 --steps 400 --lr 3e-3 --seed 1
#    --no-positions --out nested.gguf)
set -euo pipefail
cd "$(dirname "$0")/../.."
m=${MODULA:-./target/release/modula}
model=${MODEL:?set MODEL to a nested dense, SeqBoat or ModuleFormer .gguf}
w=${WORK:-$(mktemp -d)}
base=${BASE:-q4_0}
mkdir -p "$w"
for t in q8_0 q4_0; do
  $m quantize --in "$model" --out "$w/$t.gguf" --type "$t" > "$w/$t.log"
done
# ModuleFormer: calibration text for the routed traffic (disjoint from the eval windows)
calib=()
if [ "$($m inspect "$model" | grep -c '"moduleformer"')" -gt 0 ]; then
  calib=(--calib kjv --calib-slice 0:0.479)
fi
# all blocks cold: the planner's refusal of a too-small budget names it in bytes
cold=$( { $m quantize --type mixed "${calib[@]}" --base "$base" --budget-mb 0.0001 --in "$model" --out "$w/x.gguf" 2>&1 || true; } \
  | sed -nE 's/.*MiB \(([0-9]+) bytes\).*/\1/p')
q8=$(sed -nE 's/^tensor data .* -> ([0-9.]+) MiB .*/\1/p' "$w/q8_0.log")
# all blocks hot: the all-cold size plus what the q8_0 file's blocks add over q4_0
q4=$(sed -nE 's/^tensor data .* -> ([0-9.]+) MiB .*/\1/p' "$w/q4_0.log")
budget=$(python3 -c "print(f'{$cold / 1048576 + ($q8 - $q4) / 2:.4f}')")
# "SIZE LOSS" per declared size: dense `validation depth D x FFN F x H heads: loss L`,
# SeqBoat `depth D, act-bias 0: loss L`, ModuleFormer `validation A attention x F FFN
# experts: loss L`
per_size() {
  $m eval --model "$1" --data kjv --seq "$2" --batch 16 --batches "$3" --size all \
    | sed -nE -e 's/^validation depth ([0-9]+) x FFN ([0-9]+) x ([0-9]+) heads: loss ([0-9.]+).*/\1x\2x\3 \4/p' \
              -e 's/^depth ([0-9]+), act-bias [-0-9.]+: loss ([0-9.]+).*/\1 \2/p' \
              -e 's/^validation ([0-9]+) attention x ([0-9]+) FFN experts: loss ([0-9.]+).*/\1x\2 \3/p'
}
smallest=$(per_size "$model" 16 1 | head -1 | cut -d' ' -f1)
echo "budget $budget MiB (all blocks at q4_0: $(python3 -c "print(f'{$cold / 1048576:.4f}')") MiB, whole file q8_0: $q8 MiB, q4_0: $q4 MiB); smallest size $smallest"
$m quantize --type mixed "${calib[@]}" --base "$base" --budget-mb "$budget" --in "$model" --out "$w/used.gguf" | grep -E '^(usage|mixed plan|hot units)'
$m quantize --type mixed "${calib[@]}" --base "$base" --budget-mb "$budget" --hot-pick least-used --in "$model" --out "$w/control.gguf" | grep -E '^(mixed plan|hot units)'
$m quantize --type mixed "${calib[@]}" --base "$base" --budget-mb "$budget" --sizes "$smallest" --in "$model" --out "$w/small.gguf" | grep -E '^(usage|mixed plan|hot units)'
for f in f32 q8_0 q4_0 used control small; do
  file="$w/$f.gguf"; [ "$f" = f32 ] && file=$model
  printf '%-8s %9s  ' "$f" "$(du -b "$file" | cut -f1)"
  per_size "$file" 128 64 | tr '\n' ' '
  echo
done
