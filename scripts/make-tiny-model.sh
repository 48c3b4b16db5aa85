#!/usr/bin/env bash
# Rebuild bare-metal/src/tiny-q8.gguf, the model the bare-metal example embeds: a byte LM
# (d 32, 2 blocks, 2 heads, FFN 64; nested depths {1, 2} x FFN {32, 64}) trained on the
# built-in text for 1,500 steps, quantised to Q8_0 (40.5 KiB). Deterministic (seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cargo run -q --release -p edge-demo -- train --data tales --seq 32 --d 32 --layers 2 \
  --heads 2 --ffn 64 --nested-depths 1 --nested-ffn 32 --steps 1500 --batch 16 --quiet \
  --eval-every 1500 --eval-batches 4 --out "$out/tiny.gguf"
cargo run -q --release -p edge-demo -- quantize --in "$out/tiny.gguf" \
  --out bare-metal/src/tiny-q8.gguf --type q8_0
rm -rf "$out"
