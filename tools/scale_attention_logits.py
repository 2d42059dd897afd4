#!/usr/bin/python3
"""Writes a copy of NAF weights whose attention logits are T x the original ones: a diagnostic for
"is the trained attention too broad or too sharp?" (docs/EVALUATION.md, reading of the probe).

The encoder has no residual path, so the last convolution of each branch scales its output, and
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
        for part in ("weight", "bias"):
            out[f"{branch}.{last}.conv2.{part}"] *= math.sqrt(factor)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--factor", type=float, required=True, help="T: logits are multiplied by T")
    args = ap.parse_args()
    sd, cfg, prov = naf_reference.load_weights(args.weights)
    prov = dict(prov, diagnostic=f"attention logits x{args.factor} of {os.path.basename(args.weights)} "
                                 "(tools/scale_attention_logits.py)")
    naf_reference.save_weights(args.out, scaled_state_dict(sd, args.factor), prov, cfg)
    print(f"wrote {args.out}: logits x{args.factor}")


if __name__ == "__main__":
    main()
