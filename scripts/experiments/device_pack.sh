#!/usr/bin/env bash
# Builds, here, what scripts/experiments/device_x86.sh runs on another x86-64 machine that
# has no Rust toolchain (the GPU machine lent to some sessions, whose CPU may have AVX-512):
# every test binary of the workspace (test profile, as `cargo test --workspace` builds
# them), the `gpu` feature's test binary, the release `modula` and the `kernels_linear`
# benchmark, stripped, with data/kjv.txt, in .dev/bins.tar.xz (about 13 MB; .gitignore
# keeps .dev/ out of git). The binaries keep the absolute paths of this checkout
# that `env!` compiled into them (CARGO_MANIFEST_DIR, CARGO_BIN_EXE_modula); the device
# script maps that path onto its own copy of the tree. With OLD_BENCH set to another
# build of the kernels_linear benchmark (an earlier commit's), that one travels too, as
# kernels_linear_old, for the device script's interleaved old/new comparison; with
# GPU_MODULA=1 a release `modula` built with `--features gpu` travels as modula-gpu (for
# scripts/experiments/device_gpu_train.sh).
# Usage: [OLD_BENCH=path] [GPU_MODULA=1] bash scripts/experiments/device_pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" .dev

# name, package directory, executable of each test target (JSON messages of cargo)
list() {
  python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], os.path.dirname(m["manifest_path"]), m["executable"])
'
}
cargo test --workspace --no-run --message-format=json 2>/dev/null | list >"$stage/tests.txt"
cargo test -p modula-train --features gpu --test gpu --no-run --message-format=json \
  2>/dev/null | list | sed 's/^gpu /gpu-feature /' >>"$stage/tests.txt"
cargo build --release -q -p edge-demo
bench=$(cargo bench -p modula-benches --bench kernels_linear --no-run --message-format=json \
  2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
')

: >"$stage/manifest.txt"
while read -r name dir exe; do
  cp "$exe" "$stage/bin/test-$name"
  echo "test-$name ${dir#"$root"/}" >>"$stage/manifest.txt"
done <"$stage/tests.txt"
cp target/debug/modula "$stage/bin/modula-debug"   # CARGO_BIN_EXE_modula of the CLI tests
cp target/release/modula "$stage/bin/modula"
cp "$bench" "$stage/bin/kernels_linear"
if [ -n "${OLD_BENCH:-}" ]; then cp "$OLD_BENCH" "$stage/bin/kernels_linear_old"; fi
if [ -n "${GPU_MODULA:-}" ]; then
  cargo build --release -q -p edge-demo --features gpu --target-dir target/gpu-release
  cp target/gpu-release/release/modula "$stage/bin/modula-gpu"
fi
strip "$stage"/bin/*
cp data/kjv.txt "$stage/kjv.txt"
echo "$root $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)" >"$stage/origin.txt"
tar -C "$stage" -cf - bin manifest.txt kjv.txt origin.txt | xz -T2 -6 >.dev/bins.tar.xz
ls -l .dev/bins.tar.xz
