#!/usr/bin/env python3
"""How far reduced-precision storage and arithmetic move the NAF output, before anyone writes
GPU kernels for it (docs/PERFORMANCE.md, GPU next steps: BF16 activations for 2016x2016).

Runs the reference forward (tools/naf_reference.py) in float32 and in emulated variants, and
prints the relative L2 error of each variant's output against the float32 one:

- tf32-conv:        convolution inputs and weights rounded to TF32 (10-bit mantissa), products
                    accumulated in float32: what the CUDA path's TF32 mode does.
- bf16-all:         every tensor the encoder stores (guide, convolution outputs, GroupNorm+SiLU
                    outputs), the convolution weights, the queries and the keys in bfloat16;
                    arithmetic and accumulation in float32.
- bf16-queries:     only the queries and keys in bfloat16 (the attention's inputs).
- bf16-activations: only the GroupNorm+SiLU outputs and the weights of the convolutions that read
                    them in bfloat16 (BF16 tensor cores inside the blocks); the stems, the
                    convolution outputs, queries and keys stay float32.
- fp16-activations: the same in float16 (more mantissa, less range).
- fp16-all:         bf16-all in float16.
- fp16-encoder:     every tensor the encoder stores (guide, convolution outputs, GroupNorm+SiLU
                    outputs) and the convolution weights in float16, the queries and keys in
                    float32: a float16 encoder on cuDNN's legacy API, whose convolutions read and
                    write one type (float16 storage, float32 accumulation).
- fp16-encoder-tf32-last: fp16-encoder, except the last convolution of each branch (the one the
                    queries come from): its input (the last GroupNorm+SiLU output) and output stay
                    float32 and its operands are rounded to TF32 (CUDA MathMode::FP16).

The emulation rounds at the points the CUDA path stores tensors; it does not model summation
order. --random-weights uses tools/make_random_weights.py's weights, drawn like naf_cuda_bench's
(uniform +-1/sqrt(fan_in), GroupNorm gamma in [0.5, 1.5), beta in [-0.2, 0.2)), and inputs drawn
like its inputs (image uniform [0, 1), features uniform [-1, 1)), to compare with the error the
GPU measured. Images: the first photos of ../shared/data/photos when present, else a seeded synthetic
image. Features: seeded random, either independent per cell ("random") or smooth (random 7x7,
bilinearly enlarged: spatially correlated like a VFM's).

    /usr/bin/python3 tools/reduced_precision_study.py [--size 448 --low 28 --images 3]
"""
import argparse
import contextlib
import glob
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naf_reference  # noqa: E402
from make_golden import rel_l2  # noqa: E402
from make_random_weights import random_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def round_bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


def round_fp16(x):
    return x.to(torch.float16).to(torch.float32)


