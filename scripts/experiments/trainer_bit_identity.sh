#!/bin/bash
# Do two builds of `modula` train bit-identically? Trains small models of every family and
# method (dense LM, nested SortedNet depth/FFN/heads, patch classifier, EMoE conversion and
# fine-tune with noise/capacity/aux, the whole m2mKD study, SeqBoat LM/padded ListOps/nested
# depth, ModuleFormer plain/nested experts/kv projections/gradient accumulation) with each
# binary and compares the SHA-256 of every model file written.
#
#   scripts/experiments/trainer_bit_identity.sh OLD_BINARY NEW_BINARY [WORKDIR]
#
# Used for issue #29 (the trainer block stack): prints IDENTICAL or the differing files.
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2"); W=${3:-$(mktemp -d)}; mkdir -p "$W"; W=$(realpath "$W")
export RAYON_NUM_THREADS=2
run() {
  local M=$1 O=$2
  rm -rf "$O"; mkdir -p "$O"; cd "$O"
  t() { "$M" train "$@" >/dev/null 2>&1 || echo "failed: train $*" >&2; }
  t --data tales --steps 12 --d 32 --layers 2 --heads 4 --ffn 64 --seq 32 --batch 4 --eval-every 6 --out dense.gguf
  t --data tales --steps 12 --d 32 --layers 3 --heads 4 --ffn 64 --seq 32 --batch 4 --nested-depths 1,2 --nested-ffn 32 --nested-heads 2 --sorted all --eval-every 6 --out nested.gguf
  t --data generated --patch 4 --steps 12 --d 32 --layers 2 --heads 4 --ffn 64 --batch 4 --eval-every 6 --out cls.gguf
  "$M" emoe convert --in dense.gguf --experts 4 --top-k 2 --out emoe.gguf >/dev/null 2>&1
  t --data tales --steps 8 --seq 32 --batch 4 --init emoe.gguf --emoe-noise 1 --emoe-capacity 1.5 --emoe-aux 0.01 --eval-every 4 --out emoe-ft.gguf
  "$M" m2mkd run --dir m2m --modules 2 --teacher-width 16 --teacher-blocks 1 --teacher-ffn 32 --student-width 8 --student-ffn 16 --experts 4 --top-k 2 --steps-meta 6 --steps-incubate 4 --steps-teacher 4 --steps-distill 4 --steps-finetune 4 --batch 8 --patch 4 --train-images 64 --test-images 32 >/dev/null 2>&1 || echo "failed: m2mkd" >&2
  t --arch seqboat --data tales --steps 10 --seq 32 --batch 4 --eval-every 5 --out sb.gguf
  t --arch seqboat --data listops --steps 10 --batch 4 --eval-every 5 --out sbl.gguf
  t --arch seqboat --data tales --steps 10 --seq 32 --batch 4 --eval-every 5 --nested-depths 1 --layers 2 --out sbn.gguf
  t --arch moduleformer --data tales --steps 10 --seq 32 --batch 4 --eval-every 5 --out mf.gguf
  t --arch moduleformer --data tales --steps 10 --seq 32 --batch 4 --eval-every 5 --nested-experts 2,4 --experts 6 --router-hidden 0 --out mfn.gguf
  t --arch moduleformer --data tales --steps 10 --seq 32 --batch 4 --eval-every 5 --kv-proj --heads 2 --att-hidden 32 --renormalize --aux-lc 0.01 --out mfk.gguf
  t --arch moduleformer --data tales --steps 10 --seq 32 --batch 4 --accum 2 --eval-every 5 --out mfa.gguf
  find . -name '*.gguf' | sort | xargs sha256sum
}
run "$OLD" "$W/old" > "$W/old.sha"
run "$NEW" "$W/new" > "$W/new.sha"
echo "$(wc -l < "$W/old.sha") model files each"
if diff "$W/old.sha" "$W/new.sha"; then echo IDENTICAL; else echo DIFFERENT; exit 1; fi
