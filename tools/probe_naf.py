#!/usr/bin/env python3
"""Linear-probe semantic segmentation on upsampled VFM features: metric 2 of docs/EVALUATION.md.

Protocol (the official NAF one, at this machine's scale): the VFM is frozen; its features of
each image (cache "features_hi", e.g. MobileSAM 64 x 64 at 1024 px) are upsampled K times
(default 4: 256 x 256) by every method in C++ (`naf_upsample_cached --input hi`, i.e.
cv::naf::upsampleWith), with the guide image at the output size. A linear probe (a 1x1 conv:
per-pixel standardisation + linear layer, cross-entropy) is trained on pixels of the train
images and evaluated on every pixel of the val images at the same output size; mIoU is the
mean IoU over the classes present in the val labels, the ignore label excluded. Every method
uses the same pixels, seeds and probe settings. The probe is trained once per seed (the seed
picks the training pixels, the initialisation and the batch order): mean and spread over seeds.

Labels: `<set>/<split>/labels/<name>.png` beside `<set>/<split>/images/<name>.jpg` (the
cache's "source"), cropped like the image (cache "crop_xywh") and resized (nearest) to the
output size. Data sets: camvid (classes 0-10, 11 = void ignored) and coco128 (COCO panoptic
category ids, 0 = unlabeled ignored).

  probe_naf.py --dataset camvid --train-cache out/probe/camvid_train --val-cache out/probe/camvid_val \
      --tool build/tools/cli/naf_upsample_cached --naf trained=models/naf/naf_mobilesam.safetensors \
      --report docs/EVALUATION.md
"""

import argparse
import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_naf import parse_naf_specs, write_report  # noqa: E402
from feature_cache import list_entries, load_entry  # noqa: E402
from safetensors_io import load_file, read_header  # noqa: E402
from train_naf import keep_freed_memory_in_the_heap  # noqa: E402

import cv2  # noqa: E402  (Debian python3-opencv; only imread/resize)

BASELINES = ["nearest", "bilinear", "bicubic", "guided"]


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------

def dataset_classes(dataset, data_root=None):
    """(class ids in label files, ignore id, names) of a data set."""
    if dataset == "camvid":
        names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                 "Pedestrian", "Bicyclist"]
        return list(range(11)), 11, names
    if dataset == "coco128":
        yaml_path = os.path.join(data_root, "classes.yaml") if data_root else None
        ids, names = [], []
        if yaml_path and os.path.exists(yaml_path):
            in_classes = False
            for line in open(yaml_path):
                if line.startswith("classes:"):
                    in_classes = True
                    continue
                m = re.match(r"^\s+(\d+):\s*(.+?)\s*$", line) if in_classes else None
                if m and int(m.group(1)) != 0:
                    ids.append(int(m.group(1)))
                    names.append(m.group(2))
        if not ids:  # label values are 8-bit: every non-zero id is a class
            ids, names = list(range(1, 256)), [str(i) for i in range(1, 256)]
        return ids, 0, names
    raise ValueError(f"unknown data set {dataset!r} (camvid or coco128)")


def label_path_for(source):
    """.../<split>/images/<name>.<ext> -> .../<split>/labels/<name>.png"""
    folder, name = os.path.split(source)
    parent, leaf = os.path.split(folder)
    if leaf != "images":
        raise ValueError(f"{source}: expected an image inside an 'images' folder")
    return os.path.join(parent, "labels", os.path.splitext(name)[0] + ".png")