def round_tf32(x):
    """Round to nearest TF32 (1 sign, 8 exponent, 10 mantissa bits), ties away from zero."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF
    return rounded.view(torch.float32)


def identity(x):
    return x


def rounding(conv=identity, silu=identity, conv_out=identity, guide=identity, qk=identity, stems=True, last=None):
    """Rounding of: convolution operands (weights and inputs), GroupNorm+SiLU outputs, convolution
    outputs, the guide, queries and keys; stems=False leaves the stems' operands in float32.
    last: a rounding (conv, silu, conv_out used) for the last convolution of each branch instead."""
    return {"conv": conv, "silu": silu, "conv_out": conv_out, "guide": guide, "qk": qk, "stems": stems, "last": last}


VARIANTS = {
    "tf32-conv": rounding(conv=round_tf32),
    "bf16-all": rounding(conv=round_bf16, silu=round_bf16, conv_out=round_bf16, guide=round_bf16, qk=round_bf16),
    "bf16-queries": rounding(qk=round_bf16),
    "bf16-activations": rounding(conv=round_bf16, silu=round_bf16, stems=False),
    "fp16-activations": rounding(conv=round_fp16, silu=round_fp16, stems=False),
    "fp16-all": rounding(conv=round_fp16, silu=round_fp16, conv_out=round_fp16, guide=round_fp16, qk=round_fp16),
    "fp16-encoder": rounding(conv=round_fp16, silu=round_fp16, conv_out=round_fp16, guide=round_fp16),
    "fp16-encoder-tf32-last": rounding(conv=round_fp16, silu=round_fp16, conv_out=round_fp16, guide=round_fp16,
                                       last=rounding(conv=round_tf32)),
}


def last_convolutions(model):
    """The last convolution of each encoder branch (a Sequential that starts with a stem on RGB)."""
    last = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Sequential) and isinstance(module[0], torch.nn.Conv2d) \
                and module[0].in_channels == 3:
            last.add([m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1])
    return last


@contextlib.contextmanager
def emulated(model, spec):
    """Rounds convolution operands and stored encoder tensors while inside the block. A block's
    GroupNorm+SiLU output feeds only the next convolution, so its rounding is applied to that
    convolution's input (the last convolution of a branch may round differently)."""
    handles, saved = [], []
    last = last_convolutions(model) if spec["last"] else set()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            own = spec["last"] if module in last else spec
            stem = module.in_channels == 3
            operand = identity if stem and not spec["stems"] else own["conv"]
            before = spec["guide"] if stem else own["silu"]
            saved.append((module, module.weight.data.clone()))
            module.weight.data = operand(module.weight.data)
            handles.append(module.register_forward_pre_hook(
                lambda m, inputs, operand=operand, before=before: (operand(before(inputs[0])),)))
            handles.append(module.register_forward_hook(lambda m, inputs, out, r=own["conv_out"]: r(out)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module, weight in saved:
            module.weight.data = weight


def forward(model, image, features, size, name=None):
    """The output with the named variant's rounding (float32 throughout without a name)."""
    spec = VARIANTS[name] if name else rounding()
    cfg = model.config
    with torch.no_grad(), emulated(model, spec):
        queries = spec["qk"](model.encode(image, size))
        keys = spec["qk"](F.adaptive_avg_pool2d(queries, features.shape[-2:]))
        return naf_reference.attend(queries, keys, features, cfg["kernel_size"], cfg["heads_attn"], "direct")


def load_images(count, size):
    paths = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "photos", "*", "*.jpg")))[:count]
    images = []
    if paths:
        from PIL import Image

        for path in paths:
            rgb = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
            images.append((os.path.relpath(path, os.path.join(ROOT, "..", "shared", "data")),
                           torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]))
    else:
        gen = torch.Generator().manual_seed(0)
        ramp = torch.linspace(0, 1, size)
        base = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                            0.5 * torch.ones(size, size)])
        images.append(("synthetic", (base + 0.1 * torch.rand(3, size, size, generator=gen)).clamp(0, 1)[None]))
    return images


FEATURE_KINDS = ("random", "smooth")


def make_features(kind, channels, low, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(1, channels, low, low, generator=gen)
    if kind == "smooth":
        coarse = torch.randn(1, channels, 7, 7, generator=gen)
        return F.interpolate(coarse, size=(low, low), mode="bilinear", align_corners=False)
    if kind == "uniform":  # naf_cuda_bench's features
        return torch.rand(1, channels, low, low, generator=gen) * 2 - 1
    raise ValueError(f"unknown feature kind {kind!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=os.path.join(ROOT, "models", "naf", "naf_default.safetensors"))
    parser.add_argument("--size", type=int, default=448, help="image and output size (square)")
    parser.add_argument("--low", type=int, default=28, help="feature grid size (square)")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--features", default=",".join(FEATURE_KINDS),
                        help=f"comma-separated: {', '.join(FEATURE_KINDS)} (ignored with --random-weights)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--random-weights", action="store_true",
                        help="weights and inputs drawn like naf_cuda_bench's instead of --weights and photos")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    kinds = args.features.split(",")
    if not args.random_weights and any(k not in FEATURE_KINDS for k in kinds):
        parser.error(f"unknown feature kinds in {kinds}; known: {', '.join(FEATURE_KINDS)}")
    torch.set_num_threads(os.cpu_count() or 1)
    size = (args.size, args.size)
    if args.random_weights:
        model = naf_reference.NAF()
        model.load_state_dict(random_state_dict(0))
        gen = torch.Generator().manual_seed(1)
        images = [("uniform random", torch.rand(1, 3, args.size, args.size, generator=gen))]
        kinds = ["uniform"]
        weights_name = "make_random_weights.py seed 0 (drawn like naf_cuda_bench's)"
    else:
        model = naf_reference.load_model(args.weights)
        images = load_images(args.images, args.size)
        weights_name = os.path.basename(args.weights)
    feature_sets = [(kind, make_features(kind, args.channels, args.low, seed=1)) for kind in kinds]
    rows = []
    for name, image in images:
        for kind, features in feature_sets:
            reference = forward(model, image, features, size)
            errors = [rel_l2(forward(model, image, features, size, v), reference) for v in variants]
            rows.append((name, kind, errors))
            print(f"{name} / {kind}: " + ", ".join(f"{v} {e:.2e}" for v, e in zip(variants, errors)),
                  file=sys.stderr, flush=True)
    print(f"Relative L2 against float32, {args.size}x{args.size} output from {args.low}x{args.low}x"
          f"{args.channels} features, weights {weights_name}:\n")
    print("| image | features | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for name, kind, errors in rows:
        print(f"| {name} | {kind} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
