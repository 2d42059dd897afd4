#!/usr/bin/env bash
# The test command: installs what is missing, builds (Release, all cores), runs every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh
bash scripts/fetch_models.sh  # MobileSAM for the VFM tests (they skip when offline)
build_dir="${NAF_BUILD_DIR:-build}"
ctest --test-dir "$build_dir" --output-on-failure --timeout 1200

# The module against an OpenCV without contrib (NAF_WITH_XIMGPROC=OFF, as in the GPU machine's
# bundle of scripts/gpu_check.sh): everything but the app and the benchmarks links without ximgproc
# (which used to bring imgcodecs to targets that did not ask for it), and the visualization tests
# check that the guided and joint bilateral methods are refused, by name, and the rest work.
cmake -S . -B "$build_dir-noximgproc" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNAF_WITH_CUDA=OFF \
  -DNAF_WITH_XIMGPROC=OFF -DNAF_WITH_APP=OFF -DNAF_BUILD_BENCHMARKS=OFF -DNAF_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build_dir-noximgproc" --parallel "$(nproc)"
"$build_dir-noximgproc/tests/naf_module_tests" --gtest_filter='Visualize.*' --gtest_brief=1
