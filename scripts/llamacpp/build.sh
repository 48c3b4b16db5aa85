#!/usr/bin/env bash
# Build llama.cpp from the Python registry's llama-cpp-python source distribution (its
# vendored llama.cpp): the peer Modula is compared with, and the converter
# (convert_hf_to_gguf.py) its files are checked against.
#
#   bash scripts/llamacpp/build.sh [DIR] [JOBS]
#
# DIR (default /tmp/llamacpp) receives the sdist, its source and build/bin/{llama-simple,
# llama-perplexity, llama-tokenize, llama-bench, llama-quantize}. On Xeons with AMX the native
# build must not emit AMX tile instructions (it dies at `tileloadd` where the kernel does not
# enable AMX for the process), so they are turned off.
set -euo pipefail
DIR=${1:-/tmp/llamacpp}
JOBS=${2:-2}
mkdir -p "$DIR"
cd "$DIR"
if ! ls llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  python3 -m pip download --no-binary llama-cpp-python --no-deps llama-cpp-python -d "$DIR"
fi
SRC=$(ls -d llama_cpp_python-*/ 2>/dev/null | head -1 || true)
if [ -z "$SRC" ]; then
  tar xzf llama_cpp_python-*.tar.gz
  SRC=$(ls -d llama_cpp_python-*/ | head -1)
fi
LC="$DIR/${SRC%/}/vendor/llama.cpp"
command -v cmake >/dev/null || { python3 -m pip install --quiet cmake; }
FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$LC" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" >/dev/null
cmake --build "$DIR/build" -j "$JOBS" --target llama-simple llama-perplexity llama-tokenize \
  llama-bench llama-quantize
echo "llama.cpp: $LC"
echo "binaries:  $DIR/build/bin"
# the small client the interop checks use (scripts/llamacpp/peer.cpp)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
g++ -O2 -std=c++17 -I"$LC/include" -I"$LC/ggml/include" "$HERE/peer.cpp" \
  -L"$DIR/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$DIR/build/bin" -o "$DIR/build/bin/peer"
echo "peer:      $DIR/build/bin/peer"
