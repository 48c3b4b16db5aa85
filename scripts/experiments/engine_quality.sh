#!/usr/bin/env bash
# Validation loss of a model at F32, Q8_0 and Q4_0, three ways: the training forward pass
# (`modula eval`, quantised weights dequantised to f32), the decode engine (`--engine`:
# the quantised kernels a device runs, Q8_0 activations, integer tiles) and the engine
# with f32 activations (`--engine --f32-activations`).
# Usage: bash scripts/experiments/engine_quality.sh MODEL.gguf [DATA] [SEQ] [BATCHES]
# (MODULA: the binary, default target/release/modula; SeqBoat: the act-bias 0 line)
set -euo pipefail
model=$1; data=${2:-kjv}; seq=${3:-128}; batches=${4:-64}
bin=${MODULA:-target/release/modula}
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cp "$model" "$w/f32.gguf"
for t in q8_0 q4_0; do
  "$bin" quantize --in "$model" --out "$w/$t.gguf" --type "$t" > /dev/null
done
loss() { sed -n 's/^\(validation\|act-bias 0:\) loss \([0-9.]*\) nats.*accuracy \([0-9.]*%\).*/\2 (\3)/p'; }
echo "| type | eval (f32 forward) | --engine | --engine --f32-activations |"
echo "|---|---|---|---|"
for t in f32 q8_0 q4_0; do
  args=(eval --model "$w/$t.gguf" --data "$data" --seq "$seq" --batch 16 --batches "$batches")
  a=$("$bin" "${args[@]}" | loss)
  b=$("$bin" "${args[@]}" --engine | loss)
  c=$("$bin" "${args[@]}" --engine --f32-activations | loss)
  echo "| $t | $a | $b | $c |"
done
