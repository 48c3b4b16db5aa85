#!/usr/bin/env bash
# Training throughput and peak memory: Modula's dense baseline vs PyTorch eager on CPU, same
# machine, same run, same model (d 256, 4 layers, 4 heads, FFN 512, batch 16 x 128 bytes of
# KJV, AdamW, clipping), thread counts 1 and 2, PyTorch also with OMP_WAIT_POLICY=PASSIVE.
# Each configuration runs ROUNDS times, interleaved; per run the median step time over the
# timed steps (after warm-up); the table shows the median over rounds.
#
# Usage: bash benches/peers/train_compare.sh   (needs data/kjv.txt: scripts/get-data.sh)
# Creates target/torch-venv with torch (the PyPI wheel is the CUDA build, ~5 GB; it runs
# on CPU) unless TORCH_PY points at a python that has torch.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-12}
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
model=(--d 256 --layers 4 --heads 4 --ffn 512 --batch 16 --seq 128)

modula_run() { # threads -> "pos/s rss_mib"
  local t=$1
  /usr/bin/time -f "%M" -o "$out/rss" ./target/release/modula train --data "$data" "${model[@]}" \
    --steps $((STEPS + WARMUP)) --eval-every 100000 --eval-batches 1 --threads "$t" --quiet \
    --out "$out/m.gguf" > /dev/null
  python3 - "$out/m.gguf.metrics.jsonl" "$WARMUP" "$(cat "$out/rss")" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
e = [r["elapsed_s"] for r in rows]
d = sorted(b - a for a, b in zip(e[int(sys.argv[2]) - 1:], e[int(sys.argv[2]):]))
print(f"{16 * 128 / d[len(d) // 2]:.0f} {int(sys.argv[3]) / 1024:.0f}")
PY
}

torch_run() { # threads [env] -> "pos/s rss_mib"
  local t=$1; shift
  env "$@" "$py" benches/peers/torch_train.py --threads "$t" --steps "$STEPS" --warmup "$WARMUP" \
    --data "$data" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.0f" % (r["positions_per_s"], r["peak_rss_mib"]))'
}

declare -A res
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    res[modula_$t]+="$(modula_run "$t");"
    res[torch_$t]+="$(torch_run "$t" OMP_WAIT_POLICY=ACTIVE);"
    res[torchp_$t]+="$(torch_run "$t" OMP_WAIT_POLICY=PASSIVE);"
  done
  echo "round $r done" >&2
done
"$py" -c 'import torch; print("torch", torch.__version__, "| modula", end=" ")'
git rev-parse --short HEAD
printf "%-34s %8s %14s %14s\n" config threads "positions/s" "peak RSS MiB"
for t in 1 2; do
  for k in modula torch torchp; do
    name=$k; [ $k = torch ] && name="pytorch (OMP_WAIT_POLICY=ACTIVE)"
    [ $k = torchp ] && name="pytorch (OMP_WAIT_POLICY=PASSIVE)"
    python3 - "$name" "$t" "${res[${k}_$t]}" <<'PY'
import sys
runs = [r.split() for r in sys.argv[3].strip(";").split(";")]
tps = sorted(float(a) for a, _ in runs)
rss = sorted(float(b) for _, b in runs)
print(f"{sys.argv[1]:<34} {sys.argv[2]:>8} {tps[len(tps)//2]:>14.0f} {rss[len(rss)//2]:>14.0f}   (runs: {', '.join(f'{x:.0f}' for x in tps)})")
PY
  done
done
