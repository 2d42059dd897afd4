#!/usr/bin/env python3
"""Convert the official NAF checkpoint (naf_release.pth) into cv::naf weights (.safetensors).

The official release (github valeoai/NAF, hubconf.py) is a plain PyTorch state dict of
`NAF()`: the image encoder's convolutions and GroupNorms plus the RoPE `periods` buffer. This
script also accepts a dict that wraps it ("state_dict", "model", "model_state_dict") and
DataParallel / torch.compile prefixes ("module.", "_orig_mod."). Every tensor is checked against
the expected names and shapes (docs/FORMATS.md); the output records the checkpoint's sha256.

  /usr/bin/python3 tools/convert_official_checkpoint.py naf_release.pth naf.safetensors
"""

import argparse
import datetime
import hashlib
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import naf_reference as ref  # noqa: E402

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")


class ConversionError(ValueError):
    pass


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwrap_state_dict(obj):
    """The flat name -> tensor mapping inside a loaded checkpoint object."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, value in obj.items():
        if not torch.is_tensor(value):
            continue
        for p in PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        out[name] = value
    return out


def infer_config(sd):
    """NAF hyper-parameters implied by the tensor shapes (dim, img_layers, heads_rope)."""
    cfg = dict(ref.DEFAULT_CONFIG)
    stem = sd.get("image_encoder.encoder.0.weight")
    if stem is None:
        raise ConversionError("missing tensor: image_encoder.encoder.0.weight (is this a NAF checkpoint?)")
    cfg["dim"] = int(stem.shape[0]) * 2
    layers = 0
    while f"image_encoder.encoder.{layers + 1}.conv1.weight" in sd:
        layers += 1
    cfg["img_layers"] = layers
    periods = sd.get("image_encoder.rope.periods")
    if periods is not None and periods.numel() > 0:
        cfg["heads_rope"] = cfg["dim"] // (4 * int(periods.numel()))
    return cfg


def convert(src, dst, extra_provenance=None):
    """Convert src (.pth) to dst (.safetensors). Returns (config, provenance)."""
    if os.path.isdir(dst):  # checked first: a checkpoint takes a while to read
        raise ConversionError(f"output {dst} is a directory")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise ConversionError(f"folder {folder} of the output {dst} does not exist")
    try:
        obj = torch.load(src, map_location="cpu")
    except Exception as e:  # torch raises many types for a damaged file
        raise ConversionError(f"{src}: cannot be read as a PyTorch checkpoint ({e})") from None
    sd = unwrap_state_dict(obj)
    cfg = infer_config(sd)
    problem = ref.config_problem(cfg)
    if problem:  # before check_state_dict, which divides by the config's numbers
        raise ConversionError(f"{src}: the tensor shapes imply an invalid naf_config ({problem})")
    problems = ref.check_state_dict(sd, cfg)
    if problems:
        raise ConversionError(f"{src}: " + "; ".join(problems))
    for name, t in sd.items():
        if not torch.is_floating_point(t):
            raise ConversionError(f"{src}: {name} has dtype {t.dtype}, expected a floating-point tensor")
        if not torch.isfinite(t).all():
            raise ConversionError(f"{src}: {name} contains NaN or Inf")
    provenance = {
        "source": "official-checkpoint",
        "trained": True,
        "checkpoint": os.path.basename(src),
        "checkpoint_sha256": sha256_of(src),
        "tool": "tools/convert_official_checkpoint.py",
        "date": datetime.date.today().isoformat(),
        "data": "official NAF release (github valeoai/NAF)",
    }
    provenance.update(extra_provenance or {})
    try:  # atomic: save_file writes a temp file next to dst and renames it
        ref.save_weights(dst, {n: t.float() for n, t in sd.items()}, provenance, cfg)
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    return cfg, provenance


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="official checkpoint, e.g. naf_release.pth")
    ap.add_argument("output", help="cv::naf weights to write (.safetensors)")
    args = ap.parse_args(argv)
    try:
        cfg, prov = convert(args.checkpoint, args.output)
    except (ConversionError, OSError) as e:
        print(f"convert_official_checkpoint: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: dim {cfg['dim']}, {cfg['img_layers']} layers, sha256 {prov['checkpoint_sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
