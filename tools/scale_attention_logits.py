#!/usr/bin/python3
"""Writes a copy of NAF weights whose attention logits are T x the original ones: a diagnostic for
"is the trained attention too broad or too sharp?" (docs/EVALUATION.md, reading of the probe).

The encoder has no residual path, so the last convolution of each branch (the stem when the
config has no blocks, img_layers 0) scales its output, and
x sqrt(T) there scales the queries by sqrt(T); the keys are pooled queries (linear) and RoPE is a
rotation, so every query-key logit is scaled by T: softmax(T * logits), a temperature of 1/T.
Usage: /usr/bin/python3 tools/scale_attention_logits.py IN.safetensors OUT.safetensors --factor T"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naf_reference  # noqa: E402

LAST_CONVS = ("image_encoder.encoder", "image_encoder.sem_encoder")


def scaled_state_dict(sd, factor):
    if not factor > 0 or not math.isfinite(factor):
        raise ValueError(f"--factor must be a positive finite number, got {factor}")
    out = {name: t.clone() for name, t in sd.items()}
    for branch in LAST_CONVS:
        last = max(int(n.split(".")[2]) for n in sd if n.startswith(branch + ".") and n.count(".") >= 3)
        prefix = f"{branch}.{last}.conv2" if last > 0 else f"{branch}.0"  # block 0 is the stem conv
        for part in ("weight", "bias"):
            out[f"{prefix}.{part}"] *= math.sqrt(factor)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--factor", type=float, required=True, help="T: logits are multiplied by T")
    args = ap.parse_args(argv)
    if not args.factor > 0 or not math.isfinite(args.factor):
        ap.error(f"--factor must be a positive finite number, got {args.factor}")
    if not os.path.isfile(args.weights):
        ap.error(f"weights {args.weights} is not a file")
    if os.path.isdir(args.out) or not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        ap.error(f"output {args.out} is a directory or its folder does not exist")
    try:
        sd, cfg, prov = naf_reference.load_weights(args.weights)
        prov = dict(prov, diagnostic=f"attention logits x{args.factor} of {os.path.basename(args.weights)} "
                                     "(tools/scale_attention_logits.py)")
        naf_reference.save_weights(args.out, scaled_state_dict(sd, args.factor), prov, cfg)
    except (ValueError, OSError) as e:
        raise SystemExit(f"scale_attention_logits: {e}") from None
    print(f"wrote {args.out}: logits x{args.factor}")


if __name__ == "__main__":
    main()
