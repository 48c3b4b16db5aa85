#!/usr/bin/env bash
# Decode throughput of `modula run` per weight type: quantise MODEL to f16, q8_0 and q4_0,
# then run greedy decoding of TOKENS tokens ROUNDS times per type and thread count
# (interleaved) and print the median tokens/s.
# Usage: bash scripts/experiments/decode_bench.sh MODEL.gguf [TOKENS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1; tokens=${2:-128}; rounds=${3:-3}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cp "$model" "$w/f32.gguf"
for t in f16 q8_0 q4_0; do
  $m quantize --in "$model" --out "$w/$t.gguf" --type "$t" > /dev/null
done
declare -A res
for r in $(seq "$rounds"); do
  for th in 1 2; do
    for t in f32 f16 q8_0 q4_0; do
      line=$($m run --model "$w/$t.gguf" --prompt "And God said" --tokens "$tokens" \
        --temperature 0 --threads "$th" --quiet 2>&1) || { echo "$line" >&2; exit 1; }
      tps=$(echo "$line" | sed -n 's/.*decode [0-9]* tokens: \([0-9.]*\) tokens\/s.*/\1/p')
      res[$t-$th]+="$tps "
    done
  done
done
printf "%-6s %8s %14s %14s\n" type bytes "1 thread" "2 threads"
for t in f32 f16 q8_0 q4_0; do
  med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  printf "%-6s %8s %14s %14s\n" "$t" "$(du -h "$w/$t.gguf" | cut -f1)" \
    "$(echo "${res[$t-1]}" | med)" "$(echo "${res[$t-2]}" | med)"
done
