#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan + UBSan) and run each for a bounded time on its
# committed seed corpus (tests/fuzz/corpus/<target>, copied so new inputs stay out of the repo).
# A crash leaves its input in build-fuzz/artifacts/ and makes this script fail; turn it into a
# regression test by adding the input to the target's corpus.
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-60}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(shard config tokenizer checkpoint)
build="$root/build-fuzz"
# clang and its runtime (libFuzzer, sanitizers) are needed only here
if ! command -v clang++ >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-dev 2>/dev/null | grep -q "ok installed"; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-dev
fi
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DORTHOGPT_FUZZ=ON \
  -DORTHOGPT_ENABLE_CUDA=OFF -DORTHOGPT_BUILD_TESTS=OFF -DORTHOGPT_BUILD_BENCH=OFF -DORTHOGPT_NATIVE=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}")
mkdir -p "$build/artifacts"
status=0
for t in "${targets[@]}"; do
  work="$build/corpus_$t"; rm -rf "$work"; mkdir -p "$work"
  cp -r tests/fuzz/corpus/"$t"/. "$work"/ 2>/dev/null || true
  # the seed inputs first, as regression tests, then fuzzing for the time budget
  if ! "$build/tests/fuzz/fuzz_$t" -runs=0 "$work" >"$build/fuzz_$t.seed.log" 2>&1; then
    echo "fuzz_$t: a committed corpus input fails"; tail -30 "$build/fuzz_$t.seed.log"; status=1; continue
  fi
  if "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -max_len=65536 -timeout=20 -rss_limit_mb=4096 \
       -artifact_prefix="$build/artifacts/${t}_" "$work" >"$build/fuzz_$t.log" 2>&1; then
    echo "fuzz_$t: $(grep -Eo 'stat::number_of_executed_units: [0-9]+|#[0-9]+ +DONE.*' "$build/fuzz_$t.log" | tail -1) in ${secs}s, no crash"
    grep -E "^#[0-9]+.*(cov|DONE)" "$build/fuzz_$t.log" | tail -1
  else
    echo "fuzz_$t: CRASH"; tail -40 "$build/fuzz_$t.log"; status=1
  fi
done
exit $status
