#!/usr/bin/env bash
# ctest check of naf_demo, the main job's program (scripts/run.sh): runs it on one image and
# checks that it says what it did and writes a PNG panel of four tiles (image | low-res PCA |
# bilinear | NAF) at the asked size.
# usage: check_demo.sh NAF_DEMO IMAGE OUT_DIR MAX_SIDE REQUIRED_FILE [naf_demo options...]
# REQUIRED_FILE: the model's ONNX; when it is missing (fetch_models.sh was offline) the check
# exits 77, which ctest reports as skipped.
set -euo pipefail
demo="$1" image="$2" out="$3" max_side="$4" required="$5"
shift 5
if [[ ! -s "$required" ]]; then
  echo "skipped: $required is missing (scripts/fetch_models.sh could not fetch the model)"
  exit 77
fi
rm -rf "$out"
status=0
log="$("$demo" "$image" --out="$out" --max-side="$max_side" --threads=2 "$@")" || status=$?
echo "$log"  # also when the demo failed: its stdout says how far it got
if (( status != 0 )); then echo "FAIL: naf_demo exited with $status"; exit 1; fi
grep -q ' ms, NAF -> .* ms -> ' <<<"$log" || { echo "FAIL: no per-image line in the output"; exit 1; }
shopt -s nullglob
panels=("$out"/*_naf.png)
[[ ${#panels[@]} -eq 1 ]] || { echo "FAIL: expected one panel in $out, found ${#panels[@]}"; exit 1; }
# A PNG: its signature, then the IHDR chunk's big-endian width and height.
[[ "$(od -An -tx1 -N8 "${panels[0]}" | tr -d ' \n')" == "89504e470d0a1a0a" ]] || { echo "FAIL: not a PNG"; exit 1; }
width=$((16#$(od -An -tx1 -j16 -N4 "${panels[0]}" | tr -d ' \n')))
height=$((16#$(od -An -tx1 -j20 -N4 "${panels[0]}" | tr -d ' \n')))
echo "panel ${panels[0]}: ${width}x${height}"
# Four tiles side by side, the longest image side at max_side; labels and borders add a little.
if (( width < 4 * max_side || width > 4 * max_side + 64 || height < max_side / 2 || height > max_side + 64 )); then
  echo "FAIL: a ${width}x${height} panel is not four tiles of at most ${max_side} px"
  exit 1
fi

# One bad image in a folder (1x1, too small for any network) is skipped with its reason; the
# others still get their panels, and the exit status says something failed.
mixed="$out-mixed"
rm -rf "$mixed" "$mixed-out" && mkdir -p "$mixed"
cp "$image" "$mixed/b_good.jpg"
base64 -d > "$mixed/a_tiny.png" <<<'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='
status=0
log="$("$demo" "$mixed" --out="$mixed-out" --max-side="$max_side" --threads=2 "$@" 2>&1)" || status=$?
echo "$log"
(( status == 1 )) || { echo "FAIL: a folder with one bad image exited with $status (expected 1)"; exit 1; }
grep -q 'a_tiny.png: .*skipped' <<<"$log" || { echo "FAIL: the bad image's skip is not reported"; exit 1; }
good=("$mixed-out"/b_good_*_naf.png)
[[ ${#good[@]} -eq 1 ]] || { echo "FAIL: the good image got no panel after the bad one was skipped"; exit 1; }

# "--out DIR" (a space instead of '='): refused, instead of writing to a folder named "true".
status=0
log="$(cd "$mixed" && "$demo" "$image" --out elsewhere 2>&1)" || status=$?
(( status == 2 )) && grep -q "with '='" <<<"$log" || { echo "FAIL: '--out DIR' gave status $status: $log"; exit 1; }
[[ ! -e "$mixed/true" && ! -e "$mixed/elsewhere" ]] || { echo "FAIL: '--out DIR' wrote a folder"; exit 1; }
echo "bad image skipped, '--out DIR' refused"
