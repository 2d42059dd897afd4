#!/usr/bin/env python3
"""Write ONNX graphs that contain a NAF node (op type `NAF`, domain `naf`) for cv::dnn.

cv::naf::registerLayers() makes cv::dnn::readNetFromONNX() load such graphs (OpenCV 4.6 looks
custom-domain ops up as "<domain>.<OpType>", here "naf.NAF"). The node takes the graph inputs
`image` (N x 3 x H x W float RGB in [0, 1]) and `features` (N x C x h x w) and writes `upsampled`
(N x C x Ho x Wo). Its weights come either from a file (attribute `weights_path`) or are embedded
as initializers, listed in order by the comma-separated attribute `weight_names` (OpenCV 4.6's
importer cannot read string-list attributes).

Usage:
  make_naf_onnx.py --out naf.onnx --image-size 448 448 --features 1 384 28 28 \\
      --output-size 448 448 [--weights W.safetensors [--embed]] [--kernel-size 9]
  make_naf_onnx.py --test-set DIR --weights W.safetensors   # the graphs of tests/cpp/test_dnn.cpp
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_io import load_file  # noqa: E402

NAF_DOMAIN = "naf"
OPSET = 12


def naf_graph(image_shape, feature_shape, output_size, kernel_size=9, weights=None, weights_path=None,
              required=("output_height", "output_width")):
    """Build the ModelProto of one NAF node.

    weights: optional ordered mapping name -> float32 array, embedded as initializers.
    weights_path: optional path written into the `weights_path` attribute (ignored when embedding).
    required: which of the output-size attributes to write (tests drop one on purpose)."""
    n, c, h, w = (int(v) for v in feature_shape)
    if int(image_shape[0]) != n or int(image_shape[1]) != 3:
        raise ValueError(f"image shape {list(image_shape)} must be [N={n}, 3, H, W]")
    out_h, out_w = (int(v) for v in output_size)
    if out_h < h or out_w < w:
        raise ValueError(f"output size {out_h}x{out_w} is smaller than the features {h}x{w}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size {kernel_size} must be odd and >= 1")

    attrs = {"kernel_size": int(kernel_size)}
    if "output_height" in required:
        attrs["output_height"] = out_h
    if "output_width" in required:
        attrs["output_width"] = out_w
    inputs = ["image", "features"]
    initializers = []
    if weights:
        names = list(weights.keys())
        if any("," in name for name in names):
            raise ValueError("weight names must not contain ','")
        attrs["weight_names"] = ",".join(names)
        for name in names:
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(weights[name], dtype=np.float32), name))
        inputs += names
    elif weights_path:
        attrs["weights_path"] = os.path.abspath(weights_path)

    node = helper.make_node("NAF", inputs, ["upsampled"], name="naf", domain=NAF_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "naf_upsampling",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [int(v) for v in image_shape]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("upsampled", TensorProto.FLOAT, [n, c, out_h, out_w])],
        initializer=initializers)
    model = helper.make_model(
        graph, producer_name="cv-naf tools/make_naf_onnx.py",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(NAF_DOMAIN, 1)])
    onnx.checker.check_model(model)
    return model


def load_weights_for_embedding(path):
    tensors, meta = load_file(path)
    if meta.get("format") != "cv-naf-weights":
        raise ValueError(f"{path}: not a cv-naf weights file (metadata format={meta.get('format')!r})")
    return {name: np.asarray(arr, dtype=np.float32) for name, arr in tensors.items()}


# Must match tests/cpp/test_dnn.cpp.
TEST_IMAGE = (1, 3, 64, 80)
TEST_FEATURES = (1, 8, 8, 10)
TEST_OUTPUT = (40, 50)
TEST_KERNEL = 5


def write_test_set(out_dir, weights_path):
    os.makedirs(out_dir, exist_ok=True)
    graphs = {
        "naf_weights_path.onnx": naf_graph(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                           weights_path=weights_path),
        "naf_embedded.onnx": naf_graph(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                       weights=load_weights_for_embedding(weights_path)),
        "naf_missing_output_size.onnx": naf_graph(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                                  weights_path=weights_path, required=("output_width",)),
    }
    for name, model in graphs.items():
        path = os.path.join(out_dir, name)
        save_atomically(model, path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def save_atomically(model, path):
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-set", metavar="DIR", help="write the graphs used by the C++ tests into DIR")
    ap.add_argument("--weights", help="cv-naf weights (.safetensors); default: none (the library's default)")
    ap.add_argument("--embed", action="store_true", help="embed the weights as initializers")
    ap.add_argument("--out", help="output .onnx path")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--features", type=int, nargs=4, metavar=("N", "C", "h", "w"))
    ap.add_argument("--output-size", type=int, nargs=2, metavar=("Ho", "Wo"))
    ap.add_argument("--kernel-size", type=int, default=9)
    args = ap.parse_args(argv)

    if args.test_set:
        if not args.weights:
            ap.error("--test-set needs --weights")
        write_test_set(args.test_set, args.weights)
        return 0
    if not (args.out and args.image_size and args.features and args.output_size):
        ap.error("give --out, --image-size, --features and --output-size (or --test-set)")
    if args.embed and not args.weights:
        ap.error("--embed needs --weights")
    n = args.features[0]
    try:
        model = naf_graph((n, 3, *args.image_size), args.features, args.output_size, args.kernel_size,
                          weights=load_weights_for_embedding(args.weights) if args.embed else None,
                          weights_path=None if args.embed else args.weights)
    except ValueError as e:
        print(f"make_naf_onnx: {e}", file=sys.stderr)
        return 2
    save_atomically(model, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
