#!/usr/bin/env bash
# Installs the Debian packages cv::naf needs, only those that are missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopencv-dev libopencv-contrib-dev
  nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-onnx python3-numpy python3-pil python3-pytest
  clang libclang-rt-14-dev  # scripts/fuzz.sh: libFuzzer + sanitizer runtimes
)

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
