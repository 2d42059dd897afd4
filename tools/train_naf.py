#!/usr/bin/env python3
"""Train NAF weights on a VFM feature cache (recipe and choices: docs/TRAINING.md).

Recipe (the official one of github valeoai/NAF, adapted to MobileSAM): AdamW (lr 2e-4, weight
decay 1e-5), batch 4, loss = MSE between NAF(guide, features of the S/2 image) upsampled x2 and
the features of the S image (S = 1024 for MobileSAM: 32x32 -> 64x64 grids).

Each sample is a random window of `--crop` x `--crop` low-resolution cells (default 16, so the
output is 32x32 cells as in the official 256 -> 512 px setting) of one cached image, with the
matching 2*crop target cells and a guide of 4 px per target cell. The guide comes from the cached
S x S image resized once to 4x the target grid (bilinear, no antialias) -- exactly what the C++
library does with the full image at inference -- and is then cropped, so training and inference
see the same guide statistics.

Every step's batch is drawn from an RNG seeded by (seed, step): a run resumed from a checkpoint
gives the same weights as an uninterrupted one. Writes in --out-dir: loss.csv (step, loss, lr,
seconds), checkpoint.pt (every --checkpoint-every steps and at the end; atomic), and
naf_trained.safetensors (cv-naf-weights with provenance: data, steps, time, hardware, loss).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naf_reference as ref  # noqa: E402
from feature_cache import list_entries, load_entry  # noqa: E402

GUIDE_PX_PER_CELL = 4  # official: guide at 4x the target grid
MAX_CROP = 32  # low-res cells per crop side accepted by --crop


LOW_RES_SOURCES = ("image", "pooled")


class CachedPairs:
    """All cache entries in memory as torch tensors: guide [3, 4h, 4w] RGB in [0,1], lo, hi.

    low_res picks the NAF input of a pair: "image" = the cached features of the half-size image
    (the official pair), "pooled" = the full-size image's features averaged over 2 x 2 cells (a
    --hi-only cache is enough). MobileSAM's features of the 512 px image are degraded (it was
    trained at 1024 px), so the "image" pair also teaches NAF to undo that degradation by
    smoothing, which then blurs the coherent 1024 px features it is used on (docs/TRAINING.md)."""

    def __init__(self, paths, low_res="image"):
        if not paths:
            raise ValueError("no cache entries")
        if low_res not in LOW_RES_SOURCES:
            raise ValueError(f"low_res must be one of {LOW_RES_SOURCES}, got {low_res!r}")
        self.paths = list(paths)
        self.guides, self.lo, self.hi, self.sources = [], [], [], []
        for p in self.paths:
            e = load_entry(p)
            hi = torch.from_numpy(e["hi"])
            if low_res == "pooled":
                if hi.shape[-2] % 2 or hi.shape[-1] % 2:
                    raise ValueError(f"{p}: features_hi {tuple(hi.shape)} has an odd side, cannot pool 2 x 2")
                lo = F.avg_pool2d(hi[None], 2)[0]
            elif e["lo"] is None:
                raise ValueError(f"{p}: no features_lo (a --hi-only cache needs --low-res pooled)")
            else:
                lo = torch.from_numpy(e["lo"])
            if hi.shape[-2] != 2 * lo.shape[-2] or hi.shape[-1] != 2 * lo.shape[-1]:
                raise ValueError(f"{p}: features_hi {tuple(hi.shape)} is not twice features_lo {tuple(lo.shape)}")
            rgb = torch.from_numpy(e["image"][:, :, ::-1].copy()).permute(2, 0, 1).float().div_(255.0)
            gh, gw = GUIDE_PX_PER_CELL * hi.shape[-2], GUIDE_PX_PER_CELL * hi.shape[-1]
            if rgb.shape[-2:] != (gh, gw):
                rgb = F.interpolate(rgb[None], size=(gh, gw), mode="bilinear", align_corners=False)[0]
            self.guides.append(rgb.contiguous())
            self.lo.append(lo)
            self.hi.append(hi)
            self.sources.append(e["meta"].get("source", p))
        self.lo_size = tuple(self.lo[0].shape[-2:])
        self.channels = self.lo[0].shape[0]

    def __len__(self):
        return len(self.paths)

    def batch(self, rng, batch_size, crop, rope_frame="crop", frame_scale_max=1.0):
        """A batch of random crops: guide [B,3,8c,8c], lo [B,C,c,c], hi [B,C,2c,2c] (c = crop cells),
        and the RoPE frames of the crops (None, or (top, left, frame_h, frame_w) per crop in output
        cells, see rope_frame_of)."""
        g, lo, hi, frames = [], [], [], []
        for _ in range(batch_size):
            i = int(rng.integers(len(self)))
            h, w = self.lo[i].shape[-2:]
            ch, cw = min(crop, h), min(crop, w)
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            lo.append(self.lo[i][:, y:y + ch, x:x + cw])
            hi.append(self.hi[i][:, 2 * y:2 * (y + ch), 2 * x:2 * (x + cw)])
            s = 2 * GUIDE_PX_PER_CELL
            g.append(self.guides[i][:, s * y:s * (y + ch), s * x:s * (x + cw)])
            frames.append(rope_frame_of(rng, rope_frame, (2 * y, 2 * x), (2 * h, 2 * w), frame_scale_max))
        return torch.stack(g), torch.stack(lo), torch.stack(hi), None if rope_frame == "crop" else frames


ROPE_FRAMES = ("image", "crop")


def rope_frame_of(rng, rope_frame, offset, image_hw, frame_scale_max):
    """The RoPE coordinates of a crop at `offset` (output cells) of an image of `image_hw` cells.

    "image": the crop's place in the whole image, as when the library runs on the whole image:
    RoPE normalises coordinates to [-1, 1] over the map it sees, so a crop treated as a whole map
    has cells 64/12 times further apart than a 64-cell map at inference, and weights trained that
    way attend too broadly there (docs/TRAINING.md). With frame_scale_max > 1 the image sits in a
    frame s times its size (s log-uniform in [1, frame_scale_max], random place): maps with more
    cells than the training images, e.g. the probe's 64 x 64 features, see such spacings.
    "crop": every crop is a whole map (the shipped weights before 2026-11-26); returns None."""
    if rope_frame == "crop":
        return None
    if rope_frame != "image":
        raise ValueError(f"rope_frame must be one of {ROPE_FRAMES}, got {rope_frame!r}")
    (top, left), (fh, fw) = offset, image_hw
    if frame_scale_max > 1.0:
        scale = float(np.exp(rng.uniform(0.0, np.log(frame_scale_max))))
        top += float(rng.uniform(0.0, fh * (scale - 1.0)))
        left += float(rng.uniform(0.0, fw * (scale - 1.0)))
        fh, fw = fh * scale, fw * scale
    return (float(top), float(left), float(fh), float(fw))


def step_rng(seed, step):
    return np.random.default_rng([int(seed), int(step)])


def make_model(init_seed, config=None):
    torch.manual_seed(init_seed)
    model = ref.NAF(config)
    model.train()
    return model


def learning_rate(step, args):
    """lr of a 1-based step: the official constant rate, or linear warm-up then cosine decay to
    --min-lr at --steps (a short CPU schedule: a higher peak that ends small)."""
    if args.lr_schedule == "constant":
        return args.lr
    if args.warmup and step <= args.warmup:
        return args.lr * step / args.warmup
    span = max(1, args.steps - args.warmup)
    t = min(1.0, (step - args.warmup) / span)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + np.cos(np.pi * t))


def make_optimizer(model, lr, weight_decay):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def predict(model, guide, lo, out_hw, rope_frames=None):
    # "cells": one attention window per low-res cell (the 2x training grid allows it); same numbers
    # as "direct", 5-10x cheaper forward + backward on CPU
    return model(guide, lo, out_hw, mode="cells", rope_frames=rope_frames)


OUTPUT_SCALES = (1, 2, 4)  # divisors of GUIDE_PX_PER_CELL: the output never exceeds the guide


def predict_at_target(model, guide, lo, target_hw, output_scale=1, rope_frames=None):
    """NAF's output at output_scale x the target grid, averaged over output_scale^2 pixels back to
    the target grid (the loss compares it with the target features).

    At output_scale 1 (the official pair) the queries are the guide encoder's features averaged
    over 4 x 4 guide pixels, while a user's output (and the probe's) is usually as large as the
    guide, with queries from single guide pixels. At output_scale 4 the output is as large as the
    guide, as at inference, and only its cell means are supervised (the target grid is all the
    VFM gives)."""
    k = int(output_scale)
    out_hw = (k * target_hw[0], k * target_hw[1])
    frames = None if rope_frames is None else [tuple(k * v for v in f) for f in rope_frames]
    pred = predict(model, guide, lo, out_hw, frames)
    return F.avg_pool2d(pred, k) if k > 1 else pred


def keep_freed_memory_in_the_heap():
    """glibc serves large blocks with mmap and returns them on free, so every step page-faults its
    tens of MB of activations afresh (measured: the attention 1.8 s -> 0.5 s, the whole CPU step ~2x,
    with this off). Best effort: other C libraries are left alone."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks up to 1 GiB come from the heap (glibc 2.36 takes it)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def save_checkpoint(path, model, optimizer, step, args_dict):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "args": args_dict}, tmp)
    os.replace(tmp, path)


