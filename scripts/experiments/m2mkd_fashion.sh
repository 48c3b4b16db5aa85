#!/usr/bin/env bash
# m2mKD study on Fashion-MNIST (issue #11; spec section 5's protocol at this data set):
# 7x7 patches (16 tokens), first TRAIN training images, the whole test set (10,000) and
# its shifted copy (rotation, rescale, contrast, noise: the out-of-distribution set).
# Meta 4 x 1 block x 48, dense teacher 4 x 2 blocks x 48 (Deep Incubation: PT -> MT -> FT),
# V-MoE-style student 4 x 1 MoE block x 24 (4 experts, top-2, expert FFN 48), stitches
# LN+Linear 48<->24 in the hybrids, dropped at assembly. Every variant of a seed starts from
# the same student initialisation; the table pairs them by seed.
# Usage: scripts/experiments/m2mkd_fashion.sh [OUTDIR]
#   env: SEEDS (1-6), VARIANTS (all), TRAIN (10000), THREADS (2), plus any extra flags in
#   EXTRA (e.g. EXTRA="--alpha 0.9 --kl-norm row")
set -euo pipefail
OUT=${1:-target/experiments/m2mkd_fashion}
SEEDS=${SEEDS:-1-6}
VARIANTS=${VARIANTS:-scratch,scratch2x,logitkd,incubation,m2mkd,m2mkd-row,m2mkd-mse}
TRAIN=${TRAIN:-10000}
THREADS=${THREADS:-2}
BIN=${BIN:-target/release/modula}
[ -x "$BIN" ] || cargo build --release --bin modula
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$BIN" m2mkd run --dir "$OUT" --data fashion-mnist --patch 7 --train-images "$TRAIN" \
  --eval-batches 200 --batch 50 --threads "$THREADS" --seeds "$SEEDS" --variants "$VARIANTS" \
  ${EXTRA:-} 2>&1 | tee -a "$OUT/log.txt" | grep -v ': step '
