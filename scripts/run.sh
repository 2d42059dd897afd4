#!/usr/bin/env bash
# The main job: installs what is missing, builds, fetches the default VFM (MobileSAM), and runs
# VFM -> NAF on the sample images in data/, writing PCA comparison panels to out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh
bash scripts/fetch_models.sh  # the default VFM (MobileSAM) into models/cache/
build_dir="${NAF_BUILD_DIR:-build}"
"$build_dir/examples/naf_demo" data --out=out "$@"
echo "panels written to $root/out/"
