#!/usr/bin/env bash
# The main job: installs what is missing, builds, and upsamples the sample images in data/,
# writing comparison panels to out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh
build_dir="${NAF_BUILD_DIR:-build}"
"$build_dir/examples/naf_demo" data --out=out "$@"
echo "panels written to $root/out/"
