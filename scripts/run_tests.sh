#!/usr/bin/env bash
# Builds everything and runs every test (the command .ci/run runs):
#   1. install Debian dependencies (scripts/install_deps.sh)
#   2. the format, base and auth tests under AddressSanitizer + UBSan (the
#      code that parses untrusted files and tokens; LibTorch-linked binaries
#      are not instrumented)
#   3. the libFuzzer targets (clang), each for FUZZ_SECONDS (default 60)
#      from the committed seed corpus
#   4. Release build + the full CTest suite (needs ../shared/spec/golden)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
scripts/install_deps.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DMERGESERVE_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j "$JOBS" --target mergeserve_format_tests
TEST_TMPDIR=build-asan/test_tmp UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build-asan/tests/mergeserve_format_tests
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMERGESERVE_FUZZ=ON >/dev/null
cmake --build build-fuzz -j "$JOBS"
for target in safetensors_reader:safetensors merge_config:merge_config; do
  fuzzer=${target%%:*}
  work=$(mktemp -d)
  mkdir "$work/corpus"
  cp tests/fuzz/corpus/"${target##*:}"/* "$work/corpus"/
  echo "fuzzing ${fuzzer} for ${FUZZ_SECONDS}s"
  if ! (cd "$work" && "$OLDPWD"/build-fuzz/tests/fuzz/"${fuzzer}"_fuzzer \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
        -print_final_stats=1 corpus > log 2>&1); then
    cat "$work/log"
    echo "fuzzer ${fuzzer} found a crash (the input is in $work)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$work/log"
  rm -rf "$work"
done
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS"
cd build && ctest -j "$JOBS" --output-on-failure --timeout 600
