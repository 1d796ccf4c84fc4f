#!/usr/bin/env bash
# Build llama.cpp's llama-server, llama-bench and llama-batched-bench from the source that
# PyPI's llama-cpp-python sdist vendors, into bench/out/llama.cpp/ (git-ignored; ~9 min on
# 2 cores, then cached). Prints the server's path.
#   bench/build_llama_server.sh [VERSION]
# LLAMA_CUDA=1: a CUDA build for Hopper (sm_90) instead, into VERSION-cuda/ (the GPU
# machine has nvcc and CMake; ~5 min on 16 cores).
# LLAMA_SRC=TARBALL: build from that source tarball (bench_gpu.py packs a trimmed one to
# carry to a machine without a package index) instead of pip-downloading the sdist.
# AMX is left out: /proc/cpuinfo may list it where the VM faults on its instructions.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${1:-0.3.36}"
FLAVOUR="$VERSION"
CUDA_FLAGS=()
if [[ "${LLAMA_CUDA:-}" == 1 ]]; then
    FLAVOUR="$VERSION-cuda"
    CUDA_FLAGS=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90)
fi
OUT="$ROOT/bench/out/llama.cpp/$FLAVOUR"
SERVER="$OUT/build/bin/llama-server"
if [[ -x "$SERVER" && -x "$OUT/build/bin/llama-batched-bench" ]]; then echo "$SERVER"; exit 0; fi
mkdir -p "$OUT"
SDIST="${LLAMA_SRC:-$OUT/llama_cpp_python-$VERSION.tar.gz}"
if [[ ! -f "$SDIST" ]]; then
    "$ROOT/.venv/bin/python" -m pip download -q --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$OUT" >&2
fi
[[ -d "$OUT/src" ]] || { mkdir -p "$OUT/src"; tar xzf "$SDIST" -C "$OUT/src" --strip-components=1; }
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$OUT/src/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
    "${CUDA_FLAGS[@]}" >&2
cmake --build "$OUT/build" -j "$(nproc)" --target llama-server llama-bench llama-batched-bench llama-quantize >&2
echo "$SERVER"
