#!/usr/bin/python3
"""Peer timing: our PyTorch re-implementation of the official NAF forward (tools/naf_reference.py)
on the CPU, for one configuration of benchmarks/run_benchmarks.py. Prints one JSON line:
{"config", "threads", "encoder_s": [...], "forward_s": [...], "maxrss_MB"}.

mode "official" is the official algorithm: keys/values upsampled with nearest-exact to the output
grid, then the dilated neighborhood window (the pure-PyTorch stand-in for NATTEN, which has no
CPU path). Run with Debian's /usr/bin/python3 (python3-torch)."""
import argparse
import json
import os
import resource
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import naf_reference  # noqa: E402
from train_naf import keep_freed_memory_in_the_heap  # noqa: E402

# name: (image H, W, channels, low h, w, out H, W) -- same as kConfigs in bench_naf.cpp
CONFIGS = {
    "tiny": (64, 64, 16, 8, 8, 64, 64),
    "paper": (448, 448, 384, 28, 28, 448, 448),
    "x32": (896, 896, 384, 28, 28, 896, 896),
    "x72": (2016, 2016, 384, 28, 28, 2016, 2016),
    "mobilesam": (1024, 1024, 256, 64, 64, 1024, 1024),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--weights", default=os.path.join(ROOT, "tests/data/golden/weights_seed0.safetensors"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--mode", default="official", choices=["official", "direct"])
    ap.add_argument("--glibc-heap", default="keep", choices=["keep", "default"],
                    help="keep: freed blocks stay in the heap (mallopt), so the peer does not page-fault "
                         "its large temporaries afresh on every op (paper: 217 s -> 24 s on the build VM); default: "
                         "glibc's own thresholds")
    args = ap.parse_args()
    if args.glibc_heap == "keep":
        keep_freed_memory_in_the_heap()

    torch.set_num_threads(args.threads)
    ih, iw, c, h, w, oh, ow = CONFIGS[args.config]
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, ih, iw, generator=gen)
    features = torch.rand(1, c, h, w, generator=gen) * 2 - 1
    model = naf_reference.load_model(args.weights)
    encoder_s, forward_s = [], []
    with torch.no_grad():
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model.encode(image, (oh, ow))
            encoder_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model(image, features, (oh, ow), mode=args.mode)
            forward_s.append(time.perf_counter() - t0)
            del out
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"config": args.config, "threads": args.threads, "mode": args.mode, "glibc_heap": args.glibc_heap,
                      "encoder_s": encoder_s, "forward_s": forward_s, "maxrss_MB": maxrss}))


if __name__ == "__main__":
    main()
