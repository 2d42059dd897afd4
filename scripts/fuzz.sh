#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets of fuzz/ with clang (AddressSanitizer + UBSan) into
# build-fuzz/ and runs each for a bounded time, starting from the seeds in fuzz/corpus/<target>/.
#
# Usage: bash scripts/fuzz.sh [seconds per target (default 60)] [target ...]   (default: all)
# A crash stops with the input in build-fuzz/artifacts/<target>/; copy it to
# fuzz/regressions/<target>/ (ctest then replays it in every build), fix, and rerun.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${1:-60}"
shift || true
build_dir="${NAF_FUZZ_BUILD_DIR:-build-fuzz}"

bash scripts/install_deps.sh
sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DNAF_WITH_CUDA=OFF -DNAF_BUILD_TESTS=OFF -DNAF_BUILD_EXAMPLES=OFF -DNAF_BUILD_FUZZERS=ON \
  "-DCMAKE_C_FLAGS=$sanitize" "-DCMAKE_CXX_FLAGS=$sanitize" \
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
cmake --build "$build_dir" --parallel "$(nproc)"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$build_dir"/fuzz/fuzz_*; do
    name="$(basename "$f")"
    case "$name" in fuzz_replay_*) ;; *) [ -x "$f" ] && targets+=("${name#fuzz_}") ;; esac
  done
fi

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
status=0
summary=()
for t in "${targets[@]}"; do
  corpus="$build_dir/corpus/$t"
  artifacts="$build_dir/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=fuzz/dicts/$t.dict")
  log="$build_dir/fuzz_$t.log"
  echo "== fuzz_$t for ${seconds}s (log $log)"
  set +e
  "$build_dir/fuzz/fuzz_$t" "$corpus" "fuzz/corpus/$t" "${dict[@]}" -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=4096 -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo '?')"
  crashes="$(find "$artifacts" -type f | wc -l)"
  summary+=("fuzz_$t: ${seconds}s, $runs executions, coverage $cov edges, corpus $(find "$corpus" -type f | wc -l) files, exit $rc, artifacts $crashes")
  if [ $rc -ne 0 ]; then
    status=1
    grep -E "ERROR|SUMMARY|runtime error" "$log" | head -5 || true
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
