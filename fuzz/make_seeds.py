#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (fuzz/corpus/<target>/) with the project's own tools.

  weights           small valid weight files written by tools/naf_reference.py save_weights
                    (tiny configs, with and without data_sha256), damaged variants (truncated
                    data, truncated naf_config, no provenance), and the header of the golden
                    weights tests/data/golden/weights_seed0.safetensors with its data cut off
  onnx_graph        the small graphs of tools/make_naf_onnx.py (weights_path and missing-attribute
                    variants; the embedded-weights graph is 2.6 MB and stays out)
  dnn_layer_params  the NAF node attributes of those graphs in the text form of
                    fuzz_dnn_layer_params.cpp, plus one with every weight embedded, and one node of
                    each VFM layer (NafGelu, NafSoftmax, NafLayerNorm, NafMatMul linear and batched,
                    NafConv1x1)

Usage: /usr/bin/python3 fuzz/make_seeds.py [--out fuzz/corpus]
Deterministic: rerunning rewrites the same files.
"""

import argparse
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import onnx  # noqa: E402
import torch  # noqa: E402

import make_naf_onnx  # noqa: E402
import naf_reference as ref  # noqa: E402
from safetensors_io import serialize  # noqa: E402

GOLDEN_WEIGHTS = os.path.join(ROOT, "tests", "data", "golden", "weights_seed0.safetensors")
TINY = {"dim": 8, "heads_attn": 4, "heads_rope": 1, "kernel_size": 3, "img_layers": 1, "num_groups": 2}
TINY_NO_LAYERS = {"dim": 16, "heads_attn": 2, "heads_rope": 2, "kernel_size": 5, "img_layers": 0, "num_groups": 4}


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def split(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def tiny_weights(tmp, config, seed):
    torch.manual_seed(seed)
    model = ref.NAF(dict(ref.DEFAULT_CONFIG, **config))
    path = os.path.join(tmp, f"tiny_{seed}.safetensors")
    ref.save_weights(path, model.state_dict(), {"source": "random-init", "trained": False, "seed": seed},
                     dict(ref.DEFAULT_CONFIG, **config))
    with open(path, "rb") as f:
        return f.read()


def weights_seeds(out, tmp):
    d = os.path.join(out, "weights")
    tiny = tiny_weights(tmp, TINY, 1)
    write(os.path.join(d, "tiny_valid_sha256"), tiny)
    write(os.path.join(d, "tiny_no_layers_sha256"), tiny_weights(tmp, TINY_NO_LAYERS, 2))
    header, data = split(tiny)
    no_sha = dict(header, __metadata__={k: v for k, v in header["__metadata__"].items() if k != "data_sha256"})
    write(os.path.join(d, "tiny_valid_no_sha256"), join(no_sha, data))
    write(os.path.join(d, "tiny_truncated_data"), tiny[:len(tiny) - 17])
    cfg = header["__metadata__"]["naf_config"]
    truncated_cfg = dict(no_sha, __metadata__=dict(no_sha["__metadata__"], naf_config=cfg[:len(cfg) // 2]))
    write(os.path.join(d, "tiny_truncated_config"), join(truncated_cfg, data))
    no_prov = dict(no_sha, __metadata__={k: v for k, v in no_sha["__metadata__"].items() if k != "naf_provenance"})
    write(os.path.join(d, "tiny_no_provenance"), join(no_prov, data))
    with open(GOLDEN_WEIGHTS, "rb") as f:
        golden = f.read()
    (n,) = struct.unpack("<Q", golden[:8])
    write(os.path.join(d, "golden_header_only"), golden[:8 + n])


def layer_params_text(model):
    node = next(n for n in model.graph.node if n.op_type == "NAF")
    lines = []
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        lines.append(f"{a.name} {value.decode() if isinstance(value, bytes) else value}")
    for init in model.graph.initializer:
        lines.append("@blob " + init.name + " " + " ".join(str(d) for d in init.dims))
    for vi in model.graph.input:
        lines.append("@input " + " ".join(str(d.dim_value) for d in vi.type.tensor_type.shape.dim))
    return ("\n".join(lines) + "\n").encode()


def relative_weights_path(model):
    """Paths relative to the repository root (fuzzers and replays run there), so that the seeds
    do not depend on where the checkout lives."""
    for a in model.graph.node[0].attribute:
        if a.name == "weights_path":
            a.s = os.path.relpath(GOLDEN_WEIGHTS, ROOT).encode()
    return model


def graph_seeds(out, tmp):
    make_naf_onnx.write_test_set(tmp, GOLDEN_WEIGHTS)
    for name in ("naf_weights_path.onnx", "naf_missing_output_size.onnx", "naf_embedded.onnx"):
        model = relative_weights_path(onnx.load(os.path.join(tmp, name)))
        stem = name[:-len(".onnx")]
        write(os.path.join(out, "dnn_layer_params", stem), layer_params_text(model))
        if name != "naf_embedded.onnx":
            write(os.path.join(out, "onnx_graph", stem), model.SerializeToString())
    # A graph with the small shapes the fuzzers run forward on (inputs 1x3x8x10 and 1x8x2x3).
    small = relative_weights_path(make_naf_onnx.naf_graph((1, 3, 8, 10), (1, 8, 2, 3), (6, 7), 3,
                                                          weights_path=GOLDEN_WEIGHTS))
    write(os.path.join(out, "dnn_layer_params", "naf_small"), layer_params_text(small))
    write(os.path.join(out, "onnx_graph", "naf_small"), small.SerializeToString())
    # The VFM layers of tools/vfm/onnx_for_opencv46.py (naf_layers=True), at small shapes.
    vfm_layers = {
        "vfm_gelu": "@type NafGelu\n@input 1 4 7 9\n",
        "vfm_softmax": "@type NafSoftmax\naxis -1\n@input 1 2 7 49\n",
        "vfm_layernorm": "@type NafLayerNorm\neps 1e-5\n@blob gamma 33\n@blob beta 33\n@input 1 5 33\n",
        "vfm_matmul_linear": "@type NafMatMul\n@blob w 33 17\n@blob b 17\n@input 1 5 33\n",
        "vfm_conv1x1": "@type NafConv1x1\n@blob w 6 4 1 1\n@blob b 6\n@input 1 4 5 7\n",
        "vfm_matmul_batched": "@type NafMatMul\n@input 2 3 9 5\n@input 2 3 5 11\n",
    }
    for stem, text in vfm_layers.items():
        write(os.path.join(out, "dnn_layer_params", stem), text.encode())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "fuzz", "corpus"))
    args = ap.parse_args(argv)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        weights_seeds(args.out, tmp)
        graph_seeds(args.out, tmp)
    for target in sorted(os.listdir(args.out)):
        files = os.listdir(os.path.join(args.out, target))
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
