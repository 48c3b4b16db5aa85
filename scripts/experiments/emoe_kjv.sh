#!/usr/bin/env bash
# EMoE experiment (issue #8) on KJV bytes, SEEDS seeds (default 5):
#   pre-train a dense byte LM on Genesis–Job (bytes [0, 0.479) of data/kjv.txt),
#   convert its last FFN to EMoE (16 experts, top-TOPK, default 4: a quarter of that FFN),
#   fine-tune on Psalms–Malachi ([0.479, 0.770)) twice: densely (mask off) and with the
#   EMoE mask, then evaluate four arms on the fine-tuning text's held-out tail (in-domain)
#   and on the New Testament's tail ([0.770, 1.0), out-of-domain):
#     dense FT (dense test) | test-time mask only (dense FT, masked test)
#     EMoE FT (masked test) | EMoE merged back (EMoE FT, dense test)
# Usage: bash scripts/experiments/emoe_kjv.sh   (needs data/kjv.txt: scripts/get-data.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-5}
PRE_STEPS=${PRE_STEPS:-400}
FT_STEPS=${FT_STEPS:-150}
TOPK=${TOPK:-4}
cargo build --release -q -p edge-demo
m=./target/release/modula
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
model=(--d 128 --layers 2 --heads 4 --ffn 512 --seq 64 --batch 16 --quiet)
ev() { # model mask slice -> loss
  $m eval --model "$1" --emoe-mask "$2" --data kjv --data-slice "$3" --seq 64 --batch 16 \
    --batches 64 --seed 7 | awk '/^validation/ {print $3}'
}
out=$w/results.txt
for s in $(seq "$SEEDS"); do
  $m train --data kjv --data-slice 0:0.479 "${model[@]}" --steps "$PRE_STEPS" --lr 3e-3 \
    --seed "$s" --out "$w/pre$s.gguf" > /dev/null
  $m emoe convert --in "$w/pre$s.gguf" --out "$w/emoe$s.gguf" --experts 16 --top-k "$TOPK" \
    --seed "$s" > /dev/null
  for mode in off on; do
    $m train --init "$w/emoe$s.gguf" --emoe-mask $mode --data kjv --data-slice 0.479:0.770 \
      --batch 16 --seq 64 --steps "$FT_STEPS" --lr 1e-3 --seed "$s" --quiet \
      --out "$w/ft-$mode$s.gguf" > /dev/null
  done
  for dom in "id 0.479:0.770" "ood 0.770:1"; do
    set -- $dom
    echo "$s $1 dense $(ev "$w/ft-off$s.gguf" off "$2")" >> "$out"
    echo "$s $1 test_mask $(ev "$w/ft-off$s.gguf" on "$2")" >> "$out"
    echo "$s $1 emoe $(ev "$w/ft-on$s.gguf" on "$2")" >> "$out"
    echo "$s $1 merged $(ev "$w/ft-on$s.gguf" off "$2")" >> "$out"
  done
  echo "seed $s done" >&2
done
python3 - "$out" <<'PY'
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
v = collections.defaultdict(list)
for seed, dom, arm, loss in rows:
    v[(dom, arm)].append(float(loss))
arms = ["dense", "test_mask", "emoe", "merged"]
names = {"dense": "dense FT", "test_mask": "dense FT + test-time mask", "emoe": "EMoE FT (masked)", "merged": "EMoE FT merged back (dense)"}
print(f"validation loss, nats/byte, mean ± std over {len(v[('id', 'dense')])} seeds")
print("| arm | in-domain (Psalms–Malachi) | out-of-domain (New Testament) |")
print("|---|---|---|")
for a in arms:
    cell = lambda d: f"{statistics.mean(v[(d, a)]):.4f} ± {statistics.stdev(v[(d, a)]) if len(v[(d, a)]) > 1 else 0:.4f}"
    print(f"| {names[a]} | {cell('id')} | {cell('ood')} |")
# paired differences against dense FT
for a in arms[1:]:
    for d in ("id", "ood"):
        diffs = [x - y for x, y in zip(v[(d, a)], v[(d, "dense")])]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0
        print(f"paired {names[a]} - dense FT ({d}): {statistics.mean(diffs):+.4f} ± {sd:.4f}")
PY
