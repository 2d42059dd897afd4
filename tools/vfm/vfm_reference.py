#!/usr/bin/env python3
"""Reference features of a registered VFM on one photo, from the ORIGINAL ONNX graph evaluated
with our numpy evaluator (onnx_numpy.py): what cv::dnn's run of the converted graph is checked
against (tests/cpp/test_vfm.cpp).

Preprocessing follows the registry entry (models/vfm/<name>.json), written here independently of
the C++ runner: longest side scaled to input.size (cv2.resize, INTER_LINEAR when enlarging,
INTER_AREA when shrinking, size rounded to nearest), colour order, (x - mean) / std, zero padding
bottom/right in normalized units. The output file (safetensors) holds `input` (1x3xSxS float32),
`features` (the full output grid) and metadata (image, model, valid cells).

Usage:
  vfm_reference.py --model mobilesam --original models/cache/mobilesam_encoder_original.onnx \\
      --image data/coco_000000000471_bus.jpg --out ref.safetensors
When --original does not exist (model not fetched: offline), prints why and exits 0 without
writing; the C++ test then skips. An existing --out computed from the same inputs (sha256 of the
model, image, registry entry and evaluator sources, kept in its metadata) is reused.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import onnx_numpy  # noqa: E402
from safetensors_io import read_header, save_file  # noqa: E402


def input_key(paths):
    """sha256 over everything the reference depends on: a finished file is reused when it matches."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_spec(name, registry=None):
    with open(os.path.join(registry or os.path.join(ROOT, "models", "vfm"), name + ".json")) as f:
        return json.load(f)


def preprocess(bgr, spec):
    """(1x3xSxS float32 blob, (valid_w, valid_h) cells)."""
    import cv2  # python3-opencv, for imread and resize only

    inp = spec["input"]
    size, stride = int(inp["size"]), int(spec["output"]["stride"])
    h, w = bgr.shape[:2]
    if inp["size_policy"] == "longest_side_pad":
        scale = size / max(w, h)
        nw, nh = min(size, max(1, int(np.floor(w * scale + 0.5)))), min(size, max(1, int(np.floor(h * scale + 0.5))))
    else:
        nw, nh = size, size
    shrink = nw < w or nh < h
    resized = bgr if (nw, nh) == (w, h) else cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    pixels = resized[:, :, ::-1] if inp["color_order"] == "RGB" else resized
    mean = np.array(inp["mean"], np.float64)
    std = np.array(inp["std"], np.float64)
    blob = np.zeros((1, 3, size, size), np.float32)
    blob[0, :, :nh, :nw] = ((pixels.astype(np.float64) - mean) / std).transpose(2, 0, 1)
    return blob, (-(-nw // stride), -(-nh // stride))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilesam", help="registry name (models/vfm/<name>.json)")
    parser.add_argument("--registry", help="registry folder (default: models/vfm of this tree)")
    parser.add_argument("--original", required=True, help="the original (unconverted) ONNX graph")
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra", action="append", default=[], metavar="TENSOR",
                        help="also save this intermediate value of the original graph as 'extra:TENSOR' "
                             "(e.g. /Transpose_output_0, MobileSAM's trunk before the neck)")
    args = parser.parse_args()
    if not os.path.exists(args.original):
        print(f"vfm_reference: {args.original} is missing (model not fetched: run scripts/fetch_models.sh); "
              "no reference written, the tests that need it skip")
        return 0
    import cv2

    spec = load_spec(args.model, args.registry)
    registry = args.registry or os.path.join(ROOT, "models", "vfm")
    key = input_key([args.original, args.image, os.path.join(registry, args.model + ".json"),
                     os.path.join(HERE, "onnx_numpy.py"), os.path.abspath(__file__)]) + "".join(
                         f";extra={e}" for e in args.extra)
    if os.path.exists(args.out):
        try:
            if read_header(args.out)[0].get("__metadata__", {}).get("inputs_sha256") == key:
                print(f"vfm_reference: {args.out} is up to date (same model, image, registry entry and evaluator)")
                return 0
        except Exception:  # unreadable: recompute
            pass
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"vfm_reference: cannot read image {args.image}")
    blob, (cells_w, cells_h) = preprocess(bgr, spec)
    model = onnx.load(args.original)
    start = time.time()
    outputs = onnx_numpy.evaluate(model, {model.graph.input[0].name: blob}, keep=args.extra)
    name = spec["output"].get("name") or model.graph.output[0].name
    features = np.ascontiguousarray(outputs[name], dtype=np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".part"
    tensors = {"input": blob, "features": features}
    tensors.update({f"extra:{e}": np.ascontiguousarray(outputs[e], dtype=np.float32) for e in args.extra})
    save_file(tmp, tensors,
              {"model": args.model, "image": os.path.abspath(args.image), "valid_cells_w": str(cells_w),
               "valid_cells_h": str(cells_h), "evaluator": "tools/vfm/onnx_numpy.py",
               "inputs_sha256": key})
    os.replace(tmp, args.out)
    print(f"vfm_reference: {args.model} on {args.image}: features {list(features.shape)}, valid cells "
          f"{cells_w}x{cells_h}, numpy evaluation {time.time() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
