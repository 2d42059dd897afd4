#!/usr/bin/env python3
"""Write ONNX graphs that contain a NAF node (op type `NAF`, domain `naf`) for cv::dnn.

cv::naf::registerLayers() makes cv::dnn::readNetFromONNX() load such graphs (OpenCV 4.6 looks
custom-domain ops up as "<domain>.<OpType>", here "naf.NAF"). The node takes the graph inputs
`image` (N x 3 x H x W float RGB in [0, 1]) and `features` (N x C x h x w) and writes `upsampled`
(N x C x Ho x Wo). Its weights come either from a file (attribute `weights_path`) or are embedded
as initializers, listed in order by the comma-separated attribute `weight_names` (OpenCV 4.6's
importer cannot read string-list attributes), with the file's `naf_config` JSON text in the string
attribute `naf_config`. `kernel_size` is written only when given (absent: the weights' own).

Usage:
  make_naf_onnx.py --out naf.onnx --image-size 448 448 --features 1 384 28 28 \\
      --output-size 448 448 [--weights W.safetensors [--embed]] [--kernel-size K]
  make_naf_onnx.py --test-set DIR --weights W.safetensors   # the graphs of tests/cpp/test_dnn.cpp
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import naf_reference as ref  # noqa: E402
from safetensors_io import atomic_write, read_header  # noqa: E402

NAF_DOMAIN = "naf"
OPSET = 12
MAX_KERNEL = 63  # what cv::naf accepts (naf_config kernel_size range)


def naf_graph(image_shape, feature_shape, output_size, kernel_size=None, weights=None, weights_path=None,
              required=("output_height", "output_width"), naf_config=None):
    """Build the ModelProto of one NAF node.

    kernel_size: written as the `kernel_size` attribute when given; None keeps the weights' own.
    weights: optional ordered mapping name -> float32 array, embedded as initializers.
    weights_path: optional path written into the `weights_path` attribute (ignored when embedding).
    naf_config: the weights' naf_config JSON text (None: the default config). Its heads_attn must
        divide the feature channels; with `weights` it is written as the `naf_config` attribute
        (a weights file carries its own).
    required: which of the output-size attributes to write (tests drop one on purpose)."""
    for what, shape in (("image shape", image_shape), ("feature shape", feature_shape),
                        ("output size", output_size)):
        if any(int(v) <= 0 for v in shape):
            raise ValueError(f"{what} {[int(v) for v in shape]} must be positive")
    n, c, h, w = (int(v) for v in feature_shape)
    if int(image_shape[0]) != n or int(image_shape[1]) != 3:
        raise ValueError(f"image shape {list(image_shape)} must be [N={n}, 3, H, W]")
    out_h, out_w = (int(v) for v in output_size)
    if out_h < h or out_w < w:
        raise ValueError(f"output size {out_h}x{out_w} is smaller than the features {h}x{w}")
    if kernel_size is not None and not (1 <= kernel_size <= MAX_KERNEL and kernel_size % 2 == 1):
        raise ValueError(f"kernel size {kernel_size} must be odd and in [1, {MAX_KERNEL}]")
    heads = (json.loads(naf_config) if naf_config is not None else ref.DEFAULT_CONFIG)["heads_attn"]
    if c % heads:
        raise ValueError(f"feature channels {c} are not divisible by the {heads} attention heads of the weights")

    attrs = {} if kernel_size is None else {"kernel_size": int(kernel_size)}
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
        if naf_config is not None:
            attrs["naf_config"] = naf_config
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


def read_weights(path):
    """(tensors name -> float32 array in file order, naf_config JSON text exactly as stored) of a
    weights file that ref.load_weights accepts (everything cv::naf checks); ValueError otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path} does not exist" if not os.path.exists(path)
                         else f"weights {path} is not a regular file")
    try:
        sd, _, _ = ref.load_weights(path)
        config_text = read_header(path)[0]["__metadata__"]["naf_config"]
    except OSError as e:
        raise ValueError(f"cannot read weights {path}: {e.strerror or e}") from None
    return {name: t.numpy().astype(np.float32) for name, t in sd.items()}, config_text


def load_weights_for_embedding(path):
    return read_weights(path)[0]


def graph_for_weights(image_shape, feature_shape, output_size, kernel_size=None, weights_path=None, embed=False,
                      **kw):
    """naf_graph for an optional weights file, embedded or referenced by path; the file is loaded
    either way, so a graph cv::naf would refuse is not written."""
    if not weights_path:
        if embed:
            raise ValueError("embedding needs a weights file")
        return naf_graph(image_shape, feature_shape, output_size, kernel_size, **kw)
    tensors, config_text = read_weights(weights_path)
    return naf_graph(image_shape, feature_shape, output_size, kernel_size, naf_config=config_text,
                     weights=tensors if embed else None, weights_path=None if embed else weights_path, **kw)


# Must match tests/cpp/test_dnn.cpp.
TEST_IMAGE = (1, 3, 64, 80)
TEST_FEATURES = (1, 8, 8, 10)
TEST_OUTPUT = (40, 50)
TEST_KERNEL = 5


def write_test_set(out_dir, weights_path):
    os.makedirs(out_dir, exist_ok=True)
    graphs = {
        "naf_weights_path.onnx": graph_for_weights(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                                   weights_path),
        "naf_embedded.onnx": graph_for_weights(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                               weights_path, embed=True),
        "naf_missing_output_size.onnx": graph_for_weights(TEST_IMAGE, TEST_FEATURES, TEST_OUTPUT, TEST_KERNEL,
                                                          weights_path, required=("output_width",)),
    }
    for name, model in graphs.items():
        path = os.path.join(out_dir, name)
        save_atomically(model, path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def check_output_path(path):
    """A file path whose folder exists (ValueError naming the path otherwise)."""
    if os.path.isdir(path):
        raise ValueError(f"output {path} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder} of the output {path} does not exist")


def save_atomically(model, path):
    check_output_path(path)
    atomic_write(path, lambda f: f.write(model.SerializeToString()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-set", metavar="DIR", help="write the graphs used by the C++ tests into DIR")
    ap.add_argument("--weights", help="cv-naf weights (.safetensors); default: none (the library's default)")
    ap.add_argument("--embed", action="store_true", help="embed the weights as initializers")
    ap.add_argument("--out", help="output .onnx path")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--features", type=int, nargs=4, metavar=("N", "C", "h", "w"))
    ap.add_argument("--output-size", type=int, nargs=2, metavar=("Ho", "Wo"))
    ap.add_argument("--kernel-size", type=int, default=None,
                    help="attention window (odd, 1..63); default: the weights' own kernel_size")
    args = ap.parse_args(argv)

    try:
        if args.test_set:
            if not args.weights:
                ap.error("--test-set needs --weights")
            write_test_set(args.test_set, args.weights)
            return 0
        if not (args.out and args.image_size and args.features and args.output_size):
            ap.error("give --out, --image-size, --features and --output-size (or --test-set)")
        if args.embed and not args.weights:
            ap.error("--embed needs --weights")
        check_output_path(args.out)
        n = args.features[0]
        model = graph_for_weights((n, 3, *args.image_size), args.features, args.output_size, args.kernel_size,
                                  args.weights, args.embed)
        save_atomically(model, args.out)
    except (ValueError, OSError) as e:
        print(f"make_naf_onnx: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
