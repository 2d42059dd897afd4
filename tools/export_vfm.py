#!/usr/bin/env python3
"""Export a ViT vision foundation model to an ONNX graph that OpenCV 4.6's cv::dnn runs, plus its
registry entry (models/vfm/<name>.json), so cv::naf::VisionFoundationModel::create("<name>") finds it.

The model is our own DINOv2-style ViT definition (patch embedding, cls token, learned position
embedding resampled to the export grid, pre-norm blocks with LayerScale, final LayerNorm), with
parameter names that match DINOv2's state dict. It is exported with PyTorch (opset 12) at one fixed
input size, then goes through the OpenCV-4.6 passes of tools/vfm/onnx_for_opencv46.py. The graph
outputs the patch tokens as a 1 x D x (S/p) x (S/p) map named `features`.

With internet (on your machine), real weights:
  # DINOv2 ViT-S/14 from torch.hub (downloads facebookresearch/dinov2 + weights):
  python3 tools/export_vfm.py --hub dinov2_vits14 --size 448 --name dinov2_vits14 \\
      --out models/cache/dinov2_vits14_448_cv46.onnx --registry models/vfm
  # any checkpoint with DINOv2 parameter names (a .pth state dict), giving the architecture:
  python3 tools/export_vfm.py --state-dict vit.pth --patch 16 --dim 768 --depth 12 --heads 12 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --size 512 --name myvit --out ... --registry models/vfm
(DINOv3 / CLIP / RADIO ViTs: load their weights into this definition when the architecture
matches — a pre-norm ViT with a cls token; models with register tokens use --registers N. Models
with other blocks need their own definition; the same OpenCV-4.6 passes then apply.)

Offline (tests): a small ViT with random weights:
  python3 tools/export_vfm.py --random --size 64 --patch 8 --dim 32 --depth 2 --heads 4 \\
      --name tiny_vit --out build/tiny_vit.onnx --registry build/registry
"""

