#!/usr/bin/env bash
# Configures and builds cv::naf (Release, all cores) into build/ after installing what is missing.
# CUDA kernels are compiled when nvcc is found (a GPU is not needed to compile them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/install_deps.sh

build_dir="${NAF_BUILD_DIR:-build}"
cuda_args=()
if [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
if [ -n "${CUDACXX:-}" ] && [ "${NAF_WITH_CUDA:-ON}" != "OFF" ]; then
  cuda_args=(-DNAF_WITH_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${NAF_CUDA_ARCHITECTURES:-75;80;90}")
else
  cuda_args=(-DNAF_WITH_CUDA=OFF)
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_args[@]}" "$@"
cmake --build "$build_dir" --parallel "$(nproc)"
