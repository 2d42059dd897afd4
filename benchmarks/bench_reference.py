#!/usr/bin/python3
"""Peer timing: our PyTorch re-implementation of the official NAF forward (tools/naf_reference.py)
on the CPU (default) or a CUDA GPU, for one configuration of benchmarks/run_benchmarks.py. Prints
one JSON line: {"config", "threads", "encoder_s": [...], "forward_s": [...], "maxrss_MB"}; with
--device cuda also "device" (GPU name), "tf32", "warmup" and "max_cuda_MB" (peak of
torch.cuda.max_memory_allocated over the timed runs), and on a failure a line with "error" (exit 1;
"out of memory" for torch.cuda.OutOfMemoryError).

mode "official" is the official algorithm: keys/values upsampled with nearest-exact to the output
grid, then the dilated neighborhood window (the pure-PyTorch stand-in for NATTEN, which has no
CPU path). Run with Debian's /usr/bin/python3 (python3-torch) on the CPU; on a GPU machine, e.g.
`python3 benchmarks/bench_reference.py paper --device cuda --tf32 off --reps 5`."""
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
    "dinov2": (518, 518, 384, 37, 37, 518, 518),
}


def set_tf32(enabled):
    """TF32 of cuDNN convolutions and cuBLAS matmuls on or off (PyTorch's cuDNN default is on).
    PyTorch >= 2.9 has fp32_precision settings and warns about the old allow_tf32 flags (mixing
    the two may raise), so the new settings are used where they exist."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision") \
            and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        precision = "tf32" if enabled else "ieee"
        try:
            cudnn_conv.fp32_precision = precision
            torch.backends.cuda.matmul.fp32_precision = precision
            return f"fp32_precision={precision}"
        except Exception:  # noqa: BLE001 -- fall back to the old flags below
            pass
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return f"allow_tf32={enabled}"


def warm_up(model, image, features, out_size, mode, count):
    """Untimed whole forwards."""
    with torch.no_grad():
        for _ in range(count):
            out = model(image, features, out_size, mode=mode)
            del out


def timed_forwards(model, image, features, out_size, mode, reps, sync=lambda: None):
    """Per repetition, the guide encoder alone, then the whole forward: two lists of seconds. sync()
    runs before each clock reading (torch.cuda.synchronize on the GPU, where calls return early)."""
    encoder_s, forward_s = [], []
    with torch.no_grad():
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            model.encode(image, out_size)
            sync()
            encoder_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model(image, features, out_size, mode=mode)
            sync()
            forward_s.append(time.perf_counter() - t0)
            del out
    return encoder_s, forward_s


def run_cuda(args, model, image, features, oh, ow):
    """Timed forwards on the GPU; returns the JSON dict (raises on errors)."""
    dev = torch.device("cuda")
    info = {"config": args.config, "device": torch.cuda.get_device_name(dev), "mode": args.mode,
            "tf32": args.tf32 == "on"}
    info["tf32_setting"] = set_tf32(args.tf32 == "on")
    model = model.to(dev)
    image, features = image.to(dev), features.to(dev)
    warmup = 1 if args.warmup is None else args.warmup
    warm_up(model, image, features, (oh, ow), args.mode, warmup)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    encoder_s, forward_s = timed_forwards(model, image, features, (oh, ow), args.mode, args.reps,
                                          sync=torch.cuda.synchronize)
    info.update({"threads": args.threads, "glibc_heap": args.glibc_heap, "warmup": warmup,
                 "encoder_s": encoder_s, "forward_s": forward_s,
                 "max_cuda_MB": torch.cuda.max_memory_allocated() / 2**20,
                 "maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})
    return info


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", default="off", choices=["on", "off"],
                    help="cuda only: TF32 tensor cores for the convolutions and matmuls")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed forwards before the timed ones (default: 1 on cuda, 0 on cpu)")
    args = ap.parse_args()
    if args.glibc_heap == "keep":
        keep_freed_memory_in_the_heap()

    torch.set_num_threads(args.threads)
    ih, iw, c, h, w, oh, ow = CONFIGS[args.config]
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, ih, iw, generator=gen)
    features = torch.rand(1, c, h, w, generator=gen) * 2 - 1
    model = naf_reference.load_model(args.weights)
    if args.device == "cuda":
        oom = getattr(torch.cuda, "OutOfMemoryError", None)
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            print(json.dumps(run_cuda(args, model, image, features, oh, ow)), flush=True)
            return 0
        except Exception as e:  # one JSON line whatever failed, so that a run of many configs goes on
            is_oom = oom is not None and isinstance(e, oom)
            err = {"config": args.config, "device": "cuda", "mode": args.mode, "tf32": args.tf32 == "on",
                   "error": "out of memory" if is_oom else f"{type(e).__name__}: {e}"[:2000]}
            if is_oom:
                err["detail"] = str(e)[:2000]
            try:
                err["device"] = torch.cuda.get_device_name(0)
                err["max_cuda_MB"] = torch.cuda.max_memory_allocated() / 2**20
            except Exception:
                pass
            print(json.dumps(err), flush=True)
            return 1
    warm_up(model, image, features, (oh, ow), args.mode, args.warmup or 0)
    encoder_s, forward_s = timed_forwards(model, image, features, (oh, ow), args.mode, args.reps)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"config": args.config, "threads": args.threads, "mode": args.mode, "glibc_heap": args.glibc_heap,
                      "encoder_s": encoder_s, "forward_s": forward_s, "maxrss_MB": maxrss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
