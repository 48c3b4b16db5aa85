#!/usr/bin/env bash
# Build the bare-metal example (bare-metal/, feature `rt`) as a static library for
# thumbv7em-none-eabihf (Cortex-M4F/M7) and aarch64-unknown-none, with Debian's rustc-web
# and -Zbuild-std=core,alloc (the toolchain of setup-aarch64-cross.sh; no rustup targets
# needed), and check that the library exports the C entry point. Link the .a into a
# board's firmware (its startup code, linker script and stack are the board's).
#
# Usage: bash scripts/build-bare-metal.sh   (output: target/bare-metal/<target>/release/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bash "$here/setup-aarch64-cross.sh" install >/dev/null
export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
unset RUSTUP_TOOLCHAIN CARGO_BUILD_RUSTC_WRAPPER || true
cd "$root"
for t in thumbv7em-none-eabihf aarch64-unknown-none; do
  echo "== bare-metal example: $t"
  cargo rustc -q -Zbuild-std=core,alloc --target "$t" --release -p modula-bare-metal \
    --features rt --crate-type staticlib --target-dir target/bare-metal \
    --config 'profile.release.panic="abort"'
  lib=target/bare-metal/$t/release/libmodula_bare_metal.a
  test -s "$lib"
  # the entry point is a global text symbol of the archive (GNU nm reads either ELF class)
  if command -v nm >/dev/null 2>&1; then
    syms=$(nm -g --defined-only "$lib" 2>/dev/null || true)
    grep -q ' T modula_tiny_generate$' <<<"$syms" \
      || { echo "FAIL: modula_tiny_generate is not exported by $lib"; exit 1; }
  fi
  echo "   OK: $lib ($(stat -c %s "$lib") bytes)"
done
