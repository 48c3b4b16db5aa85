#!/usr/bin/env bash
# m2mKD study on a byte LM (issue #11): trained on KJV Genesis-Job (the first 47.9% of
# data/kjv.txt; its last 10% is the test split), out-of-distribution test = the New
# Testament (the last 21% of the file: same style, other names and vocabulary). Causal,
# 64 bytes per sequence, next-byte accuracy; KL per position (per logit = /(positions*256)).
# Shapes as the Fashion-MNIST study: meta 4 x 1 x 48, teacher 4 x 2 x 48, student
# 4 x 1 MoE block x 24 (4 experts, top-2).
# Usage: scripts/experiments/m2mkd_kjv.sh [OUTDIR]
#   env: SEEDS (1-3), VARIANTS, THREADS (2), EXTRA
set -euo pipefail
OUT=${1:-target/experiments/m2mkd_kjv}
SEEDS=${SEEDS:-1-3}
VARIANTS=${VARIANTS:-scratch,scratch2x,logitkd,incubation,m2mkd,m2mkd-row}
THREADS=${THREADS:-2}
BIN=${BIN:-target/release/modula}
KJV=${KJV:-data/kjv.txt}
[ -x "$BIN" ] || cargo build --release --bin modula
mkdir -p "$OUT"
size=$(stat -c %s "$KJV")
head -c $((size * 479 / 1000)) "$KJV" > "$OUT/ot.txt"
tail -c $((size * 21 / 100)) "$KJV" > "$OUT/nt.txt"
# shellcheck disable=SC2086
"$BIN" m2mkd run --dir "$OUT" --data "$OUT/ot.txt" --ood "$OUT/nt.txt" --seq 64 \
  --batch 16 --eval-batches 100 --threads "$THREADS" --seeds "$SEEDS" --variants "$VARIANTS" \
  ${EXTRA:-} 2>&1 | tee -a "$OUT/log.txt" | grep -v ': step '
