#!/usr/bin/env bash
# Instructions per weight block of the decode products on aarch64, counted under qemu
# (no ARM board here): a TCG plugin (neon-insns/insn.c) counts executed guest
# instructions; the harness (neon-insns/) runs REPS products y = W x through
# modula_core::kernels::linear::linear; the difference of two runs (12 and 2 products)
# over 10 products is one product's count (setup cancels; one thread). A proxy for speed
# on in-order cores (Cortex-A53/A55) where the kernels are compute-bound, not a timing.
#
#   bash scripts/experiments/neon_insns.sh [OLD_HARNESS_BINARY]
# Env: CPUS (default "cortex-a53 max": without and with dotprod), TYPES, SHAPES.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
work=$root/target/neon-insns
mkdir -p "$work"
gcc -shared -fPIC -O2 -o "$work/libinsn.so" scripts/experiments/neon-insns/insn.c
A64_TARGET_DIR=$root/target/debian-xbuild bash scripts/setup-aarch64-cross.sh build \
  scripts/experiments/neon-insns --release >&2
new=$root/target/debian-xbuild/aarch64-unknown-linux-gnu/release/neon-insns
old=${1:-}
count() { # BIN CPU TYPE ROWS COLS REPS -> instructions
  rm -f "$work/o"
  RAYON_NUM_THREADS=1 INSN_OUT="$work/o" QEMU_CPU=$2 \
    qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$work/libinsn.so" "$1" "$3" "$4" "$5" "$6" >/dev/null
  awk '{print $2}' "$work/o"
}
per_block() { # BIN CPU TYPE ROWS COLS
  local a b
  a=$(count "$@" 2); b=$(count "$@" 12)
  echo "scale=2; ($b - $a) / 10 / ($4 * $5 / 32)" | bc
}
printf '%-11s %-5s %-10s %10s %10s\n' cpu type shape "${old:+old}" new
for cpu in ${CPUS:-cortex-a53 max}; do
  for ty in ${TYPES:-f32 q8_0 q4_0}; do
    for shape in ${SHAPES:-128x128 256x256 512x512 1024x1024 4096x1024}; do
      n=${shape%x*}; k=${shape#*x}
      o=""; [[ -n $old ]] && o=$(per_block "$old" "$cpu" "$ty" "$n" "$k")
      printf '%-11s %-5s %-10s %10s %10s\n' "$cpu" "$ty" "$shape" "$o" "$(per_block "$new" "$cpu" "$ty" "$n" "$k")"
    done
  done
done