def truncate_log(path, last_step):
    """Keep the loss rows up to last_step (a resumed run rewrites the later ones)."""
    if not os.path.exists(path):
        return 0.0
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "seconds"])
        w.writeheader()
        w.writerows(rows)
    return float(rows[-1]["seconds"]) if rows else 0.0


@torch.no_grad()
def full_map_loss(model, data, device=torch.device("cpu")):
    """Mean MSE over whole images (lo grid -> hi grid, guide = the 4x guide), as at inference."""
    model.eval()
    losses = []
    for i in range(len(data)):
        hi = data.hi[i].to(device)
        pred = predict(model, data.guides[i][None].to(device), data.lo[i][None].to(device), tuple(hi.shape[-2:]))
        losses.append(F.mse_loss(pred[0], hi).item())
    model.train()
    return float(np.mean(losses))


def hardware_description(device):
    if device.type == "cuda":
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "torch_threads": torch.get_num_threads()}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"device": "cpu", "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: nothing more is written."""


def cache_entries(folder, what="--cache"):
    """The entries of a cache folder; ValueError naming the folder when it has none."""
    if not os.path.isdir(folder):
        raise ValueError(f"{what} folder {folder} does not exist")
    entries = list_entries(folder)
    if not entries:
        raise ValueError(f"{what} folder {folder} has no *.safetensors entries")
    return entries


