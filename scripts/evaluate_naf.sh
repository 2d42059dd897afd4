#!/usr/bin/env bash
# The evaluation of docs/EVALUATION.md for the shipped NAF weights (or $WEIGHTS): nearest, bilinear,
# bicubic, guided filter (+ joint bilateral for metrics 1 and 3), NAF with random weights and NAF
# with the trained weights, on
#   1. feature reconstruction: MobileSAM features of 16 held-out photos (photos/bsds500/val);
#   2. linear-probe segmentation: camvid and coco128 (train -> val), several probe seeds; on camvid
#      also from the features of the half-size image upsampled 8x (the input NAF is trained on);
#   3. zero-shot: the same as 1 on a feature source training never saw (mobilesam_trunk, 320 ch);
#   and a diagnostic: the same as 1 from the full-size features pooled 2 x 2 (a coherent input).
# Prints every table and rewrites its section of docs/EVALUATION.md. Feature caches and probe
# scores are kept in $RUN, so a rerun only computes what is missing or changed.
# Environment (defaults in brackets): DATA [../shared/data] RUN [out/eval]
#   WEIGHTS [models/naf/naf_default.safetensors] THREADS [2] BUILD [build] SEEDS ["0 1 2"]
# Cost on the 2-core machine, from scratch: ~40 min of MobileSAM feature extraction (231 images; the
# 141 camvid ones at both sizes) and ~5 min per method and probe table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}; RUN=${RUN:-out/eval}; WEIGHTS=${WEIGHTS:-models/naf/naf_default.safetensors}
THREADS=${THREADS:-2}; BUILD=${BUILD:-build}; SEEDS=${SEEDS:-0 1 2}
PY=/usr/bin/python3
CLI="$BUILD/tools/cli"
for tool in naf_extract_features naf_upsample_cached; do
  [ -x "$CLI/$tool" ] || { echo "evaluate_naf.sh: $CLI/$tool missing: build first (bash scripts/build.sh)" >&2; exit 1; }
done
[ -d "$DATA/photos/bsds500/val" ] || { echo "evaluate_naf.sh: no data in $DATA (see ../shared/data/README.md)" >&2; exit 1; }
[ -f "$WEIGHTS" ] || { echo "evaluate_naf.sh: weights $WEIGHTS not found" >&2; exit 1; }
bash scripts/fetch_models.sh
mkdir -p "$RUN"

# image lists (fixed subsets, so that every run compares the same images)
seg="$DATA/segmentation"
ls "$DATA"/photos/bsds500/val/*.jpg | head -16 > "$RUN/val_list.txt"
ls "$seg"/camvid/train/images/*.jpg | awk 'NR%9==1' | head -40 > "$RUN/camvid_train.txt"
ls "$seg"/camvid/val/images/*.jpg > "$RUN/camvid_val.txt"  # all 101 frames
ls "$seg"/coco128/train/images/*.jpg | awk 'NR%5!=0' | head -40 > "$RUN/coco128_train.txt"
ls "$seg"/coco128/val/images/*.jpg | awk 'NR%3==1' | head -30 > "$RUN/coco128_val.txt"

# feature caches (resumable: finished files are skipped)
"$CLI/naf_extract_features" --out "$RUN/cache_val" --threads "$THREADS" --list "$RUN/val_list.txt"
"$CLI/naf_extract_features" --vfm mobilesam_trunk --out "$RUN/cache_val_trunk" --threads "$THREADS" --list "$RUN/val_list.txt"
# camvid with the half-size features too (the probe from them); coco128 full-size only
for set in camvid_train camvid_val; do
  "$CLI/naf_extract_features" --out "$RUN/$set" --threads "$THREADS" --list "$RUN/$set.txt"
done
for set in coco128_train coco128_val; do
  "$CLI/naf_extract_features" --hi-only --out "$RUN/$set" --threads "$THREADS" --list "$RUN/$set.txt"
done

random="$RUN/naf_random_seed0.safetensors"
[ -f "$random" ] || $PY tools/make_random_weights.py --seed 0 --out "$random"
nafs=(--naf "random seed 0=$random" --naf "trained=$WEIGHTS")

echo "== 1. feature reconstruction"
$PY tools/eval_naf.py --cache "$RUN/cache_val" --tool "$CLI/naf_upsample_cached" --threads "$THREADS" \
    "${nafs[@]}" --report docs/EVALUATION.md
echo "== 2. linear probe"
# probe steps: 1500 for camvid's 11 classes; 600 for coco128's 129 (~4x the cost per step)
for spec in camvid:1500 coco128:600; do
  set=${spec%%:*}; steps=${spec##*:}
  # shellcheck disable=SC2086
  $PY tools/probe_naf.py --dataset "$set" --train-cache "$RUN/${set}_train" --val-cache "$RUN/${set}_val" \
      --tool "$CLI/naf_upsample_cached" --threads "$THREADS" --seeds $SEEDS --probe-steps "$steps" --work-dir "$RUN" \
      --results "$RUN/probe_$set.json" "${nafs[@]}" --report docs/EVALUATION.md
done
echo "== 2b. linear probe, camvid, from the half-size image's features (32 -> 256 cells)"
# shellcheck disable=SC2086
$PY tools/probe_naf.py --dataset camvid --train-cache "$RUN/camvid_train" --val-cache "$RUN/camvid_val" \
    --input lo --scale 8 --tool "$CLI/naf_upsample_cached" --threads "$THREADS" --seeds $SEEDS --work-dir "$RUN" \
    --results "$RUN/probe_camvid_lo.json" "${nafs[@]}" --section linear-probe-camvid-lo --report docs/EVALUATION.md
echo "== 3. zero-shot (mobilesam_trunk)"
$PY tools/eval_naf.py --cache "$RUN/cache_val_trunk" --tool "$CLI/naf_upsample_cached" --threads "$THREADS" \
    "${nafs[@]}" --section zero-shot-mobilesam-trunk --report docs/EVALUATION.md
echo "== diagnostic: reconstruction from pooled features"
$PY tools/eval_naf.py --cache "$RUN/cache_val" --input pooled --tool "$CLI/naf_upsample_cached" --threads "$THREADS" \
    "${nafs[@]}" --section reconstruction-from-pooled --report docs/EVALUATION.md
