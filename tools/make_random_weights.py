#!/usr/bin/env python3
"""Write randomly initialised NAF weights in the cv-naf-weights format (docs/FORMATS.md).

Convolutions keep PyTorch's default initialisation (drawn under the given seed); GroupNorm
scales and shifts are randomised too (gamma ~ U(0.5, 1.5), beta ~ U(-0.2, 0.2)) so that tests
exercise the affine part. The RoPE periods keep their deterministic values.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naf_reference as ref  # noqa: E402


def random_state_dict(seed):
    torch.manual_seed(seed)
    model = ref.NAF()
    gen = torch.Generator().manual_seed(seed + 1000003)
    sd = model.state_dict()
    for name, t in sd.items():
        if ".norm" in name and name.endswith(".weight"):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
        elif ".norm" in name and name.endswith(".bias"):
            t.copy_(torch.rand(t.shape, generator=gen) * 0.4 - 0.2)
    return sd


def write_random_weights(path, seed):
    sd = random_state_dict(seed)
    prov = {"source": "random-init", "trained": False, "seed": int(seed),
            "tool": "tools/make_random_weights.py",
            "init": "torch default conv init; GroupNorm gamma U(0.5,1.5), beta U(-0.2,0.2)",
            "torch_version": torch.__version__.split("+")[0]}
    ref.save_weights(path, sd, prov)
    return sd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if os.path.isdir(args.out):
        ap.error(f"--out {args.out} is a directory")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        ap.error(f"the folder of --out {args.out} does not exist")
    try:
        write_random_weights(args.out, args.seed)
    except (ValueError, OSError) as e:
        raise SystemExit(f"make_random_weights: {e}") from None
    print(f"wrote {args.out} (seed {args.seed})")


if __name__ == "__main__":
    main()
