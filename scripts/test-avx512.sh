#!/usr/bin/env bash
# Test modula-quant's AVX-512 kernels (AVX-512BW and VNNI) on an emulated CPU.
#
# No machine of this project executes AVX-512 (the x86 hosts are AMD EPYC without it, and
# qemu's user mode cannot run EVEX instructions), so the kernels run inside Bochs's CPU
# emulator, which implements AVX-512, through the `bochscpu-python` wheel from PyPI:
#   1. build tools/avx512-emu, a freestanding x86-64 program (no OS, no libc) that runs
#      every AVX-512 kernel on random blocks of every length 1..48 and a few longer ones and
#      compares it with the scalar reference (bit for bit where it must be identical), then
#      modula-core's `linear_mode` on Q8_0/Q4_0 matrices at the AVX2 level against the
#      scalar level and against the AVX-512 kernel its dispatch must pick;
#   2. scripts/avx512_emu.py loads it into the emulator and reads its report, twice:
#      - the wheel as published: Bochs's Cannon Lake model (AVX-512F/BW/VL, no VNNI);
#      - a copy with one instruction changed so the same table selects Tiger Lake
#        (AVX-512 with VNNI): the wheel passes a fixed model index (27) to Bochs; the copy
#        passes 29 and a choice count of 30 (2 bytes, checked against the published
#        file's SHA-256 first, so a different wheel fails loudly instead of testing an
#        unknown model). The script checks which features each model reports.
#
# Usage: bash scripts/test-avx512.sh        (needs python3-venv, cc; ~1 min)
# Exit status 2 when the wheel cannot be installed (no PyPI): the caller decides.
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/avx512-emu
venv=$work/venv
mkdir -p "$work"

if ! { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } ||
   ! "$venv/bin/pip" install -q bochscpu-python==0.4.0 >/dev/null 2>&1; then
  echo "cannot install bochscpu-python==0.4.0 from PyPI" >&2
  exit 2
fi
pkg=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bochscpu
so=$(ls "$pkg"/_bochscpu.*.so)
want=a872ef067d57b4d9de17370e1e26a41e2790960518729363627adb50fbd035fe
have=$(sha256sum "$so" | cut -d' ' -f1)
if [ "$have" != "$want" ]; then
  echo "unexpected bochscpu build ($have): the Tiger Lake patch is for $want" >&2
  exit 1
fi

# glibc < 2.38: forward the two C23 symbols the wheel needs
preload=
if ! "$venv/bin/python" -c 'import bochscpu' 2>/dev/null; then
  cc -shared -fPIC -O2 -o "$work/glibc-c23-shim.so" scripts/glibc-c23-shim.c
  preload=$PWD/$work/glibc-c23-shim.so
fi

# the two models: the published wheel, and the copy that selects Tiger Lake
rm -rf "$work/models"
mkdir -p "$work/models/cnl" "$work/models/tgl"
cp -r "$pkg" "$work/models/cnl/"
cp -r "$pkg" "$work/models/tgl/"
"$venv/bin/python" - "$work/models/tgl/bochscpu/$(basename "$so")" <<'PY'
import sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
off = 0x44A6FC  # mov r8d, 28 (model choices); mov r9d, 27 (the chosen model)
assert d[off:off + 12] == bytes.fromhex("41b81c00000041b91b000000"), "unexpected code"
d[off + 2] = 30
d[off + 8] = 29
open(p, "wb").write(d)
PY

# the freestanding program: static, not position-independent, no start files or libc,
# built twice with modula-core's dispatch compiled for AVX-512BW and for AVX-512 VNNI
# (a no_std build reads the sub-level from the target features)
base="-C relocation-model=static -C link-arg=-nostartfiles -C link-arg=-nostdlib -C link-arg=-static -C link-arg=-Wl,--build-id=none"
feats="+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512vl"
build() { # NAME EXTRA_FEATURES
  ( cd tools/avx512-emu &&
    RUSTFLAGS="$base -C target-feature=$feats$2" \
    cargo build -q --release --features dispatch --target x86_64-unknown-linux-gnu \
      --target-dir "../../$work/$1" )
  echo "$work/$1/x86_64-unknown-linux-gnu/release/modula-avx512-emu"
}
prog_bw=$(build bw "")
prog_vnni=$(build vnni ",+avx512vnni")

echo "== Cannon Lake model (AVX-512F/BW/VL, no VNNI)"
PYTHONPATH=$work/models/cnl LD_PRELOAD=$preload \
  "$venv/bin/python" scripts/avx512_emu.py "$prog_bw" --expect-vnni no --expect-dispatch bw
echo "== Tiger Lake model (AVX-512 with VNNI)"
PYTHONPATH=$work/models/tgl LD_PRELOAD=$preload \
  "$venv/bin/python" scripts/avx512_emu.py "$prog_vnni" --expect-vnni yes --expect-dispatch vnni
