#!/usr/bin/env bash
# Training speed of two `modula` builds, interleaved (old, new, old, new, ...), for every
# family: wall seconds of a short run each (same seed, same data; the runs are
# bit-identical, so only the time differs). Prints "family build round seconds" and the
# median per family and build. Usage:
#   bash scripts/experiments/train_step_ab.sh OLD_BIN NEW_BIN [ROUNDS] [THREADS]
set -euo pipefail
old=$1 new=$2 rounds=${3:-5} threads=${4:-1}
out=$(mktemp -d)
declare -A args=(
  [dense]="--data tales --seq 64 --steps 20 --batch 8 --d 128 --layers 2 --heads 4 --ffn 512"
  [moduleformer]="--arch moduleformer --data tales --seq 64 --steps 10 --batch 8 --d 64 --layers 2 --experts 8 --ffn 128"
  [seqboat]="--arch seqboat --data tales --seq 64 --steps 10 --batch 8 --d 64 --layers 2"
)
for fam in dense moduleformer seqboat; do
  for r in $(seq "$rounds"); do
    for tag in old new; do
      bin=$old; [ $tag = new ] && bin=$new
      s=$(date +%s.%N)
      # shellcheck disable=SC2086
      "$bin" train ${args[$fam]} --quiet --threads "$threads" --eval-batches 1 \
        --out "$out/$fam-$tag.gguf" >/dev/null 2>&1
      e=$(date +%s.%N)
      echo "$fam $tag $r $(echo "$e - $s" | bc)"
    done
  done
done | tee "$out/times.txt"
echo "median seconds (family build):"
for fam in dense moduleformer seqboat; do
  for tag in old new; do
    m=$(awk -v f=$fam -v t=$tag '$1==f && $2==t {print $4}' "$out/times.txt" | sort -n |
      awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "$fam $tag $m"
  done
done
rm -rf "$out"
