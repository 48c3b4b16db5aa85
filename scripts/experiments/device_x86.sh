#!/usr/bin/env bash
# Runs, on another x86-64 machine without a Rust toolchain, the binaries that
# scripts/experiments/device_pack.sh built here (carried in .dev/): what the CPU has, every
# test of the workspace with the default kernels (AVX2 on an AVX-512 CPU: AVX-512 is
# opt-in) and the core and quant tests with the AVX-512 VNNI and BW ones
# (MODULA_SIMD=avx512-vnni, avx512), the AVX2 and AVX-512 row kernels side by side in one
# process, the dispatched products with the F32 product and the read baseline as the
# bandwidth bound (interleaved with an earlier build, kernels_linear_old, when one was
# packed), steady-state decode of the three memory-bound kinds, and the `gpu` feature's
# tests on the machine's GPU through Vulkan
# (Vulkan and GL loader packages in .gl/, see the device README: libvulkan1 alone was not
# enough on the H200 machine — NVIDIA's ICD, libGLX_nvidia, could not hand out
# vkCreateInstance; fetch the README's whole list, libglvnd0 etc.) when one is there.
# Usage (repo root): bash scripts/experiments/device_x86.sh [STAGES] [ROUNDS]
#   STAGES: any of cpu,tests,bench,decode,gpu (default all); ROUNDS: bench/decode rounds (1)
#   DECODE_SIMD: the MODULA_SIMD values decode runs under (default: "default" only)
set -uo pipefail
cd "$(dirname "$0")/../.."
stages=${1:-cpu,tests,bench,decode,gpu}
rounds=${2:-1}
has() { [[ ",$stages," == *",$1,"* ]]; }
say() { echo "== $* [$(date +%T)]"; }
fails=0
d=.dev/x
rm -rf "$d" && mkdir -p "$d" || exit 1
if command -v xz >/dev/null; then tar -C "$d" -xJf .dev/bins.tar.xz || exit 1
else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .dev/bins.tar.xz "$d" || exit 1
fi
read -r origin rev <"$d/origin.txt"
say "binaries of $rev built at $origin"
# the binaries find test data and the CLI through paths compiled in at $origin
if [ "$(readlink -f "$origin")" != "$PWD" ]; then
  if [ -e "$origin" ]; then echo "$origin exists and is not this tree" >&2; exit 1; fi
  mkdir -p "$(dirname "$origin")" && ln -s "$PWD" "$origin"
fi
mkdir -p target/debug data && cp "$d/bin/modula-debug" target/debug/modula && cp "$d/kjv.txt" data/
export PATH=$PWD/$d/bin:$PATH

if has cpu; then
  say cpu
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L1d|L2|L3|NUMA node\(s\))' || true
  echo "flags: $(grep -m1 -o -E '\b(avx2|fma|f16c|avx512[a-z0-9_]*|amx[a-z0-9_]*|avx_vnni)\b' \
    /proc/cpuinfo | sort -u | tr '\n' ' ')"
  free -g | head -2
fi

run_tests() { # $1: label, $2: regex of the binaries to run; environment from the caller
  local n=0 bad=0
  while read -r bin dir; do
    [ "$bin" = test-gpu-feature ] && continue
    [[ $bin =~ $2 ]] || continue
    n=$((n + 1))
    if ! out=$(cd "$dir" && timeout 300 "$OLDPWD/$d/bin/$bin" -q 2>&1); then
      bad=$((bad + 1)); echo "$out" | tail -40; echo "FAILED: $bin ($1)"
    fi
    echo "$out" | grep -E '^test result' | sed "s/^/$1 $bin: /"
  done <"$d/manifest.txt"
  say "$1: $n test binaries, $bad failed"
  fails=$((fails + bad))
}
if has tests; then
  say "every test with the default kernels, the core and quant tests with the AVX-512 ones"
  run_tests default .
  MODULA_SIMD=avx512-vnni run_tests avx512vnni 'modula_(core|quant)$'
  MODULA_SIMD=avx512 run_tests avx512bw 'modula_(core|quant)$'
fi

bench() { # $1: binary, $2: filter
  "$1" --bench "$2" --warm-up-time 1 --output-format bencher 2>&1 | grep '^test '
}
if has bench; then
  rows='rows_4096x4096_q'
  disp='gemv_4096x4096_(f32|q8_0|q4_0)/m1/avx2|gemv_16384x4096_q4_0/m1/avx2|membw_64MiB/read$'
  say "bench: row kernels side by side (one process, one thread)"
  RAYON_NUM_THREADS=1 bench kernels_linear "$rows"
  builds=(kernels_linear)
  [ -x "$d/bin/kernels_linear_old" ] && builds=(kernels_linear_old kernels_linear)
  for r in $(seq "$rounds"); do
    for b in "${builds[@]}"; do
      say "bench round $r: $b, 1 thread"; RAYON_NUM_THREADS=1 bench "$b" "$disp"
    done
  done
  for b in "${builds[@]}"; do
    say "bench: $b, 4 threads"; RAYON_NUM_THREADS=4 bench "$b" "$disp"
  done
fi

if has decode; then
  common=(--data kjv --seq 64 --steps 2 --batch 1 --d 1024 --layers 4 --quiet)
  say "decode: training the models (2 steps: speed only)"
  modula train "${common[@]}" --heads 8 --ffn 4096 --out /tmp/big.gguf >/dev/null &&
    modula train "${common[@]}" --arch moduleformer --experts 16 --ffn 1024 --top-k 2 \
      --out /tmp/mf.gguf >/dev/null &&
    modula train "${common[@]}" --arch seqboat --out /tmp/sb.gguf >/dev/null || fails=$((fails + 1))
  for r in $(seq "$rounds"); do
    for model in big mf sb; do
      for simd in ${DECODE_SIMD:-default}; do
        env=(); [ $simd != default ] && env=(MODULA_SIMD=$simd)
        echo "$model $simd round $r: $(env "${env[@]}" modula bench --model /tmp/$model.gguf \
          --types file,q8_0,q4_0 --rounds 5 --prompt 16 --tokens 48 --threads 1 2>&1 |
          awk '/^bench:/ {printf "[%s] ", $NF} /^(file|q8_0|q4_0) / {printf "%s %s tok/s %s | ", $1, $(NF-1), $NF}')"
      done
    done
  done
fi

if has gpu; then
  say "gpu: the gpu feature's tests through Vulkan"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
  icd=
  for c in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$c" ]; then icd=$c; break; fi
  done
  ldconfig -p | grep -E 'libvulkan|libGLX_nvidia' || true
  [ -n "$icd" ] && cat "$icd"
  echo "ICD: $icd"
  dir=$(awk '$1 == "test-gpu-feature" {print $2}' "$d/manifest.txt")
  egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if (cd "$dir" && VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd WGPU_BACKEND=vulkan VK_LOADER_DEBUG=error \
    __EGL_VENDOR_LIBRARY_FILENAMES=$egl \
    REQUIRE_GPU_ADAPTER=1 timeout 300 "$OLDPWD/$d/bin/test-gpu-feature" --nocapture 2>&1 |
    tail -60); then :; else fails=$((fails + 1)); fi
fi
say "done: $fails failed stage(s)"
exit $((fails > 0))
