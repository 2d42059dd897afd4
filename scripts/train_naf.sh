#!/usr/bin/env bash
# Feature cache -> training -> evaluation, resumable at every stage (docs/TRAINING.md).
# Environment (defaults in brackets):
#   DATA [../shared/data]  RUN [out/train]  N_TRAIN [24]  N_VAL [8]  STEPS [25000]  CROP [16]
#   THREADS [2]  BUILD [build]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}; RUN=${RUN:-out/train}; N_TRAIN=${N_TRAIN:-24}; N_VAL=${N_VAL:-8}
STEPS=${STEPS:-25000}; CROP=${CROP:-16}; THREADS=${THREADS:-2}; BUILD=${BUILD:-build}
PY=/usr/bin/python3
mkdir -p "$RUN"
[ -x "$BUILD/tools/cli/naf_extract_features" ] || { echo "build first: bash scripts/build.sh" >&2; exit 1; }
bash scripts/fetch_models.sh
# training images: photos (urban100, sunhays80, bsds500/train) and segmentation train images, interleaved
if [ ! -f "$RUN/train_list.txt" ]; then
  paste -d '\n' <(ls "$DATA"/photos/urban100/*.jpg) <(ls "$DATA"/photos/sunhays80/*.jpg) \
                <(ls "$DATA"/photos/bsds500/train/*.jpg) <(ls "$DATA"/segmentation/coco128/train/images/*.jpg) <(ls "$DATA"/segmentation/camvid/train/images/*.jpg) \
    | grep -v '^$' | head -n "$N_TRAIN" > "$RUN/train_list.txt"
  ls "$DATA"/photos/bsds500/val/*.jpg | head -n "$N_VAL" > "$RUN/val_list.txt"
fi
"$BUILD/tools/cli/naf_extract_features" --out "$RUN/cache_val" --threads "$THREADS" --list "$RUN/val_list.txt"
"$BUILD/tools/cli/naf_extract_features" --out "$RUN/cache_train" --threads "$THREADS" --list "$RUN/train_list.txt"
$PY tools/train_naf.py --cache "$RUN/cache_train" --val-cache "$RUN/cache_val" --out-dir "$RUN" \
    --steps "$STEPS" --crop "$CROP" --threads "$THREADS" --resume --weights-out "$RUN/naf_trained.safetensors"
[ -f "$RUN/naf_random_seed0.safetensors" ] || $PY tools/make_random_weights.py --seed 0 --out "$RUN/naf_random_seed0.safetensors"
$PY tools/eval_naf.py --cache "$RUN/cache_val" --tool "$BUILD/tools/cli/naf_upsample_cached" --threads "$THREADS" \
    --naf random="$RUN/naf_random_seed0.safetensors" --naf trained="$RUN/naf_trained.safetensors" \
    --report docs/EVALUATION.md
