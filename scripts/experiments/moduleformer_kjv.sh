#!/usr/bin/env bash
# ModuleFormer experiments (issue #5) on KJV bytes. Model: d 128, 4 blocks, 8 attention and
# 8 FFN experts (FFN expert width 128), top-2, MLP routers, K = V = LN1(x); batches of
# 16 x 64 bytes. Prints one line per measurement ("name value ...") and a summary.
#   1. load balancing: MI-loss weight in {0, 0.01, 0.1} x SEEDS seeds on all of KJV:
#      validation bits/byte, final per-router H(e)/ln E (balance) and H(e|x)/ln E (sharpness);
#   2. forgetting: train on Genesis-Job ([0, 0.479)), then adapt to the New Testament
#      ([0.770, 1)) by (a) adding 4 experts per mixture (old ones frozen) and (b) fine-tuning
#      a dense baseline (same active width); loss on Genesis-Job's held-out tail before/after;
#   3. pruning: fine-tune the Genesis-Job model on Psalms-Malachi ([0.479, 0.770)) with the
#      load-concentration loss, then keep 4 of 8 experts per mixture: most used vs random.
# Usage: bash scripts/experiments/moduleformer_kjv.sh  (needs data/kjv.txt: scripts/get-data.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-2}
STEPS=${STEPS:-400}
ADAPT=${ADAPT:-200}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=${WORK:-$(mktemp -d)}
mkdir -p "$w"
mf=(--arch moduleformer --d 128 --layers 4 --experts 8 --ffn 128 --top-k 2 --seq 64 --batch 16
    --eval-batches 16 --quiet)
dense=(--d 128 --layers 4 --heads 2 --ffn 256 --seq 64 --batch 16 --eval-batches 16 --quiet)
ev() { # model slice -> validation loss (nats/byte)
  $m eval --model "$1" --data kjv --data-slice "$2" --seq 64 --batch 16 --batches 32 --seed 7 \
    | awk '/^validation/ {print $3}'
}
last_usage() { # metrics file -> "H(e)/lnE mean, min; H(e|x)/lnE mean"
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"usage_entropy"' in l]
u, c = rows[-1]["usage_entropy"], rows[-1]["routing_entropy"]
print(f"{sum(u)/len(u):.3f} {min(u):.3f} {sum(c)/len(c):.3f}")
PY
}
# 1. MI loss
for s in $(seq "$SEEDS"); do
  for mi in 0 0.01 0.1; do
    $m train "${mf[@]}" --data kjv --steps "$STEPS" --lr 3e-3 --aux-mi $mi --seed "$s" \
      --out "$w/mi$mi-s$s.gguf" > /dev/null
    echo "mi $mi seed $s val_nats $(ev "$w/mi$mi-s$s.gguf" 0:1) usage $(last_usage "$w/mi$mi-s$s.gguf.metrics.jsonl")"
  done
done
# 2. forgetting
$m train "${mf[@]}" --data kjv --data-slice 0:0.479 --steps "$STEPS" --lr 3e-3 --seed 1 \
  --out "$w/mfA.gguf" > /dev/null
$m train "${dense[@]}" --data kjv --data-slice 0:0.479 --steps "$STEPS" --lr 3e-3 --seed 1 \
  --out "$w/dA.gguf" > /dev/null
echo "forget mf_before A $(ev "$w/mfA.gguf" 0:0.479) B $(ev "$w/mfA.gguf" 0.770:1)"
echo "forget dense_before A $(ev "$w/dA.gguf" 0:0.479) B $(ev "$w/dA.gguf" 0.770:1)"
$m moduleformer extend --new-experts 4 --init "$w/mfA.gguf" --data kjv --data-slice 0.770:1 \
  --seq 64 --batch 16 --steps "$ADAPT" --lr 3e-3 --seed 1 --quiet --out "$w/mfAB.gguf" > /dev/null
$m train --init "$w/dA.gguf" --data kjv --data-slice 0.770:1 --seq 64 --batch 16 \
  --steps "$ADAPT" --lr 3e-3 --seed 1 --quiet --out "$w/dAB.gguf" > /dev/null
echo "forget mf_extended A $(ev "$w/mfAB.gguf" 0:0.479) B $(ev "$w/mfAB.gguf" 0.770:1)"
echo "forget dense_finetuned A $(ev "$w/dAB.gguf" 0:0.479) B $(ev "$w/dAB.gguf" 0.770:1)"
# 3. pruning
$m train --arch moduleformer --init "$w/mfA.gguf" --data kjv --data-slice 0.479:0.770 \
  --seq 64 --batch 16 --steps "$ADAPT" --lr 1e-3 --aux-mi 0 --aux-lc 0.01 --seed 1 --quiet \
  --out "$w/mfP.gguf" > /dev/null
echo "prune full $(ev "$w/mfP.gguf" 0.479:0.770)"
$m moduleformer prune --in "$w/mfP.gguf" --out "$w/used.gguf" --data kjv \
  --data-slice 0.479:0.770 --seq 64 --keep-att 4 --keep-ffn 4 > "$w/prune-used.txt"
echo "prune most_used $(ev "$w/used.gguf" 0.479:0.770)"
for r in 1 2 3; do
  $m moduleformer prune --in "$w/mfP.gguf" --out "$w/rand$r.gguf" --data kjv \
    --data-slice 0.479:0.770 --seq 64 --keep-att 4 --keep-ffn 4 --random $r > /dev/null
  echo "prune random$r $(ev "$w/rand$r.gguf" 0.479:0.770)"
done
# 2b. forgetting under a real domain shift: adapt the Genesis-Job models to Python source
# (data/python.txt from scripts/get-data.sh), same steps; loss on Genesis-Job and on Python
if [ -f data/python.txt ]; then
  $m moduleformer extend --new-experts 4 --init "$w/mfA.gguf" --data data/python.txt \
    --seq 64 --batch 16 --steps "$ADAPT" --lr 3e-3 --seed 1 --quiet --out "$w/mfAP.gguf" > /dev/null
  $m train --init "$w/dA.gguf" --data data/python.txt --seq 64 --batch 16 --steps "$ADAPT" \
    --lr 3e-3 --seed 1 --quiet --out "$w/dAP.gguf" > /dev/null
  evp() { $m eval --model "$1" --data data/python.txt --seq 64 --batch 16 --batches 32 --seed 7 \
    | awk '/^validation/ {print $3}'; }
  echo "shift mf_before A $(ev "$w/mfA.gguf" 0:0.479) P $(evp "$w/mfA.gguf")"
  echo "shift dense_before A $(ev "$w/dA.gguf" 0:0.479) P $(evp "$w/dA.gguf")"
  echo "shift mf_extended A $(ev "$w/mfAP.gguf" 0:0.479) P $(evp "$w/mfAP.gguf")"
  echo "shift dense_finetuned A $(ev "$w/dAP.gguf" 0:0.479) P $(evp "$w/dAP.gguf")"
fi
echo "work dir: $w"
