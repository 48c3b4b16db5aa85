#!/usr/bin/env bash
# ModuleFormer throughput: Modula vs PyTorch eager (benches/peers/torch_moe.py) on CPU, same
# machine, same run, same model: d 256, 4 blocks, 8 attention experts (K = V = LN1(x), one
# head of width 256) and 8 FFN experts of hidden 256, top-2, MLP routers of width 64, MI loss
# 0.01; training on batches of 16 x 128 bytes of KJV (AdamW, clipping), decoding 128 tokens
# after a 16-token prompt (batch 1, KV cache, greedy). Thread counts 1 and 2; ROUNDS runs
# each, interleaved; the table shows medians (training: median step time per run).
#
# Also Modula's dense baseline at equal *active* parameters per token (d 256, 4 heads, FFN
# 512: the training issue's reference model) and at equal *total* parameters (FFN 3584),
# trained and decoded the same way (ModuleFormer's efficiency claim is about these).
#
# Usage: bash benches/peers/moe_compare.sh   (needs data/kjv.txt: scripts/get-data.sh)
# Uses TORCH_PY (a python with torch) or creates target/torch-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
WARMUP=3
data=data/kjv.txt
[ -f "$data" ] || { echo "missing $data: run scripts/get-data.sh" >&2; exit 1; }
py=${TORCH_PY:-target/torch-venv/bin/python}
if ! "$py" -c "import torch" 2>/dev/null; then
  python3 -m venv target/torch-venv
  target/torch-venv/bin/pip install -q torch safetensors numpy
  py=target/torch-venv/bin/python
fi
cargo build --release -q -p edge-demo
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
m=./target/release/modula
model=(--arch moduleformer --d 256 --layers 4 --experts 8 --ffn 256 --top-k 2 --router-hidden 64
       --aux-mi 0.01 --batch 16 --seq 128)
prompt="In the beginning"

modula_train() { # threads -> pos/s (median step)
  $m train --data "$data" "${model[@]}" --steps $((STEPS + WARMUP)) --eval-every 100000 \
    --eval-batches 1 --threads "$1" --quiet --out "$out/t.gguf" > /dev/null
  python3 - "$out/t.gguf.metrics.jsonl" "$WARMUP" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
e = [r["elapsed_s"] for r in rows]
d = sorted(b - a for a, b in zip(e[int(sys.argv[2]) - 1:], e[int(sys.argv[2]):]))
print(f"{16 * 128 / d[len(d) // 2]:.0f}")
PY
}
dense_train() { # ffn threads -> pos/s
  $m train --data "$data" --d 256 --layers 4 --heads 4 --ffn "$1" --batch 16 --seq 128 \
    --steps $((STEPS + WARMUP)) --eval-every 100000 --eval-batches 1 --threads "$2" --quiet \
    --out "$out/d.gguf" > /dev/null
  python3 - "$out/d.gguf.metrics.jsonl" "$WARMUP" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
e = [r["elapsed_s"] for r in rows]
d = sorted(b - a for a, b in zip(e[int(sys.argv[2]) - 1:], e[int(sys.argv[2]):]))
print(f"{16 * 128 / d[len(d) // 2]:.0f}")
PY
}
modula_decode() { # threads [model] -> tokens/s
  $m run --model "${2:-$out/dec.gguf}" --prompt "$prompt" --tokens 128 --temperature 0 --threads "$1" \
    --quiet 2>&1 >/dev/null | sed -E 's/.*decode 128 tokens: ([0-9.]+) tokens.*/\1/'
}
torch_py() { # mode threads -> value
  OMP_WAIT_POLICY=PASSIVE "$py" benches/peers/torch_moe.py "$1" --threads "$2" --steps "$STEPS" \
    --warmup "$WARMUP" --data "$data" --tokens 128 --prompt 16 \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.1f" % r.get("positions_per_s", r.get("tokens_per_s")))'
}
# a model file for decoding (weights do not change the cost: no early stop by default)
$m train --data "$data" "${model[@]}" --steps 1 --eval-batches 1 --quiet --out "$out/dec.gguf" > /dev/null
for f in 512 3584; do
  $m train --data "$data" --d 256 --layers 4 --heads 4 --ffn $f --batch 16 --seq 128 --steps 1 \
    --eval-batches 1 --quiet --no-positions --out "$out/dense$f.gguf" > /dev/null
done

declare -A res
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    res[mtrain_$t]+="$(modula_train "$t") "
    res[ttrain_$t]+="$(torch_py train "$t") "
    res[mdec_$t]+="$(modula_decode "$t") "
    res[tdec_$t]+="$(torch_py decode "$t") "
    for f in 512 3584; do
      res[dtrain${f}_$t]+="$(dense_train $f "$t") "
      res[ddec${f}_$t]+="$(modula_decode "$t" "$out/dense$f.gguf") "
    done
  done
  echo "round $r done" >&2
done
"$py" -c 'import torch; print("torch", torch.__version__, "| modula", end=" ")'
git rev-parse --short HEAD
med() { python3 -c 'import sys; v=sorted(map(float, sys.argv[1:])); print(f"{v[len(v)//2]:.1f}")' $1; }
printf "%-28s %8s %12s %12s %8s\n" measure threads modula pytorch ratio
for t in 1 2; do
  for k in train dec; do
    a=$(med "${res[m${k}_$t]}"); b=$(med "${res[t${k}_$t]}")
    name="training positions/s"; [ $k = dec ] && name="decode tokens/s"
    printf "%-28s %8s %12s %12s %8s   (modula %s| torch %s)\n" "$name" "$t" "$a" "$b" \
      "$(python3 -c "print(f'{$a/$b:.2f}x')")" "${res[m${k}_$t]}" "${res[t${k}_$t]}"
  done
done
printf "\n%-44s %8s %12s %12s\n" "modula: moduleformer vs dense" threads "train pos/s" "decode tok/s"
for t in 1 2; do
  printf "%-44s %8s %12s %12s\n" "moduleformer (E 8, top-2)" "$t" "$(med "${res[mtrain_$t]}")" "$(med "${res[mdec_$t]}")"
  printf "%-44s %8s %12s %12s\n" "dense, equal active params (FFN 512)" "$t" "$(med "${res[dtrain512_$t]}")" "$(med "${res[ddec512_$t]}")"
  printf "%-44s %8s %12s %12s\n" "dense, equal total params (FFN 3584)" "$t" "$(med "${res[dtrain3584_$t]}")" "$(med "${res[ddec3584_$t]}")"
done
