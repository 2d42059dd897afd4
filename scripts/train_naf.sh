#!/usr/bin/env bash
# Trains NAF weights the way the shipped models/naf/naf_default.safetensors were trained
# (docs/TRAINING.md), in four stages:
#   1. MobileSAM features of 48 training images, pairs 512 px -> 1024 px image, every crop its own
#      RoPE frame (the first shipped weights, $RUN/naf_trained.safetensors, 2600 steps);
#   2. from those weights, the same pairs with every crop in the RoPE frame of its image, frames
#      up to 2x the image ($RUN/stage2/naf_trained.safetensors, 1200 steps);
#   3. from stage 2, the same recipe on 326 more training images (scripts/train_naf_more_images.txt:
#      bsds500/train, coco128/train, the probe's camvid train images, urban100/sunhays80 photos)
#      ($RUN/stage3/naf_trained.safetensors, 800 steps);
#   4. from stage 3, the same recipe on every other training image of the data folder
#      (scripts/train_naf_rest_images.txt) ($RUN/stage4/naf_trained.safetensors, STEPS4 steps).
# Every stage resumes where it stopped (finished cache files are skipped, training continues
# from $RUN/checkpoint.pt), so it can run across sessions with MAX_MINUTES.
# Then evaluate with: WEIGHTS=$RUN/stage4/naf_trained.safetensors bash scripts/evaluate_naf.sh
# Environment (defaults in brackets):
#   DATA [../shared/data]  RUN [out/train]  STEPS [2600]  CROP [12]  LR [4e-4]  MAX_MINUTES [0: no limit]
#   STEPS2 [1200]  LR2 [4e-4]  STEPS3 [800]  LR3 [4e-4]  STEPS4 [1200]  LR4 [4e-4]
#   THREADS [2]  BUILD [build]  DEVICE [cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}; RUN=${RUN:-out/train}; STEPS=${STEPS:-2600}; STEPS2=${STEPS2:-1200}; LR2=${LR2:-4e-4}; STEPS3=${STEPS3:-800}; LR3=${LR3:-4e-4}; STEPS4=${STEPS4:-1200}; LR4=${LR4:-4e-4}; CROP=${CROP:-12}; LR=${LR:-4e-4}
MAX_MINUTES=${MAX_MINUTES:-0}; THREADS=${THREADS:-2}; BUILD=${BUILD:-build}; DEVICE=${DEVICE:-cpu}
PY=/usr/bin/python3
[ -x "$BUILD/tools/cli/naf_extract_features" ] || { echo "build first: bash scripts/build.sh" >&2; exit 1; }
bash scripts/fetch_models.sh
mkdir -p "$RUN"
# training images (never the evaluation images): 16 photos of urban100/sunhays80 (interleaved,
# every 5th / 4th), 24 of bsds500/train (every 8th), 8 of coco128/train (every 12th)
{
  paste -d '\n' <(ls "$DATA"/photos/urban100/*.jpg | awk 'NR%5==1') <(ls "$DATA"/photos/sunhays80/*.jpg | awk 'NR%4==1') \
    | grep -v '^$' | head -16
  ls "$DATA"/photos/bsds500/train/*.jpg | awk 'NR%8==1' | head -24
  ls "$DATA"/segmentation/coco128/train/images/*.jpg | awk 'NR%12==1' | head -8
} > "$RUN/train_list.txt"
ls "$DATA"/photos/bsds500/val/*.jpg | head -16 > "$RUN/val_list.txt"
"$BUILD/tools/cli/naf_extract_features" --out "$RUN/cache_train" --threads "$THREADS" --list "$RUN/train_list.txt"
"$BUILD/tools/cli/naf_extract_features" --out "$RUN/cache_val" --threads "$THREADS" --list "$RUN/val_list.txt"
$PY tools/train_naf.py --cache "$RUN/cache_train" --val-cache "$RUN/cache_val" --out-dir "$RUN" \
    --low-res image --rope-frame crop \
    --steps "$STEPS" --batch 4 --crop "$CROP" --lr "$LR" --lr-schedule cosine --warmup 100 --min-lr 1e-5 \
    --threads "$THREADS" --device "$DEVICE" --max-minutes "$MAX_MINUTES" --resume \
    --weights-out "$RUN/naf_trained.safetensors"

# A stage writes its weights also when --max-minutes stops it: the next one starts only from a
# finished run.  usage: require_finished WEIGHTS STEPS NAME
require_finished() {
  $PY -c "import sys; sys.path.insert(0, 'tools'); import naf_reference as r
sys.exit(0 if r.load_weights('$1')[2].get('steps', 0) >= $2 else 1)" 2>/dev/null \
    || { echo "train_naf.sh: $3 has not reached $2 steps ($1): run again to resume it" >&2; exit 1; }
}
# Stages 2 to 4: fine-tuning with each crop in the RoPE frame of its image (frames up to 2x the
# image).  usage: fine_tune OUT_DIR INIT_WEIGHTS SEED STEPS LR CACHE...
fine_tune() {
  local out=$1 init=$2 seed=$3 steps=$4 lr=$5
  shift 5
  $PY tools/train_naf.py --cache "$@" --val-cache "$RUN/cache_val" --out-dir "$out" \
      --init-weights "$init" --low-res image --rope-frame image --rope-frame-scale-max 2 --seed "$seed" \
      --steps "$steps" --batch 4 --crop "$CROP" --lr "$lr" --lr-schedule cosine --warmup 50 --min-lr 1e-5 \
      --threads "$THREADS" --device "$DEVICE" --max-minutes "$MAX_MINUTES" --resume \
      --weights-out "$out/naf_trained.safetensors"
}
# The feature cache of a committed image list (paths relative to $DATA, '#' lines are comments).
# usage: extract_listed LIST_FILE CACHE_DIR
extract_listed() {
  grep -v '^#' "$1" | sed "s|^|$DATA/|" > "$2.list.txt"
  "$BUILD/tools/cli/naf_extract_features" --out "$2" --threads "$THREADS" --list "$2.list.txt"
}

# stage 2: fine-tune stage 1 on the same images
require_finished "$RUN/naf_trained.safetensors" "$STEPS" "stage 1"
fine_tune "$RUN/stage2" "$RUN/naf_trained.safetensors" 1 "$STEPS2" "$LR2" "$RUN/cache_train"

# stage 3: the same recipe as stage 2 on 326 more images (never an evaluation image: bsds500/val
# and the camvid/coco128 val images stay out; the probe's train images are in, labels unread)
require_finished "$RUN/stage2/naf_trained.safetensors" "$STEPS2" "stage 2"
extract_listed scripts/train_naf_more_images.txt "$RUN/cache_more"
fine_tune "$RUN/stage3" "$RUN/stage2/naf_trained.safetensors" 2 "$STEPS3" "$LR3" "$RUN/cache_train" "$RUN/cache_more"

# stage 4: the same recipe on the rest of the training images: every camvid/coco128 train image,
# bsds500/train image and urban100/sunhays80 photo not used above (still no evaluation image)
require_finished "$RUN/stage3/naf_trained.safetensors" "$STEPS3" "stage 3"
extract_listed scripts/train_naf_rest_images.txt "$RUN/cache_rest"
fine_tune "$RUN/stage4" "$RUN/stage3/naf_trained.safetensors" 3 "$STEPS4" "$LR4" \
    "$RUN/cache_train" "$RUN/cache_more" "$RUN/cache_rest"
