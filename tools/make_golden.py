#!/usr/bin/env python3
"""Write the golden test cases of cv::naf (docs/FORMATS.md) with the PyTorch reference.

Output (default tests/data/golden/): weights_seed0.safetensors (random weights, seed 0) and one
<case>.safetensors per case. Guide images are crops/resizes of the licence-clean photo in data/.
Every case is computed twice (official-style and direct attention); the relative L2 difference
is printed. Deterministic on one machine: two runs there give identical bytes (another thread
count or CPU can change the last bits of the float results).
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import naf_reference as ref  # noqa: E402
from make_random_weights import write_random_weights  # noqa: E402
from safetensors_io import save_file  # noqa: E402

PHOTO = os.path.join(ROOT, "data", "coco_000000000471_bus.jpg")
WEIGHTS_NAME = "weights_seed0.safetensors"

# name, feature (h, w), C, output (Ho, Wo), image (H, W) per batch item, crop boxes, kernel,
#   storage ("full" or "samples"), border sampling ("all" or "band"), random sample count
CASES = [
    dict(name="odd_c4", feat=(29, 37), C=4, out=(233, 300), img=(175, 225), crops=[None],
         kernel=9, store="full",
         desc="odd sizes, non-multiple 29x37 -> 233x300, C=4, guide smaller than the output"),
    dict(name="resize_small_grid_c8", feat=(5, 7), C=8, out=(23, 31), img=(140, 180), crops=[None],
         kernel=9, store="full",
         desc="guide 140x180 > 4x output (guide resized to 92x92: each axis is capped by min(4*Ho, 4*Wo)); low grid 5x7 < kernel 9 (k_eff rule)"),
    dict(name="multiple_c64", feat=(28, 28), C=64, out=(448, 448), img=(112, 112), crops=[None],
         kernel=9, store="samples", border="band", n_random=500,
         desc="28x28 -> 448x448 (x16), C=64, guide 112x112 smaller than the output"),
    dict(name="multiple_c384", feat=(28, 28), C=384, out=(448, 448), img=(160, 160), crops=[None],
         kernel=9, store="samples", border="band", n_random=500,
         desc="28x28 -> 448x448 (x16), C=384 (ViT-S width), guide 160x160"),
    dict(name="nonmultiple_c256", feat=(20, 24), C=256, out=(100, 130), img=(100, 130), crops=[None],
         kernel=9, store="samples", border="all", n_random=500,
         desc="20x24 -> 100x130 (x5, x5.42), C=256, guide the size of the output"),
    dict(name="batch2_c16", feat=(12, 10), C=16, out=(50, 41), img=(60, 48),
         crops=[(0.00, 0.05, 0.55, 0.95), (0.45, 0.10, 1.00, 0.90)],
         kernel=5, store="full",
         desc="batch of 2 different crops, 12x10 -> 50x41, C=16, kernel_size 5"),
]


def crop_resize(photo, size, box=None):
    """Centre-crop (or crop the relative box x0,y0,x1,y1) to the aspect of size=(H,W), then resize."""
    W0, H0 = photo.size
    if box is not None:
        photo = photo.crop((round(box[0] * W0), round(box[1] * H0), round(box[2] * W0), round(box[3] * H0)))
        W0, H0 = photo.size
    h, w = size
    target = w / h
    if W0 / H0 > target:
        cw = round(H0 * target)
        left = (W0 - cw) // 2
        photo = photo.crop((left, 0, left + cw, H0))
    else:
        ch = round(W0 / target)
        top = (H0 - ch) // 2
        photo = photo.crop((0, top, W0, top + ch))
    return np.asarray(photo.resize((w, h), Image.LANCZOS), dtype=np.uint8)


def make_features(n, c, h, w, seed):
    """Deterministic, spatially smooth-ish features: coarse noise + fine noise + a few ramps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, c, max(2, h // 3), max(2, w // 3), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    fine = torch.randn(n, c, h, w, generator=g)
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    phase = torch.rand(1, c, 1, 1, generator=g) * 6.2831853
    ramp = torch.sin(3.0 * yy + 2.0 * xx + phase)
    return (1.5 * smooth + 0.5 * fine + ramp).float().contiguous()


def sample_pixels(n, ho, wo, n_random, border, margin, seed):
    """Sorted unique (n, y, x): random pixels plus pixels of the first/last row and column
    (all of them, or only those within `margin` of an end of the border, where windows shift)."""
    rng = np.random.default_rng(seed)
    pts = [np.stack([rng.integers(0, n, n_random), rng.integers(0, ho, n_random),
                     rng.integers(0, wo, n_random)], 1)]
    xs = np.arange(wo)
    ys = np.arange(ho)
    if border == "band":
        xs = xs[(xs < margin[1]) | (xs >= wo - margin[1])]
        ys = ys[(ys < margin[0]) | (ys >= ho - margin[0])]
    for b in range(n):
        for y in (0, ho - 1):
            pts.append(np.stack([np.full_like(xs, b), np.full_like(xs, y), xs], 1))
        for x in (0, wo - 1):
            pts.append(np.stack([np.full_like(ys, b), ys, np.full_like(ys, x)], 1))
    p = np.concatenate(pts).astype(np.int64)
    lin = np.unique((p[:, 0] * ho + p[:, 1]) * wo + p[:, 2])
    return np.stack([lin // (ho * wo), (lin // wo) % ho, lin % wo], 1).astype(np.int32)


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / max(b.double().norm(), 1e-30))


def build_case(model, photo, case, index):
    ho, wo = case["out"]
    h, w = case["feat"]
    n = len(case["crops"])
    imgs = np.stack([crop_resize(photo, case["img"], box) for box in case["crops"]])  # [N,H,W,3]
    image = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    feats = make_features(n, case["C"], h, w, seed=1000 + index)
    k = case["kernel"]
    # probe: a pixel near the bottom-left border of the last batch item
    probe = (n - 1, ho - 2, 1)
    with torch.no_grad():
        (out_d, pw_d), queries = model(image, feats, (ho, wo), k, mode="direct", probe=probe,
                                       return_queries=True)
        out_o, pw_o = model(image, feats, (ho, wo), k, mode="official", probe=probe)
    err = rel_l2(out_o, out_d)
    perr = rel_l2(pw_o, pw_d)
    tensors = {"image": imgs, "features": feats.numpy()}
    if case["store"] == "full":
        tensors["expected"] = out_o.numpy()
    else:
        d = (ho // h, wo // w)
        margin = ((k // 2 + 1) * d[0], (k // 2 + 1) * d[1])
        idx = sample_pixels(n, ho, wo, case["n_random"], case["border"], margin, seed=2000 + index)
        t = torch.from_numpy(idx.astype(np.int64))
        tensors["sample_index"] = idx
        tensors["expected_samples"] = out_o[t[:, 0], :, t[:, 1], t[:, 2]].contiguous().numpy()
        tensors["query_samples"] = queries[t[:, 0], :, t[:, 1], t[:, 2]].contiguous().numpy()
    tensors["probe_pixel"] = np.array(probe, dtype=np.int32)
    tensors["probe_weights"] = pw_o.contiguous().numpy()
    meta = {
        "output_height": str(ho),
        "output_width": str(wo),
        "kernel_size": str(k),
        "weights": WEIGHTS_NAME,
        "description": case["desc"],
    }
    return tensors, meta, err, perr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "tests", "data", "golden"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = ap.parse_args(argv)
    known = [case["name"] for case in CASES]
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.out_dir, exist_ok=True)
    wpath = os.path.join(args.out_dir, WEIGHTS_NAME)
    write_random_weights(wpath, seed=0)
    model = ref.load_model(wpath)
    photo = Image.open(PHOTO).convert("RGB")
    print(f"{'case':24s} {'rel L2 (official vs direct)':>28s} {'probe rel L2':>14s}  bytes")
    for i, case in enumerate(CASES):
        if args.only and case["name"] not in args.only:
            continue
        tensors, meta, err, perr = build_case(model, photo, case, i)
        path = os.path.join(args.out_dir, case["name"] + ".safetensors")
        save_file(path, tensors, meta)
        print(f"{case['name']:24s} {err:28.3e} {perr:14.3e}  {os.path.getsize(path)}")
    total = sum(os.path.getsize(os.path.join(args.out_dir, f)) for f in os.listdir(args.out_dir))
    print(f"total {total} bytes in {args.out_dir}")


if __name__ == "__main__":
    main()
