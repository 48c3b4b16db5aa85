#!/usr/bin/env bash
# Decode and 512-token prefill of one model per family (dense, ModuleFormer, SeqBoat) with
# two `modula` builds, interleaved old/new per round; prints the medians per family and
# weight type. The models are trained (2 steps) by NEW into DIR. Usage:
#   bash scripts/experiments/decoder_ab.sh OLD_BIN NEW_BIN [ROUNDS] [THREADS] [DIR]
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} threads=${4:-1} dir=${5:-/tmp/decoder-ab}
mkdir -p "$dir"
t() { "$new" train --data tales --seq 64 --steps 2 --batch 2 --quiet "$@" >/dev/null 2>&1; }
[ -f "$dir/dense.gguf" ] || t --d 256 --layers 4 --heads 4 --ffn 1024 --no-positions --out "$dir/dense.gguf"
[ -f "$dir/mf.gguf" ] || t --arch moduleformer --d 128 --layers 4 --experts 8 --out "$dir/mf.gguf"
[ -f "$dir/sb.gguf" ] || t --arch seqboat --d 128 --layers 4 --out "$dir/sb.gguf"
out="$dir/runs.txt"
: >"$out"
for r in $(seq "$rounds"); do
  for m in dense mf sb; do
    for tag in old new; do
      bin=$old; [ $tag = new ] && bin=$new
      "$bin" bench --model "$dir/$m.gguf" --types file,q8_0 --prompt 512 --tokens 32 \
        --rounds 3 --threads "$threads" 2>/dev/null |
        awk -v t=$tag -v m=$m 'NR>1 {print m, $1, t, $(NF-3), $(NF-2)}' >>"$out"
    done
  done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
keys = sorted({(r[0], r[1]) for r in rows}, key=lambda k: (["dense", "mf", "sb"].index(k[0]), k[1]))
print("| family | type | prefill tok/s old | new | new/old | decode ms old | new | new/old |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for m, ty in keys:
    med = lambda tag, i: st.median(float(r[i]) for r in rows if (r[0], r[1], r[2]) == (m, ty, tag))
    po, pn, do, dn = med("old", 3), med("new", 3), med("old", 4), med("new", 4)
    print(f"| {m} | {ty} | {po:,.0f} | {pn:,.0f} | {pn/po:.2f} | {do:.4f} | {dn:.4f} | {dn/do:.2f} |")
PY