def load_label(meta, size, class_ids, ignore):
    """Label map [size, size] of contiguous class indices (0..K-1), ignore -> -1."""
    path = label_path_for(meta["source"])
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read label {path}")
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"{path}: labels must be single-channel integers, got {raw.dtype} shape {raw.shape}")
    text = meta.get("crop_xywh")
    try:
        x, y, w, h = (int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{path}: crop_xywh {text!r} of its cache entry is not 'x,y,w,h' integers") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > raw.shape[1] or y + h > raw.shape[0]:
        raise ValueError(f"{path}: crop {x},{y},{w},{h} empty or outside the label map {raw.shape}")
    crop = cv2.resize(raw[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_NEAREST)
    # a table covering every value present (16-bit PNGs go past 255): unknown values map to -1
    lut = np.full(max(int(crop.max()), max(class_ids, default=0)) + 1, -1, np.int64)
    lut[np.asarray(class_ids, np.int64)] = np.arange(len(class_ids))
    out = lut[crop.astype(np.int64)]
    unknown = (out < 0) & (crop != ignore)
    if unknown.any():
        raise ValueError(f"{path}: label values {sorted(set(crop[unknown].tolist()))[:8]} are not classes")
    return out


@functools.lru_cache(maxsize=None)
def cached_label(cache_file, size, class_ids, ignore):
    """load_label for a cache entry, read once per run (every method scores the same images): only
    the entry's header is read, not its tensors. class_ids: a tuple (hashable)."""
    meta = read_header(cache_file)[0].get("__metadata__", {})
    return load_label(meta, size, class_ids, ignore)


# ----------------------------------------------------------------------------------------------
# Upsampled features from the C++ tool
# ----------------------------------------------------------------------------------------------

def upsampled_maps(tool, method, files, scale, weights=None, threads=2, chunk=8, work_dir=None, guide_scale=1,
                   append_guide_rgb=False, feature_input="hi"):
    """Yields (file, upsampled [C, H, W] float32) for every cache file, computed by naf_upsample_cached
    in chunks (a 256-channel 256 x 256 map is 64 MB): feature_input "hi" (features of the full-size
    image) or "lo" (of the half-size image, the NAF input of training) upsampled scale x its grid.
    The guide is the cached image resized to guide_scale x the output side. append_guide_rgb (a
    diagnostic): 3 more channels, the cached image at the output size (area resize), RGB in [0, 1],
    so the probe can read the colours directly."""
    for i in range(0, len(files), chunk):
        part = files[i:i + chunk]
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            first = load_entry(part[0])
            if first[feature_input] is None:
                raise ValueError(f"{part[0]}: no features_{feature_input} (a --hi-only cache has only features_hi)")
            out_side = scale * first[feature_input].shape[-1]
            cmd = [tool, "--method", method, "--input", feature_input, "--scale", str(scale), "--guide-size",
                   str(guide_scale * out_side), "--out", tmp, "--threads", str(threads)]
            if weights:
                cmd += ["--weights", weights]
            proc = subprocess.run(cmd + list(part), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            for f in part:
                up = load_file(os.path.join(tmp, os.path.basename(f)))[0]["upsampled"][0]
                if append_guide_rgb:
                    up = np.concatenate([up, guide_rgb(f, up.shape[1:])])
                yield f, up


def guide_rgb(cache_file, size_hw):
    """The cached image of an entry at size_hw (area resize) as [3, H, W] float32 RGB in [0, 1]."""
    bgr = load_entry(cache_file)["image"]
    small = cv2.resize(bgr, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
    return small[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# The probe
# ----------------------------------------------------------------------------------------------

def sample_pixels(label, count, rng):
    """Flat indices of up to `count` labelled pixels, uniformly without replacement."""
    valid = np.flatnonzero(label.reshape(-1) >= 0)
    if valid.size <= count:
        return valid
    return np.sort(rng.choice(valid, size=count, replace=False))


def train_probe(x, y, classes, seed, steps=1500, batch=4096, lr=1e-2, weight_decay=1e-4):
    """A linear classifier on standardized features, AdamW with cosine decay over `steps` minibatches
    (epochs of a seeded permutation): returns (mean, std, weight [K,C], bias [K])."""
    torch.manual_seed(seed)
    x = torch.from_numpy(x)
    y = torch.from_numpy(y)
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    layer = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(xs), generator=gen), 0
    for _ in range(steps):
        if pos >= len(xs):
            order, pos = torch.randperm(len(xs), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = torch.nn.functional.cross_entropy(layer(xs[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return mean.numpy(), std.numpy(), layer.weight.detach().numpy(), layer.bias.detach().numpy()


def predict(probe, feats):
    """Class index per pixel of a [C, H, W] map."""
    mean, std, weight, bias = probe
    c = feats.shape[0]
    x = (feats.reshape(c, -1).T - mean) / std
    return np.argmax(x @ weight.T + bias, axis=1).reshape(feats.shape[1:])


def confusion(pred, label, classes):
    keep = label.reshape(-1) >= 0
    idx = label.reshape(-1)[keep] * classes + pred.reshape(-1)[keep]
    return np.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def miou(conf):
    """Mean IoU over the classes present in the labels (rows with pixels), and pixel accuracy."""
    tp = np.diag(conf).astype(np.float64)
    gt = conf.sum(1).astype(np.float64)
    pr = conf.sum(0).astype(np.float64)
    present = gt > 0
    iou = tp[present] / (gt[present] + pr[present] - tp[present])
    return float(iou.mean()), float(tp.sum() / max(gt.sum(), 1))


def evaluate_method(tool, method, weights, train_files, val_files, class_ids, ignore, seeds, args):
    classes = len(class_ids)
    # training pixels of every seed, gathered in one pass over the train images
    xs = {s: [] for s in seeds}
    ys = {s: [] for s in seeds}
    for i, (f, up) in enumerate(upsampled_maps(tool, method, train_files, args.scale, weights, args.threads,
                                               work_dir=args.work_dir, guide_scale=args.guide_scale,
                                               append_guide_rgb=args.append_guide_rgb,
                                               feature_input=args.input)):
        label = cached_label(f, up.shape[-1], tuple(class_ids), ignore)
        flat = up.reshape(up.shape[0], -1)
        for s in seeds:
            idx = sample_pixels(label, args.pixels_per_image, np.random.default_rng([s, i]))
            xs[s].append(flat[:, idx].T.copy())
            ys[s].append(label.reshape(-1)[idx])
    probes = {s: train_probe(np.concatenate(xs[s]), np.concatenate(ys[s]), classes, s, args.probe_steps)
              for s in seeds}
    confs = {s: np.zeros((classes, classes), np.int64) for s in seeds}
    for f, up in upsampled_maps(tool, method, val_files, args.scale, weights, args.threads, work_dir=args.work_dir,
                                guide_scale=args.guide_scale, append_guide_rgb=args.append_guide_rgb,
                                feature_input=args.input):
        label = cached_label(f, up.shape[-1], tuple(class_ids), ignore)
        for s in seeds:
            confs[s] += confusion(predict(probes[s], up), label, classes)
    scores = np.array([miou(confs[s]) for s in seeds])
    return scores  # [seeds, (mIoU, pixel accuracy)]


class ResultStore:
    """Scores per method kept in a JSON file (--results), so a later run with new weights recomputes
    only what changed: an entry counts when the settings (files, seeds, sizes) and the weights'
    SHA-256 are the same."""

    def __init__(self, path, settings):
        self.path, self.settings, self.entries = path, settings, {}
        if path and os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("settings") == settings:
                self.entries = saved.get("methods", {})

    @staticmethod
    def _key(method, weights):
        if not weights:
            return method
        with open(weights, "rb") as f:
            return f"{method}:{hashlib.sha256(f.read()).hexdigest()}"

    def get(self, label, method, weights):
        entry = self.entries.get(label)
        if entry and entry["key"] == self._key(method, weights):
            return np.array(entry["scores"])
        return None

    def put(self, label, method, weights, scores):
        if not self.path:
            return
        self.entries[label] = {"key": self._key(method, weights), "scores": np.asarray(scores).tolist()}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"settings": self.settings, "methods": self.entries}, f, indent=1)
        os.replace(tmp, self.path)


def format_table(rows, seeds):
    lines = [f"| method | mIoU (mean ± sd over {len(seeds)} seeds) | pixel accuracy (mean ± sd) |", "|---|---|---|"]
    for label, scores in rows:
        m, a = scores[:, 0], scores[:, 1]
        lines.append(f"| {label} | {100 * m.mean():.2f} ± {100 * m.std():.2f} | {100 * a.mean():.2f} ± {100 * a.std():.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=["camvid", "coco128"])
    ap.add_argument("--train-cache", required=True, help="feature cache of the train images (--hi-only is enough)")
    ap.add_argument("--val-cache", required=True, help="feature cache of the val images")
    ap.add_argument("--tool", required=True, help="path of the naf_upsample_cached executable")
    ap.add_argument("--naf", action="append", default=[], metavar="LABEL=WEIGHTS", help="NAF weights (repeatable)")
    ap.add_argument("--methods", nargs="*", help=f"baselines (default: {' '.join(BASELINES)})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--input", choices=["hi", "lo"], default="hi",
                    help="features to upsample: hi = of the full-size image (the protocol), lo = of the half-size "
                         "image (a diagnostic: the input NAF is trained on; needs a cache without --hi-only)")
    ap.add_argument("--scale", type=int, default=4, help="output grid = scale x the feature grid")
    ap.add_argument("--guide-scale", type=int, default=1,
                    help="guide image side = this x the output side (1: the official protocol; NAF resizes "
                         "guides above 4x the output down to 4x)")
    ap.add_argument("--append-guide-rgb", action="store_true",
                    help="diagnostic: give the probe the guide's RGB at the output size as 3 more channels "
                         "(does an edge-aware filter win by passing image colour into the features?)")
    ap.add_argument("--pixels-per-image", type=int, default=2000, help="training pixels per image and seed")
    ap.add_argument("--probe-steps", type=int, default=1500, help="optimizer steps of the probe (batch 4096)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", help="folder for the temporary upsampled maps (default: the system's)")
    ap.add_argument("--report", help="markdown file whose linear-probe section for this data set is (re)written")
    ap.add_argument("--section", help="name of that section (default: linear-probe-<dataset>)")
    ap.add_argument("--results", help="JSON file of scores per method, reused when settings and weights match")
    args = ap.parse_args(argv)
    nafs = parse_naf_specs(ap, args.naf)
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_the_heap()  # 64 MB maps are read and freed per image
    train_files, val_files = list_entries(args.train_cache), list_entries(args.val_cache)
    if not train_files or not val_files:
        ap.error(f"empty cache: {len(train_files)} train and {len(val_files)} val entries")
    if args.input == "lo":
        missing = [f for f in train_files + val_files if "features_lo" not in read_header(f)[0]]
        if missing:
            ap.error(f"--input lo: {len(missing)} cache entries have no features_lo, e.g. {missing[0]} "
                     "(extract the cache without --hi-only)")
    first = load_entry(val_files[0])  # its source locates the labels; its shapes go into the report
    source = first["meta"]["source"]
    data_root = os.path.dirname(os.path.dirname(os.path.dirname(source)))
    class_ids, ignore, _ = dataset_classes(args.dataset, data_root)
    jobs = [(m, m, None) for m in (args.methods if args.methods is not None else BASELINES)]
    jobs += [(f"naf ({label})", "naf", w) for label, w in nafs]
    store = ResultStore(args.results, {
        "dataset": args.dataset, "train": [os.path.basename(f) for f in train_files],
        "val": [os.path.basename(f) for f in val_files], "seeds": args.seeds, "scale": args.scale,
        "pixels_per_image": args.pixels_per_image, "probe_steps": args.probe_steps,
        **({"guide_scale": args.guide_scale} if args.guide_scale != 1 else {}),
        **({"append_guide_rgb": True} if args.append_guide_rgb else {}),
        **({"input": args.input} if args.input != "hi" else {})})
    rows = []
    for label, method, weights in jobs:
        t0 = time.time()
        scores = store.get(label, method, weights)
        if scores is None:
            scores = evaluate_method(args.tool, method, weights, train_files, val_files, class_ids, ignore,
                                     args.seeds, args)
            store.put(label, method, weights, scores)
        rows.append((label, scores))
        print(f"{label}: mIoU {100 * scores[:, 0].mean():.2f} ± {100 * scores[:, 0].std():.2f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    c, h, w = first[args.input].shape
    out_side = args.scale * w
    image_side = first["image"].shape[0] // (2 if args.input == "lo" else 1)
    section = (f"**{args.dataset}**: {len(train_files)} train -> {len(val_files)} val images (largest centred "
               f"square), VFM `{first['meta'].get('vfm', '?')}` features {c} x {h} x {w} (of the {image_side} px "
               f"image) upsampled to "
               f"{out_side} x {out_side} (guide image {args.guide_scale * out_side} px)"
               f"{' + the guide RGB as 3 more channels' if args.append_guide_rgb else ''}; probe trained on "
               f"{args.pixels_per_image} labelled pixels per train image ({args.probe_steps} AdamW steps); mIoU over the "
               f"classes present in the val labels (ignore label excluded), seeds {' '.join(map(str, args.seeds))}.\n\n"
               + format_table(rows, args.seeds) + "\n\nCommand: `/usr/bin/python3 tools/probe_naf.py "
               + shlex.join(argv if argv is not None else sys.argv[1:]) + "`")
    print(format_table(rows, args.seeds))
    if args.report:
        write_report(args.report, section, args.section or f"linear-probe-{args.dataset}", "tools/probe_naf.py")
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
