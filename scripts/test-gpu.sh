#!/usr/bin/env bash
# The `gpu` feature's tests on a machine without a GPU: Mesa's lavapipe (software Vulkan,
# Debian `mesa-vulkan-drivers`) stands in for one. Installs it when missing (root), forces
# its ICD, and makes a missing adapter a failure (REQUIRE_GPU_ADAPTER=1) so the tests
# cannot pass by skipping. On a machine with a real GPU, run the same cargo commands
# without the ICD override.
#   scripts/test-gpu.sh           # clippy with the feature + the GPU tests
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(mesa-vulkan-drivers libvulkan1)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
ICD=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
test -f "$ICD" || { echo "lavapipe ICD not found at $ICD" >&2; exit 1; }
export VK_ICD_FILENAMES=$ICD VK_DRIVER_FILES=$ICD   # only lavapipe (old and new loader names)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export WGPU_BACKEND=vulkan
export REQUIRE_GPU_ADAPTER=1

cargo clippy -p modula-train -p edge-demo --features modula-train/gpu,edge-demo/gpu --all-targets -- -D warnings
log=$(mktemp)
cargo test -p modula-train --features gpu --test gpu 2>&1 | tee "$log"
cargo test -p edge-demo --features gpu --test cli train_device 2>&1 | tee -a "$log"
# a skipped GPU test says so (SKIPPED lines, see train/tests/gpu.rs): count them
skipped=$(grep -c '^SKIPPED ' "$log" || true)
echo "GPU tests: $skipped skipped (no adapter)"
rm -f "$log"
[ "$skipped" = 0 ] || { echo "GPU tests were skipped" >&2; exit 1; }
