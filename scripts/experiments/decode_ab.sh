#!/usr/bin/env bash
# Decode tokens/s of two `modula` binaries (e.g. before and after a change) on the same
# model at F32, F16, Q8_0 and Q4_0, 1 and 2 threads, interleaved round by round; prints
# the median and every run.
# Usage: bash scripts/experiments/decode_ab.sh OLD_BIN NEW_BIN MODEL.gguf [TOKENS] [ROUNDS]
# (build the old binary from a worktree, e.g. `git worktree add /tmp/base REV && cd
# /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p edge-demo`)
set -euo pipefail
old=$1; new=$2; model=$3; tokens=${4:-52}; rounds=${5:-11}
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cp "$model" "$w/f32.gguf"
for t in f16 q8_0 q4_0; do
  "$new" quantize --in "$model" --out "$w/$t.gguf" --type "$t" > /dev/null
done
declare -A res
for _ in $(seq "$rounds"); do
  for bin in old new; do
    m=$old; [ "$bin" = new ] && m=$new
    for th in 1 2; do
      for t in f32 f16 q8_0 q4_0; do
        line=$("$m" run --model "$w/$t.gguf" --prompt "And God said" --tokens "$tokens" \
          --temperature 0 --threads "$th" --quiet 2>&1) || { echo "$line" >&2; exit 1; }
        res[$bin-$t-$th]+="$(echo "$line" | sed -n 's/.*decode [0-9]* tokens: \([0-9.]*\) tokens\/s.*/\1/p') "
      done
    done
  done
done
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for bin in old new; do
  for t in f32 f16 q8_0 q4_0; do
    echo "$bin $t 1 thread: $(echo "${res[$bin-$t-1]}" | med) [${res[$bin-$t-1]}]"
    echo "$bin $t 2 threads: $(echo "${res[$bin-$t-2]}" | med) [${res[$bin-$t-2]}]"
  done
done