import argparse
import json
import math
import os
import sys
import tempfile

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "vfm"))
import onnx_for_opencv46  # noqa: E402
from safetensors_io import atomic_write  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale  # the order cv::dnn 4.6 mis-fuses; the pass fixes it
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2-style ViT returning the patch tokens as a 1 x D x gh x gw map."""

    def __init__(self, patch=14, dim=384, depth=12, heads=6, mlp_ratio=4.0, pos_grid=37, registers=0):
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, gh, gw):
        """Learned embedding resampled (bicubic) to the grid; computed once at export time."""
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        n = int(math.sqrt(grid_pos.shape[1]))
        if (n, n) == (gh, gw):
            return self.pos_embed
        grid = grid_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def forward(self, x, pos=None):
        x = self.patch_embed(x)
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + (pos if pos is not None else self.position_embedding(gh, gw))
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        tokens = x[:, x.shape[1] - gh * gw:]
        return tokens.transpose(1, 2).reshape(b, d, gh, gw)


class FixedSizeExport(nn.Module):
    """The ViT with its position embedding frozen for one input size (a constant in the graph)."""

    def __init__(self, vit, size):
        super().__init__()
        self.vit = vit
        g = size // vit.patch
        with torch.no_grad():
            self.register_buffer("pos", vit.position_embedding(g, g).detach().clone())

    def forward(self, image):
        return self.vit(image, self.pos)


def build(args):
    if args.hub:
        hub = torch.hub.load("facebookresearch/dinov2", args.hub)  # needs internet
        sd = hub.state_dict()
        dim = sd["cls_token"].shape[-1]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        patch = sd["patch_embed.proj.weight"].shape[-1]
        pos_grid = int(math.sqrt(sd["pos_embed"].shape[1] - 1))
        registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
        vit = VisionTransformer(patch, dim, depth, hub.num_heads, sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                                pos_grid, registers)
        missing, unexpected = vit.load_state_dict(sd, strict=False)
        if missing:
            raise SystemExit(f"export_vfm: weights lack {missing}")
        return vit, patch
    vit = VisionTransformer(args.patch, args.dim, args.depth, args.heads, args.mlp_ratio, args.pos_grid, args.registers)
    if args.state_dict:
        sd = torch.load(args.state_dict, map_location="cpu")
        missing, unexpected = vit.load_state_dict(sd, strict=False)
        if missing:
            raise SystemExit(f"export_vfm: {args.state_dict} lacks {missing}")
    else:  # random weights, LayerScale made O(1) so that every block matters in the tests
        torch.manual_seed(args.seed)
        with torch.no_grad():
            for p in vit.parameters():
                if p.dim() > 1 or p.numel() > 1:
                    nn.init.normal_(p, std=0.2 if p.dim() > 1 else 0.5)
    return vit, args.patch


def export(vit, size, out_path, log=print, naf_layers=True):
    """Exports at size x size and converts for OpenCV 4.6 (naf_layers: with cv::naf's GELU and
    Softmax layers, which need cv::naf::registerLayers(); without, plain cv::dnn, e.g. cv2.dnn in
    Python, loads it). Returns the fixed-size torch module."""
    if os.path.isdir(out_path):
        raise ValueError(f"output {out_path} is a directory")
    module = FixedSizeExport(vit.eval(), size).eval()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    dummy = torch.zeros(1, 3, size, size)
    # the raw export goes to a temp folder (removed whatever happens), the result through a temp file
    # next to out_path: no leftovers on failure
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as tmp_dir:
        tmp = os.path.join(tmp_dir, "torch.onnx")
        with torch.no_grad():
            torch.onnx.export(module, dummy, tmp, opset_version=12, input_names=["image"],
                              output_names=["features"], do_constant_folding=True)
        model = onnx_for_opencv46.convert(onnx.load(tmp), {"image": [1, 3, size, size]}, log=log,
                                          naf_layers=naf_layers)
    atomic_write(out_path, lambda f: f.write(model.SerializeToString()))
    return module


def registry_entry(args, patch, channels, onnx_path):
    return {
        "display_name": args.display_name or f"{args.name} (ViT, patch {patch}, exported by tools/export_vfm.py)",
        "onnx": onnx_path,
        "fetch": args.fetch or "",
        "input": {"size": args.size, "size_policy": "longest_side_pad", "color_order": "RGB",
                  "mean": [round(m * 255, 4) for m in args.mean], "std": [round(s * 255, 4) for s in args.std]},
        "output": {"name": "features", "channels": channels, "stride": patch},
        "license": args.license,
    }


def check_args(p, args):
    """Usage errors (p.error) for what would fail late or write an unusable graph."""
    for name in ("size", "patch", "dim", "heads", "depth", "pos_grid"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.registers < 0:
        p.error(f"--registers must be >= 0, got {args.registers}")
    if not args.hub:  # a hub model brings its own patch, dim and heads (checked after loading)
        if args.size % args.patch:
            p.error(f"--size {args.size} is not a multiple of --patch {args.patch}")
        if args.dim % args.heads:
            p.error(f"--dim {args.dim} is not divisible by --heads {args.heads}")
    if os.path.isdir(args.out):
        p.error(f"--out {args.out} is a directory")
    if args.registry and os.path.exists(args.registry) and not os.path.isdir(args.registry):
        p.error(f"--registry {args.registry} is not a folder")


def write_registry_entry(registry, name, entry):
    """<registry>/<name>.json, written atomically (a reader never sees half an entry)."""
    os.makedirs(registry, exist_ok=True)
    path = os.path.join(registry, name + ".json")
    text = (json.dumps(entry, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(text))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hub", help="torch.hub name in facebookresearch/dinov2, e.g. dinov2_vits14 (internet)")
    src.add_argument("--state-dict", help="a .pth state dict with DINOv2 parameter names")
    src.add_argument("--random", action="store_true", help="random weights (tests)")
    p.add_argument("--size", type=int, required=True, help="square input size (a multiple of the patch)")
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--pos-grid", type=int, default=37, help="side of the learned position grid")
    p.add_argument("--registers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, help="in 0..1 units, RGB")
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, help="in 0..1 units, RGB")
    p.add_argument("--name", required=True, help="registry name (the JSON file's stem)")
    p.add_argument("--display-name")
    p.add_argument("--license", default="see the weights' source")
    p.add_argument("--fetch", help="command that recreates the ONNX file (stored in the registry entry)")
    p.add_argument("--out", required=True, help="converted ONNX file")
    p.add_argument("--registry", help="folder to write <name>.json into (e.g. models/vfm)")
    p.add_argument("--no-naf-layers", action="store_true",
                   help="plain cv::dnn layers only (slower; for cv::dnn without cv::naf, e.g. cv2.dnn)")
    args = p.parse_args(argv)
    check_args(p, args)

    vit, patch = build(args)
    if args.size % patch:
        raise SystemExit(f"export_vfm: --size {args.size} is not a multiple of the patch size {patch}")
    try:
        export(vit, args.size, args.out, naf_layers=not args.no_naf_layers)
        if args.registry:
            onnx_path = os.path.abspath(args.out)
            root = os.path.dirname(os.path.dirname(os.path.abspath(args.registry)))
            if onnx_path.startswith(root + os.sep):  # inside the project: stored relative to its root
                onnx_path = os.path.relpath(onnx_path, root)
            entry = registry_entry(args, patch, vit.cls_token.shape[-1], onnx_path)
            write_registry_entry(args.registry, args.name, entry)
    except (ValueError, OSError) as e:
        raise SystemExit(f"export_vfm: {e}") from None
    print(f"export_vfm: wrote {args.out}" + (f" and {args.registry}/{args.name}.json" if args.registry else ""))


if __name__ == "__main__":
    main()
