#!/usr/bin/env bash
# Steady-state decode of the three memory-bound model kinds at F32, F16, Q8_0 and Q4_0:
# `modula bench` (every precision quantised in-process from the f32 file, rounds
# interleaved over the precisions, each figure the median decode step) at 1 and 2
# threads, INVOCATIONS times. Models (built if missing, 2 training steps: speed only):
#   /tmp/big.gguf  dense d 1024, 4 blocks, FFN 4096 (195 MB f32)
#   /tmp/mf.gguf   ModuleFormer d 1024, 4 blocks, 16 experts of 1024, top-2 (1.08 GB f32)
#   /tmp/sb.gguf   SeqBoat d 1024, 4 blocks (128 MB f32)
# Usage: bash scripts/experiments/bench_kinds.sh [INVOCATIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
m=${MODULA:-./target/release/modula}
inv=${1:-2}; rounds=${2:-15}
common=(--data kjv --seq 64 --steps 2 --batch 1 --d 1024 --layers 4 --quiet)
[ -f /tmp/big.gguf ] || $m train "${common[@]}" --heads 8 --ffn 4096 --out /tmp/big.gguf >/dev/null
[ -f /tmp/mf.gguf ] || $m train "${common[@]}" --arch moduleformer --experts 16 --ffn 1024 --top-k 2 --out /tmp/mf.gguf >/dev/null
[ -f /tmp/sb.gguf ] || $m train "${common[@]}" --arch seqboat --out /tmp/sb.gguf >/dev/null
for i in $(seq "$inv"); do
  for model in big mf sb; do
    for t in 1 2; do
      # the dense model's position table holds 64 positions: 16 prompt + 48 decoded
      echo "$model ${t}t run $i: $($m bench --model /tmp/$model.gguf --types file,f16,q8_0,q4_0 \
        --rounds "$rounds" --prompt 16 --tokens 48 --threads "$t" 2>&1 \
        | awk '/^(file|f16|q8_0|q4_0) / {printf "%s %s tok/s %s | ", $1, $(NF-1), $NF}')"
    done
  done
done
