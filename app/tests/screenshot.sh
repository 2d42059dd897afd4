#!/usr/bin/env bash
# Starts the real viewer in a virtual X server (Xvfb) on a sample image, runs it, clicks a pixel,
# and saves a grab of the X screen. Exit 77 (skipped) when Xvfb or the VFM model is missing.
#   usage: screenshot.sh NAF_VIEWER OUT.png [IMAGE]
set -euo pipefail
viewer="$1"
out="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${3:-$root/data/coco_000000000285_bear.jpg}"
vfm="${NAF_APP_TEST_VFM:-mobilesam}"

if ! command -v xvfb-run >/dev/null; then
  echo "skipped: xvfb-run is not installed (scripts/install_deps.sh installs xvfb)"
  exit 77
fi
# The model must be present (the viewer checks the registry entry and its file).
if ! QT_QPA_PLATFORM=offscreen "$viewer" --vfm "$vfm" --check-model; then
  echo "skipped: the VFM '$vfm' cannot run here (reason above)"
  exit 77
fi

rm -f "$out"
export QT_QPA_PLATFORM=xcb
# -a picks a free display number; 24-bit screen of the window's size.
timeout 240 xvfb-run -a -s "-screen 0 1500x820x24" \
  "$viewer" --open "$image" --vfm "$vfm" --size 384 --run --click 200,150 \
            --panels image,bilinear,naf --window-size 1500x820 --screenshot "$out"
if [ ! -s "$out" ]; then
  echo "no screenshot written to $out"
  exit 1
fi
# The grab must show a window, not a blank screen: count distinct colours.
/usr/bin/python3 - "$out" <<'PY'
import sys
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
colours = len(img.getcolors(maxcolors=1 << 24) or [])
print(f"screenshot {sys.argv[1]}: {img.size[0]}x{img.size[1]}, {colours} colours")
sys.exit(0 if colours > 1000 else 1)
PY