def check_paths(args):
    """Everything the run reads or writes at the end, checked before hours of training."""
    for folder in args.cache:
        cache_entries(folder)
    if args.val_cache:
        cache_entries(args.val_cache, "--val-cache")
    if args.weights_out:
        if os.path.isdir(args.weights_out):
            raise ValueError(f"--weights-out {args.weights_out} is a directory")
        folder = os.path.dirname(os.path.abspath(args.weights_out))
        if not os.path.isdir(folder):
            raise ValueError(f"folder {folder} of --weights-out {args.weights_out} does not exist")
    if args.init_weights and not os.path.isfile(args.init_weights):
        raise ValueError(f"--init-weights {args.init_weights} is not a file")


def train(args):
    check_paths(args)
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_the_heap()
    init_state, init_config, init_note = None, None, None
    if args.init_weights:  # before the cache, which takes long to load
        init_state, init_config, init_provenance = ref.load_weights(args.init_weights)
        init_note = init_weights_note(args.init_weights, init_provenance)
    os.makedirs(args.out_dir, exist_ok=True)
    paths = [p for folder in args.cache for p in list_entries(folder)]
    if args.limit is not None:
        paths = paths[:args.limit]
    data = CachedPairs(paths, args.low_res)
    device = torch.device(args.device)
    # the loaded file's config (heads, kernel, groups, normalisation), which the output keeps
    model = make_model(args.init_seed, init_config)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model = model.to(device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    ckpt_path = os.path.join(args.out_dir, "checkpoint.pt")
    log_path = os.path.join(args.out_dir, "loss.csv")
    start, elapsed_before = 0, 0.0
    if args.resume and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        elapsed_before = truncate_log(log_path, start)
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
    elif os.path.exists(log_path):
        os.remove(log_path)
    new_log = not os.path.exists(log_path)
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "lr", "seconds"])
    args_dict = {k: v for k, v in vars(args).items()}
    t0 = time.time()
    recent = []
    step = start
    for step in range(start + 1, args.steps + 1):
        guide, lo, hi, frames = data.batch(step_rng(args.seed, step), args.batch, args.crop, args.rope_frame,
                                           args.rope_frame_scale_max)
        guide, lo, hi = guide.to(device), lo.to(device), hi.to(device)
        lr = learning_rate(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # one output scale per step, from an RNG of its own (the batches stay those of other runs;
        # a resumed run draws the same)
        scale = int(step_rng(args.seed + 7919, step).choice(args.output_scales))
        pred = predict_at_target(model, guide, lo, tuple(hi.shape[-2:]), scale, frames)
        loss = F.mse_loss(pred, hi)
        if not torch.isfinite(loss):  # stop before the step: NaN would reach every weight and the outputs
            log.close()
            raise TrainingDiverged(f"loss is {loss.item()} at step {step} (lr {lr:.3g}): stopped; nothing more "
                                   f"written (the last checkpoint, if any, is from before)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds = elapsed_before + time.time() - t0
        writer.writerow([step, f"{loss.item():.6g}", f"{lr:.6g}", f"{seconds:.1f}"])
        log.flush()
        recent = (recent + [loss.item()])[-20:]
        if step % args.print_every == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.5f} (last-20 mean {np.mean(recent):.5f}) "
                  f"{seconds:.0f} s", flush=True)
        out_of_time = args.max_minutes and time.time() - t0 > 60 * args.max_minutes
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            save_checkpoint(ckpt_path, model, optimizer, step, args_dict)
        if out_of_time:
            print(f"stopping after {args.max_minutes} min at step {step} (resume with --resume)", flush=True)
            break
    log.close()
    total_seconds = elapsed_before + time.time() - t0
    result = {"steps": step, "final_loss_last20": float(np.mean(recent)) if recent else None,
              "seconds": round(total_seconds, 1)}
    if args.val_cache:
        val = CachedPairs(cache_entries(args.val_cache, "--val-cache"), args.low_res)
        result["val_full_map_mse"] = full_map_loss(model, val, device)
        result["val_images"] = len(val)
    if args.weights_out:
        provenance = {
            "source": "trained", "trained": True, "tool": "tools/train_naf.py",
            "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vfm": data_meta_vfm(paths),
            "data": {"cache": [os.path.abspath(c) for c in args.cache], "image_count": len(data),
                     "sets": sorted(set(source_set(s) for s in data.sources)),
                     "images": [data_relative(s) for s in data.sources],
                     "lo_grid": list(data.lo_size), "channels": data.channels},
            "recipe": {"optimizer": "AdamW", "lr": args.lr, "lr_schedule": args.lr_schedule,
                       "warmup": args.warmup, "min_lr": args.min_lr, "weight_decay": args.weight_decay,
                       "batch": args.batch, "crop_cells": args.crop, "guide_px_per_target_cell": GUIDE_PX_PER_CELL,
                       "loss": "MSE(NAF(lo) at 2x, hi)" if args.output_scales == [1] else
                       "MSE(NAF(lo) at 2k x, averaged over k x k, hi), k per step from output_scales",
                       "output_scales": args.output_scales, "low_res": LOW_RES_NOTE[args.low_res],
                       "rope_frame": args.rope_frame, "rope_frame_scale_max": args.rope_frame_scale_max,
                       "seed": args.seed, "init_seed": args.init_seed,
                       **({"init_weights": init_note} if init_note else {})},
            "steps": step, "seconds": result["seconds"], "hardware": hardware_description(device),
            "final_loss": result["final_loss_last20"], "torch_version": torch.__version__.split("+")[0],
        }
        if "val_full_map_mse" in result:
            provenance["val_full_map_mse"] = result["val_full_map_mse"]
        ref.save_weights(args.weights_out, {k: v.cpu() for k, v in model.state_dict().items()}, provenance,
                         model.config)
        result["weights"] = args.weights_out
    print(json.dumps(result), flush=True)
    return model, result


