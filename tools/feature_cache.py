"""Python side of the VFM feature cache written by naf_extract_features (tools/cli/feature_cache.hpp).

One safetensors file per image: "image" U8 [S,S,3] BGR, "features_hi" F32 [1,C,S/16,S/16] (the
target), "features_lo" F32 [1,C,S/32,S/32] (the NAF input; absent in --hi-only caches), metadata format
"cv-naf-feature-cache".
"""

import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import SafetensorsError, load_file, save_file  # noqa: E402

CACHE_FORMAT = "cv-naf-feature-cache"


def list_entries(cache_dir):
    """Sorted cache files of a folder (temporary files of an interrupted write excluded)."""
    return sorted(glob.glob(os.path.join(cache_dir, "*.safetensors")))


def load_entry(path):
    """Returns dict(image=[S,S,3] uint8 BGR, hi=[C,h,w] float32, lo=[C,h/2,w/2] float32 or None
    (--hi-only cache), meta=dict)."""
    tensors, meta = load_file(path)
    if meta.get("format") != CACHE_FORMAT:
        raise SafetensorsError(f"{path}: not a {CACHE_FORMAT} file")
    for name in ("image", "features_hi"):
        if name not in tensors:
            raise SafetensorsError(f"{path}: lacks tensor {name!r}")
    image, hi, lo = tensors["image"], tensors["features_hi"], tensors.get("features_lo")
    if lo is None:
        if hi.ndim != 4 or hi.shape[0] != 1:
            raise SafetensorsError(f"{path}: features_hi must be [1,C,h,w], got {hi.shape}")
        return {"image": image, "hi": hi[0], "lo": None, "meta": meta}
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SafetensorsError(f"{path}: image must be U8 [S,S,3], got {image.dtype} {image.shape}")
    if hi.ndim != 4 or lo.ndim != 4 or hi.shape[0] != 1 or lo.shape[0] != 1 or hi.shape[1] != lo.shape[1]:
        raise SafetensorsError(f"{path}: features must be [1,C,h,w] with equal C, got {hi.shape} and {lo.shape}")
    return {"image": image, "hi": hi[0], "lo": lo[0], "meta": meta}


def write_entry(path, image_bgr, features_hi, features_lo, meta=None):
    """Writes an entry in the same layout as naf_extract_features (used by tests and synthetic data)."""
    metadata = {"format": CACHE_FORMAT, "format_version": "1"}
    metadata.update(meta or {})
    save_file(path, {"features_hi": np.asarray(features_hi, np.float32)[None] if np.ndim(features_hi) == 3
                     else np.asarray(features_hi, np.float32),
                     "features_lo": np.asarray(features_lo, np.float32)[None] if np.ndim(features_lo) == 3
                     else np.asarray(features_lo, np.float32),
                     "image": np.ascontiguousarray(image_bgr, np.uint8)}, metadata)
