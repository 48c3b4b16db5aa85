#!/usr/bin/env bash
# Writes the checked-in "files from an earlier version" (tests/fixtures/legacy/): one small
# trained model of every family and variant the runtime reads, made with the `modula`
# binary given (an earlier commit's build), and what that binary generated greedily from
# each, which `tests/legacy.rs` requires the current engines to reproduce byte for byte.
#
#   bash scripts/make-legacy-fixtures.sh /path/to/old/modula tests/fixtures/legacy [OLD_SRC]
#
# With OLD_SRC (that commit's source tree, e.g. a `git worktree`), also the logits of
# its decode engine after the prompt (`logits.tsv`, f32 bit patterns), from
# scripts/legacy/dump_logits.rs built there as an example of modula-core.
#
# isa.txt names the SIMD level of the machine that made them (bit-exact checks only there).
# The fixtures in the repository were made with the build of commit 5ab688e (before the
# model description, the decoder interface and the batched dense prefill).
set -euo pipefail
bin=${1:?usage: make-legacy-fixtures.sh MODULA_BIN OUT_DIR}
out=${2:?usage: make-legacy-fixtures.sh MODULA_BIN OUT_DIR}
mkdir -p "$out"
common=(--data tales --seq 32 --steps 40 --batch 4 --quiet --threads 1)
"$bin" train "${common[@]}" --d 32 --layers 2 --heads 2 --ffn 64 \
  --nested-depths 1 --nested-ffn 32 --nested-heads 1 --out "$out/dense-nested.gguf" >/dev/null
"$bin" quantize --in "$out/dense-nested.gguf" --out "$out/dense-nested-q8_0.gguf" --type q8_0 >/dev/null
"$bin" train "${common[@]}" --d 32 --layers 2 --heads 2 --ffn 64 --no-positions \
  --out "$out/dense.gguf" >/dev/null
"$bin" emoe convert --in "$out/dense.gguf" --out "$out/emoe.gguf" --experts 4 --top-k 2 >/dev/null
"$bin" quantize --in "$out/emoe.gguf" --out "$out/emoe-q4_0.gguf" --type q4_0 >/dev/null
"$bin" train "${common[@]}" --arch moduleformer --d 32 --layers 1 --experts 4 --ffn 32 \
  --top-k 2 --router-hidden 16 --nested-experts 2 --out "$out/moduleformer.gguf" >/dev/null
"$bin" train "${common[@]}" --arch seqboat --d 32 --layers 2 --ndim 4 --zdim 16 --hdim 32 \
  --window 8 --nested-depths 1 --out "$out/seqboat.gguf" >/dev/null
rm -f "$out"/*.metrics.jsonl "$out"/*.loss.svg "$out"/*.latency.json
# what the earlier version generated: greedy, 16 bytes after the prompt (the dense files hold 32 positions), per file and size
: >"$out/expected.tsv"
gen() { # file size
  local f=$1 size=$2 args=()
  [ "$size" != full ] && args=(--size "$size")
  local text
  text=$("$bin" run --model "$out/$f" --prompt "Once upon a time" --tokens 16 \
    --temperature 0 --threads 1 "${args[@]}" 2>/dev/null | od -An -tx1 -v | tr -d ' \n')
  printf '%s\t%s\t%s\n' "$f" "$size" "$text" >>"$out/expected.tsv"
}
for f in dense-nested.gguf dense-nested-q8_0.gguf; do
  gen "$f" full
  gen "$f" 1x32x1
done
for f in dense.gguf emoe.gguf emoe-q4_0.gguf; do gen "$f" full; done
gen moduleformer.gguf full
gen moduleformer.gguf 2
gen seqboat.gguf full
gen seqboat.gguf 1
if [ -n "${3:-}" ]; then
  cp "$(dirname "$0")/legacy/dump_logits.rs" "$3/core/examples/dump_logits.rs"
  (cd "$3" && cargo build -q --release -p modula-core --example dump_logits)
  exe=$(cd "$3" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/dump_logits
  cut -f1,2 "$out/expected.tsv" | "$exe" "$out" >"$out/logits.tsv"
fi
ls -l "$out"