LOW_RES_NOTE = {"image": "features of the half-size image", "pooled": "features of the full-size image, 2x2 average"}


def init_weights_note(path, provenance):
    """Where a fine-tuned run started: the file name and its own provenance (steps, data, recipe)."""
    prov = provenance or {}
    recipe = prov.get("recipe", {})
    note = {"file": os.path.basename(path), "steps": prov.get("steps"),
            "low_res": recipe.get("low_res", LOW_RES_NOTE["image"]), "rope_frame": recipe.get("rope_frame", "crop"),
            "image_count": prov.get("data", {}).get("image_count")}
    if "init_weights" in recipe:  # a chain of fine-tunings stays readable from the last file
        note["init_weights"] = recipe["init_weights"]
    return note


def data_meta_vfm(paths):
    from safetensors_io import read_header
    meta = read_header(paths[0])[0].get("__metadata__", {}) if paths else {}
    return meta.get("vfm", "unknown")


def data_relative(path):
    """'/x/shared/data/photos/urban100/a.jpg' -> 'photos/urban100/a.jpg' (else the path as is)."""
    parts = os.path.normpath(path).split(os.sep)
    for anchor in ("photos", "segmentation"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor):])
    return path


def source_set(path):
    """'.../photos/urban100/x.png' -> 'photos/urban100' (the data set an image came from)."""
    parts = os.path.normpath(path).split(os.sep)
    for anchor in ("photos", "segmentation"):
        if anchor in parts:
            i = parts.index(anchor)
            return "/".join(parts[i:-1])
    return os.path.dirname(path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, nargs="+", help="feature cache folder(s) (naf_extract_features --out)")
    ap.add_argument("--out-dir", required=True, help="run folder: loss.csv, checkpoint.pt")
    ap.add_argument("--weights-out", help="final cv-naf-weights safetensors file")
    ap.add_argument("--val-cache", help="cache folder for a full-map validation MSE at the end")
    ap.add_argument("--steps", type=int, default=25000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                    help="constant (official) or warm-up + cosine decay to --min-lr at --steps")
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (cosine schedule)")
    ap.add_argument("--min-lr", type=float, default=0.0, help="final lr of the cosine schedule")
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--crop", type=int, default=16, help="low-res cells per crop side (output 2x)")
    ap.add_argument("--seed", type=int, default=0, help="data sampling seed")
    ap.add_argument("--init-seed", type=int, default=0, help="weight initialisation seed")
    ap.add_argument("--init-weights", help="start from these cv-naf weights (fine-tuning) instead of a random init")
    ap.add_argument("--rope-frame", choices=ROPE_FRAMES, default="image",
                    help="RoPE coordinates of a crop: its place in the whole image (as at inference) or the "
                         "crop as a whole map (the first shipped weights)")
    ap.add_argument("--rope-frame-scale-max", type=float, default=1.0,
                    help="with --rope-frame image: the image sits in a frame up to this many times its size "
                         "(random, log-uniform), for maps with more cells than the training images")
    ap.add_argument("--low-res", choices=LOW_RES_SOURCES, default="image",
                    help="NAF input of a pair: the half-size image's features (official) or the full-size "
                         "image's features pooled 2x2 (hi-only caches work)")
    ap.add_argument("--output-scales", type=int, nargs="+", default=[1], choices=OUTPUT_SCALES, metavar="K",
                    help="NAF output at K x the target grid (K in 1 2 4), averaged K x K for the loss; one K "
                         "per step, drawn from these (4: output as large as the guide, as at inference)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N cache entries")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--print-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop (with a checkpoint and the weights) after this many minutes of this run")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda on the GPU machine")
    ap.add_argument("--resume", action="store_true", help="continue from out-dir/checkpoint.pt when present")
    args = ap.parse_args(argv)
    if not args.rope_frame_scale_max >= 1.0:
        ap.error(f"--rope-frame-scale-max must be >= 1, got {args.rope_frame_scale_max}")
    for name in ("steps", "batch", "checkpoint_every", "print_every", "threads") + (
            ("limit",) if args.limit is not None else ()):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.crop <= MAX_CROP:
        ap.error(f"--crop must be in 1..{MAX_CROP} low-res cells, got {args.crop}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except (ValueError, OSError, TrainingDiverged) as e:
        raise SystemExit(f"train_naf: {e}") from None


if __name__ == "__main__":
    main()
