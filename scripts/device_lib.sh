# Sourced by the scripts that run on the GPU machine (device_check.sh, device_perf.sh,
# device_dist.sh): moves to the repository root and sets $root, $out (logs: $OUT, or ./out) and
# $build (the CUDA build tree), and defines device_build.
root="$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)"
cd "$root" || exit 1
out="${OUT:-$root/out}"
mkdir -p "$out"
build="$root/build-device"

# device_build [TARGET...]: configure (Release, sm_90) and build the given targets (all when none)
# into $build, logs in $out/cmake.log and $out/build.log. On failure prints the tail of the log of
# the step that failed and returns 1.
device_build() {
  local targets=()
  [ $# -gt 0 ] && targets=(--target "$@")
  rm -f "$out/build.log"
  if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DORTHOGPT_CUDA_ARCH=90 >"$out/cmake.log" 2>&1 &&
     cmake --build "$build" -j "$(nproc)" "${targets[@]}" >"$out/build.log" 2>&1; then
    return 0
  fi
  if [ -f "$out/build.log" ]; then tail -n 40 "$out/build.log"; else tail -n 40 "$out/cmake.log"; fi
  return 1
}
