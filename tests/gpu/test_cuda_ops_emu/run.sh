#!/usr/bin/env bash
# Build and run the CUDA op tests on the CPU through the emulator (see README.md).
#   tests/gpu/test_cuda_ops_emu/run.sh [gtest args...]      e.g. --gtest_filter='CudaAttention.*'
# Needs g++ (C++20), python3, GoogleTest, fmt and the CUDA headers (no GPU, no nvcc run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$root/build-emu"
cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
mkdir -p "$out/gen" "$out/obj"
kernels="attention_forward attention_backward attention_simple rmsnorm rotary_qknorm crossentropy relu2 reduce_convert embedding"
for k in $kernels; do python3 "$here/rewrite_launches.py" "$root/src/model/cuda/$k.cu" "$out/gen/$k.cpp"; done
flags=(-std=c++20 -O2 -g -fopenmp -w -include "$here/cuda_emulator.h" -I"$here/include" -I"$root/src"
       -I"$root/tests/gpu" -I"$cuda_inc" -DOG_TEST_DATA_DIR="\"$root/tests/data\"")
srcs=("$here/cuda_emulator.cpp" "$root/tests/gpu/test_cuda_ops.cpp" "$root/tests/gpu/test_cuda_ops_attention.cpp")
for k in $kernels; do srcs+=("$out/gen/$k.cpp"); done
for c in attention rmsnorm rotary relu2 crossentropy embedding; do srcs+=("$root/src/model/cpu/$c.cpp"); done
objs=() pids=()
for s in "${srcs[@]}"; do
  o="$out/obj/$(echo "$s" | sed "s|$root/||; s|/|_|g").o"
  objs+=("$o")
  g++ "${flags[@]}" -c "$s" -o "$o" &
  pids+=($!)
  while [ "$(jobs -r | wc -l)" -ge "${JOBS:-2}" ]; do sleep 0.2; done
done
for p in "${pids[@]}"; do wait "$p"; done  # set -e: a failed compile stops here
cudart_dirs=(-L"${CUDA_HOME:-/usr/local/cuda}/lib64" -L"${CUDA_HOME:-/usr/local/cuda}/lib")
g++ -fopenmp -o "$out/emu_cuda_ops_tests" "${objs[@]}" -lgtest -lgtest_main -lfmt -lpthread "${cudart_dirs[@]}" -lcudart \
    -Wl,-rpath,"${CUDA_HOME:-/usr/local/cuda}/lib64:${CUDA_HOME:-/usr/local/cuda}/lib"
exec "$out/emu_cuda_ops_tests" "$@"
