#!/usr/bin/env bash
# The test command: installs what is missing, builds (Release, all cores), runs every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh
bash scripts/fetch_models.sh  # MobileSAM for the VFM tests (they skip when offline)
build_dir="${NAF_BUILD_DIR:-build}"
ctest --test-dir "$build_dir" --output-on-failure --timeout 1200
