#!/usr/bin/env bash
# Builds everything and runs every test (the command .ci/run runs):
#   1. install Debian dependencies (scripts/install_deps.sh)
#   2. the format-layer tests under AddressSanitizer + UBSan (the code that
#      parses untrusted files; LibTorch-linked binaries are not instrumented)
#   3. Release build + the full CTest suite (needs ../shared/spec/golden)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
scripts/install_deps.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DMERGESERVE_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j "$JOBS" --target mergeserve_format_tests
TEST_TMPDIR=build-asan/test_tmp UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build-asan/tests/mergeserve_format_tests
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS"
cd build && ctest -j "$JOBS" --output-on-failure --timeout 600
