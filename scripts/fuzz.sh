#!/usr/bin/env bash
# Fuzz the GGUF reader, model construction (loader, nested views, every engine) and the
# tokenizers (GGUF metadata, tokenizer.json, chat templates) with
# cargo-fuzz (libFuzzer + AddressSanitizer, nightly toolchain).
# Usage: scripts/fuzz.sh [SECONDS]   (default 60, per target)
# Seeds: the hostile corpus and valid files written by Modula's writer; new interesting
# inputs accumulate in fuzz/corpus/ (git-ignored), crashes in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked -q
fi
if ! rustup toolchain list | grep -q nightly; then
  echo "[fuzz] installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal
fi
seeds=fuzz/seeds
rm -rf "$seeds"; mkdir -p "$seeds" fuzz/corpus/gguf_reader
cp tests/corpus/hostile/*.gguf tests/corpus/valid/*.gguf "$seeds"/
# -rss_limit_mb guards against over-allocation; -timeout against hangs.
cargo +nightly fuzz run gguf_reader fuzz/corpus/gguf_reader "$seeds" -- \
  -max_total_time="$secs" -rss_limit_mb=512 -timeout=5 -max_len=65536 -print_final_stats=1
# model construction: seeded with small models of every family (dense, nested, EMoE,
# quantised, ModuleFormer, SeqBoat) from the legacy fixtures
mseeds=fuzz/seeds-model
rm -rf "$mseeds"; mkdir -p "$mseeds" fuzz/corpus/model_load
cp tests/fixtures/legacy/*.gguf tests/corpus/valid/*.gguf "$mseeds"/
cargo +nightly fuzz run model_load fuzz/corpus/model_load "$mseeds" -- \
  -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len=262144 -print_final_stats=1
# tokenizers: GGUF tokenizer metadata (every kind), tokenizer.json files, chat templates
tseeds=fuzz/seeds-tokenizer
rm -rf "$tseeds"; mkdir -p "$tseeds" fuzz/corpus/tokenizer_load
for d in tests/fixtures/tokenizer/*/; do
  k=$(basename "$d")
  cp "$d/vocab.gguf" "$tseeds/$k.gguf"
  cp "$d/tokenizer.json" "$tseeds/$k.json"
done
cargo +nightly fuzz run tokenizer_load fuzz/corpus/tokenizer_load "$tseeds" -- \
  -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len=131072 -print_final_stats=1
