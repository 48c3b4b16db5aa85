#!/usr/bin/env bash
# Peak resident memory of a process that runs only one nested sub-model from the mapped
# file (issue #7): a dense byte LM large enough for weights to dominate (d 512, 8 blocks,
# 8 heads, FFN 2048, nested depths {2,4,8} x FFN widths {512, 2048}; weights from 2 training
# steps — memory does not depend on their values), F32 and Q8_0 files. For each size:
# weights the sub-model reads (tensor prefixes), the engine arena, and the peak RSS of
# `modula run --size` generating 64 tokens (GNU time, KiB), against the same command's RSS
# on a 1-block model (process baseline: binary, libraries, allocator).
# Usage: bash scripts/experiments/sortednet_rss.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p edge-demo
m=./target/release/modula
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
printf 'x%.0s' $(seq 1 20000) > "$w/t.txt"
$m train --data "$w/t.txt" --d 512 --layers 8 --heads 8 --ffn 2048 --nested-depths 2,4 \
  --nested-ffn 512 --steps 2 --batch 2 --seq 32 --no-positions --eval-batches 1 --quiet \
  --out "$w/f32.gguf" > /dev/null
$m quantize --in "$w/f32.gguf" --out "$w/q8.gguf" --type q8_0 > /dev/null
$m train --data "$w/t.txt" --d 32 --layers 1 --heads 1 --ffn 32 --steps 1 --batch 1 --seq 8 \
  --no-positions --eval-batches 1 --quiet --out "$w/tiny.gguf" > /dev/null
rss() { /usr/bin/time -f %M "$m" run --model "$1" ${2:+--size $2} --prompt hello --tokens 64 \
  --context 128 --threads 1 --quiet ${3:-} 2>&1 >/dev/null | tail -1; }
echo "process baseline (1-block d-32 model): $(rss "$w/tiny.gguf") KiB"
printf "%-6s %-8s %12s %10s %14s %10s %18s %10s\n" file size "weights KiB" "arena KiB" "peak RSS KiB" "RSS/(w+a)" "no-readahead KiB" "RSS/(w+a)"
for f in f32 q8; do
  for s in 2x512 2x2048 4x512 4x2048 8x512 8x2048; do
    wa=$(python3 - "$w/$f.gguf" "$s" <<'PY'
import sys, subprocess, re
# weights a sub-model reads: per tensor its prefix (from `modula inspect`)
out = subprocess.run(["./target/release/modula", "inspect", sys.argv[1]], capture_output=True, text=True).stdout
dp, f = map(int, sys.argv[2].split("x"))
total = 0
for line in out.splitlines():
    m = re.match(r"\s+(\S+)\s+\S+\s+\[([0-9, ]+)\]\s+(\d+)\s", line)
    if not m: continue
    name, shape, b = m.group(1), [int(x) for x in m.group(2).split(",")], int(m.group(3))
    blk = re.match(r"blk\.(\d+)\.", name)
    if blk and int(blk.group(1)) >= dp: continue
    if blk and (name.endswith("ffn_up.weight") or name.endswith("ffn_down_t.weight") or name.endswith("ffn_up.bias")):
        b = b // 2048 * f
    total += b
arena = 4 * (2 * dp * 128 * 512 + 7 * 512 + f + 128 + 256)
print(total // 1024, arena // 1024)
PY
)
    set -- $wa
    r=$(rss "$w/$f.gguf" "$s")
    q=$(rss "$w/$f.gguf" "$s" --no-readahead)
    printf "%-6s %-8s %12s %10s %14s %10s %18s %10s\n" "$f" "$s" "$1" "$2" "$r" \
      "$(python3 -c "print(f'{$r/($1+$2):.2f}')")" "$q" "$(python3 -c "print(f'{$q/($1+$2):.2f}')")"
  done
done
