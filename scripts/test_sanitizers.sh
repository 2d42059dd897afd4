#!/usr/bin/env bash
# The test suite again under AddressSanitizer + UndefinedBehaviorSanitizer (GCC, CPU path only),
# in its own build directory (build-sanitizers/). Any memory error, leak or undefined behaviour
# fails the test that caused it. CI runs it after scripts/test.sh (.ci/run).
# The Python suite is skipped here: it runs no native code of ours. The Qt app (Qt itself reports
# leaks under LSan) and the benchmarks are not built here; the library and its tests are.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/install_deps.sh
build_dir="${NAF_SANITIZER_BUILD_DIR:-build-sanitizers}"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
start=$(date +%s)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNAF_WITH_CUDA=OFF -DNAF_BUILD_EXAMPLES=OFF \
  -DNAF_WITH_APP=OFF -DNAF_BUILD_BENCHMARKS=OFF \
  "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
cmake --build "$build_dir" --parallel "$(nproc)"
built=$(date +%s)

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
if [ -f scripts/lsan.supp ]; then export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:${LSAN_OPTIONS:-}"; fi
ctest --test-dir "$build_dir" --output-on-failure --timeout 1200 -E '^python_reference_tests$'
echo "sanitizers: build $((built - start)) s, tests $(($(date +%s) - built)) s"
