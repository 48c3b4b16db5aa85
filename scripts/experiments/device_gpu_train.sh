#!/usr/bin/env bash
# Training speed with the `gpu` feature on a real GPU against the CPU path of the same
# machine: `modula train --device gpu` vs `--device cpu` (all cores) on the built-in
# `tales` corpus, at a few model sizes, each a fresh process, positions/s and the final
# validation loss from the trainer's closing line. Runs on the lent GPU machine (no Rust
# toolchain there): `bash scripts/experiments/device_pack.sh` with GPU_MODULA=1 packs a
# release `modula` built with `--features gpu` as bin/modula-gpu; Vulkan and GL loader
# packages in .gl/ (the device README's list). Also runs here, on lavapipe, slowly.
# Usage (repo root): bash scripts/experiments/device_gpu_train.sh [CONFIGS]
#   CONFIGS: any of small,medium,large,mf (default all)
set -uo pipefail
cd "$(dirname "$0")/../.."
configs=${1:-small,medium,large,mf}
d=.dev/g
rm -rf "$d" && mkdir -p "$d" || exit 1
tar -C "$d" -xJf .dev/bins.tar.xz bin/modula-gpu || exit 1
m=$d/bin/modula-gpu
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nv=/usr/local/nvidia/share
[ -f $nv/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=$nv/vulkan/icd.d/nvidia_icd.json \
  __EGL_VENDOR_LIBRARY_FILENAMES=$nv/glvnd/egl_vendor.d/10_nvidia.json
export WGPU_BACKEND=vulkan
command -v nvidia-smi >/dev/null && nvidia-smi -L
echo "cores: $(nproc)"
declare -A cfg=(
  [small]="--d 128 --layers 2 --heads 4 --ffn 512 --batch 8 --seq 128 --steps 20"
  [medium]="--d 512 --layers 4 --heads 8 --ffn 2048 --batch 16 --seq 256 --steps 8"
  [large]="--d 1024 --layers 4 --heads 16 --ffn 4096 --batch 16 --seq 256 --steps 4"
  [mf]="--arch moduleformer --d 512 --layers 4 --experts 16 --ffn 512 --top-k 2 --batch 16 --seq 256 --steps 8"
)
for c in small medium large mf; do
  [[ ",$configs," == *",$c,"* ]] || continue
  for dev in gpu cpu; do
    # shellcheck disable=SC2086 # word splitting of the configuration is intended
    out=$(timeout 200 "$m" train --data tales --device $dev ${cfg[$c]} --eval-every 1000 \
      --eval-batches 2 --quiet --out /tmp/gpu-$c-$dev.gguf 2>&1)
    echo "$c $dev: $(echo "$out" | grep -E -i 'device|gpu|adapter|products|^validation|positions/s' | tr '\n' ' ')"
  done
done
