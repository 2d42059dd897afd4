"""PyTorch reference of the NAF forward pass (Neighborhood Attention Filtering, arXiv 2511.18452).

This is an independent re-implementation written for cv::naf; it reproduces the inference path
of the official model (github valeoai/NAF, src/model/naf.py) without NATTEN or einops, and its
state_dict uses exactly the official parameter names, so an official checkpoint loads as is.

Pipeline for an image [N,3,H,W] (RGB in [0,1]), features [N,C,h,w] and an output size (Ho,Wo):

1. guide = (image - ImageNet mean) / ImageNet std; if H > 4*Ho or W > 4*Wo the guide is
   bilinearly resized (align_corners=False, no antialias) to
   (min(H, 4*Ho, 4*Wo), min(W, 4*Wo, 4*Ho)).
2. x = concat(encoder(guide), sem_encoder(guide)) (128 + 128 channels); each branch is a conv
   (1x1 resp. 3x3, reflect padding) followed by two blocks GN -> SiLU -> conv -> GN -> SiLU -> conv.
3. x = adaptive_avg_pool2d(x, (Ho,Wo)); queries = RoPE(x) (4 heads of 64 channels, axial).
4. keys = adaptive_avg_pool2d(queries, (h,w)); values = features.
5. Each output pixel attends (4 heads, scale 64**-0.5) to a k x k neighbourhood of low-res
   key/value positions. The official code upsamples keys/values to (Ho,Wo) with nearest-exact
   interpolation and runs NATTEN with dilation (Ho//h, Wo//w); `attend` reproduces that either
   literally ("official" mode) or by gathering straight from the low-res grid ("direct" mode).

Extension: when a low-res axis is shorter than the kernel (the official code fails there), the
kernel on that axis shrinks to the axis length.
"""

import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

DEFAULT_CONFIG = {
    "dim": 256,
    "heads_attn": 4,
    "heads_rope": 4,
    "kernel_size": 9,
    "img_layers": 2,
    "num_groups": 8,
    "rope_base": 100.0,
    "max_guide_scale": 4,
    "image_mean": list(IMAGE_MEAN),
    "image_std": list(IMAGE_STD),
}


# ----------------------------------------------------------------------------------------------
# Modules (names chosen to match the official state_dict)
# ----------------------------------------------------------------------------------------------

class EncBlock(nn.Module):
    """GN -> SiLU -> conv -> GN -> SiLU -> conv, no residual (in == out channels)."""

    def __init__(self, channels, kernel_size, num_groups):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")
        self.act = nn.SiLU()

    def forward(self, x):
        x = self.conv1(self.act(self.norm1(x)))
        return self.conv2(self.act(self.norm2(x)))


def make_branch(in_ch, out_ch, kernel_size, layers, num_groups):
    stem = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, padding_mode="reflect")
    return nn.Sequential(stem, *[EncBlock(out_ch, kernel_size, num_groups) for _ in range(layers)])


def rope_periods(dim, heads, base):
    d_head = dim // heads
    n = d_head // 4
    return base ** (2 * torch.arange(n) / (d_head // 2))


class AxialRoPE(nn.Module):
    """Axial rotary embedding, inference behaviour only (no coordinate shift/jitter/rescale)."""

    def __init__(self, dim, heads, base):
        super().__init__()
        assert dim % (4 * heads) == 0
        self.dim = dim
        self.heads = heads
        self.register_buffer("periods", rope_periods(dim, heads, base).float(), persistent=True)

    def angles(self, h, w, frame=None):
        """Angles [h, w, d_head]: [row freqs, col freqs] repeated twice.

        Pixel centres are normalised to [-1, 1] over the map (inference). frame = (top, left,
        frame_h, frame_w) places the map as a window of a larger frame instead (training on
        crops): the crop then gets the coordinates it has inside the whole image."""
        top, left, fh, fw = (0.0, 0.0, float(h), float(w)) if frame is None else (float(v) for v in frame)
        ch = (top + torch.arange(0.5, h, dtype=torch.float32, device=self.periods.device)) / fh
        cw = (left + torch.arange(0.5, w, dtype=torch.float32, device=self.periods.device)) / fw
        ch = 2.0 * ch - 1.0
        cw = 2.0 * cw - 1.0
        a_h = 2 * math.pi * ch[:, None] / self.periods[None, :]  # [h, F]
        a_w = 2 * math.pi * cw[:, None] / self.periods[None, :]  # [w, F]
        nf = self.periods.numel()
        a = torch.cat([a_h[:, None, :].expand(h, w, nf), a_w[None, :, :].expand(h, w, nf)], dim=-1)
        return torch.cat([a, a], dim=-1)

    def forward(self, x, frames=None):
        """frames: None (each map is a whole image) or one (top, left, frame_h, frame_w) per sample."""
        n, c, h, w = x.shape
        d = c // self.heads
        if frames is None:
            ang = self.angles(h, w).permute(2, 0, 1)  # [d, h, w]
        else:
            if len(frames) != n:
                raise ValueError(f"{len(frames)} RoPE frames for a batch of {n}")
            ang = torch.stack([self.angles(h, w, f).permute(2, 0, 1) for f in frames])[:, None]  # [n, 1, d, h, w]
        cos, sin = torch.cos(ang), torch.sin(ang)
        xh = x.reshape(n, self.heads, d, h, w)
        first, second = xh[:, :, : d // 2], xh[:, :, d // 2:]
        rotated = torch.cat([-second, first], dim=2)
        out = xh * cos + rotated * sin
        return out.reshape(n, c, h, w)


class ImageEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        half = cfg["dim"] // 2
        self.encoder = make_branch(3, half, 1, cfg["img_layers"], cfg["num_groups"])
        self.sem_encoder = make_branch(3, half, 3, cfg["img_layers"], cfg["num_groups"])
        self.rope = AxialRoPE(cfg["dim"], cfg["heads_rope"], cfg["rope_base"])


def guide_size(h, w, oh, ow, max_scale=4):
    """Size the (normalized) guide is resized to before encoding, or None if left as is."""
    if h > max_scale * oh or w > max_scale * ow:
        return (min(h, max_scale * oh, max_scale * ow), min(w, max_scale * ow, max_scale * oh))
    return None


# ----------------------------------------------------------------------------------------------
# Neighbourhood rule
# ----------------------------------------------------------------------------------------------

def nearest_exact_index(dst, in_size, out_size):
    """PyTorch 'nearest-exact' source index: min(floor((dst + 0.5) * scale), in - 1),
    with scale = float32(in / out) and the product rounded to float32."""
    dst = np.asarray(dst, dtype=np.int64)
    scale = np.float32(in_size) / np.float32(out_size)
    prod = (dst.astype(np.float32) + np.float32(0.5)) * scale
    return np.minimum(np.floor(prod).astype(np.int64), in_size - 1)


def effective_kernel(kernel_size, low):
    return min(kernel_size, low)


def window_start_grouped(i, length, k, d):
    """Start (in upsampled coordinates) of the dilated window of query i.

    Positions with the same residue g = i mod d form a sub-grid of L_g = ceil((length-g)/d)
    points; inside it the window of k consecutive points is centred on i and clamped."""
    g, c = i % d, i // d
    lg = (length - g + d - 1) // d
    s = min(max(c - k // 2, 0), lg - k)
    return g + d * s


def window_start_natten(i, length, k, d):
    """Same start, written the way NATTEN's (legacy) kernels compute it. Odd k only."""
    nh = k // 2
    if d <= 1:
        return max(i - nh, 0) + (length - i - nh - 1 if i + nh >= length else 0)
    if i - nh * d < 0:
        return i % d
    if i + nh * d >= length:
        r = i % d
        a = (length // d) * d
        b = length - a
        if r < b:
            return length - b + r - 2 * nh * d
        return a + r - k * d
    return i - nh * d


def axis_tables(length, low, kernel_size, style="grouped"):
    """Per output index: the k_eff window positions on the upsampled axis and their low-res index.

    Returns (k_eff, up [length, k_eff], low_idx [length, k_eff]) as int64 numpy arrays."""
    if length < low:
        raise ValueError(f"output size {length} smaller than the feature size {low}")
    k = effective_kernel(kernel_size, low)
    d = length // low
    use_natten = style == "natten" and k % 2 == 1
    starts = np.array([
        (window_start_natten if use_natten else window_start_grouped)(i, length, k, d)
        for i in range(length)], dtype=np.int64)
    up = starts[:, None] + d * np.arange(k, dtype=np.int64)[None, :]
    assert up.min() >= 0 and up.max() < length
    return k, up, nearest_exact_index(up, low, length)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------

def _windowed_attention(q, k_src, v_src, rows, cols, heads, scale, probe=None, budget=3e7):
    """q [N,Dq,Ho,Wo]; k_src [N,Dq,Hs,Ws]; v_src [N,C,Hs,Ws]; rows [Ho,kh], cols [Wo,kw]
    index into the src grids. Returns out [N,C,Ho,Wo] and the probe weights (or None)."""
    n, dq, ho, wo = q.shape
    c = v_src.shape[1]
    kh, kw = rows.shape[1], cols.shape[1]
    dk, dv = dq // heads, c // heads
    qh = q.reshape(n, heads, dk, ho, wo)
    kh_src = k_src.reshape(n, heads, dk, *k_src.shape[-2:])
    vh_src = v_src.reshape(n, heads, dv, *v_src.shape[-2:])
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=q.device)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=q.device)
    out = q.new_empty(n, heads, dv, ho, wo)
    per_row = n * heads * max(dk, dv) * kh * wo * kw
    chunk = max(1, int(budget // per_row))
    probe_w = None
    for r0 in range(0, ho, chunk):
        r1 = min(ho, r0 + chunk)
        ry = rows_t[r0:r1]  # [R, kh]
        # gather windows: [N, heads, D, R, kh, Wo, kw]
        kw_win = kh_src[:, :, :, ry][..., cols_t]
        logits = torch.einsum("nhdrx,nhdraxb->nhrxab", qh[:, :, :, r0:r1], kw_win) * scale
        del kw_win
        r = r1 - r0
        wts = torch.softmax(logits.reshape(n, heads, r, wo, kh * kw), dim=-1)
        wts = wts.reshape(n, heads, r, wo, kh, kw)
        vw_win = vh_src[:, :, :, ry][..., cols_t]
        out[:, :, :, r0:r1] = torch.einsum("nhrxab,nhdraxb->nhdrx", wts, vw_win)
        del vw_win
        if probe is not None and r0 <= probe[1] < r1:
            probe_w = wts[probe[0], :, probe[1] - r0, probe[2]].clone()
    return out.reshape(n, c, ho, wo), probe_w


def cell_windows(length, low, kernel_size):
    """Per low-res cell, the k_eff low-res indices of the window that all of its length/low output
    pixels share, or None when length is not a multiple of low (windows then differ per pixel)."""
    if length % low != 0:
        return None
    _, _, low_idx = axis_tables(length, low, kernel_size)
    d = length // low
    per_cell = low_idx.reshape(low, d, -1)
    if not (per_cell == per_cell[:, :1]).all():
        return None
    return per_cell[:, 0]


def _cell_attention(q, keys, values, rows, cols, heads, scale):
    """Same result as _windowed_attention for outputs that are an integer multiple of the low-res grid:
    the window is gathered once per low-res cell (not per output pixel) and the d_y x d_x output
    pixels of a cell attend to it with one batched matmul. Much cheaper to differentiate (training)."""
    n, dq, ho, wo = q.shape
    _, c, h, w = values.shape
    dy, dx = ho // h, wo // w
    kh, kw = rows.shape[1], cols.shape[1]
    dk, dv = dq // heads, c // heads
    # row (head, batch, low-res y, low-res x) of every (head, batch, cell y, cell x, window y, window x)
    cells = (rows[:, None, :, None] * w + cols[None, :, None, :]).reshape(1, -1)
    flat = np.arange(heads * n)[:, None] * (h * w) + cells
    flat = torch.as_tensor(flat.reshape(-1), dtype=torch.long, device=q.device)
    hw, win = h * w, kh * kw

    def windows(src, d):  # [n, heads*d, h, w] -> [heads*n*h*w, kh*kw, d]
        # the small low-res grid is rearranged to one row of d channels per (head, batch, cell), so the
        # gather is a dim-0 row copy and its backward one index_add (no per-head slices)
        rows_major = src.view(n, heads, d, hw).permute(1, 0, 3, 2).reshape(heads * n * hw, d)
        return rows_major.index_select(0, flat).view(heads * n * hw, win, d)

    # queries of the dy x dx output pixels of every cell: [heads*n*h*w, dy*dx, dk]
    qc = q.view(n, heads, dk, h, dy, w, dx).permute(1, 0, 3, 5, 4, 6, 2).reshape(heads * n * hw, dy * dx, dk)
    logits = torch.bmm(qc, windows(keys, dk).transpose(1, 2)) * scale
    out = torch.bmm(torch.softmax(logits, dim=-1), windows(values, dv))  # [heads*n*h*w, dy*dx, dv]
    out = out.view(heads, n, h, w, dy, dx, dv).permute(1, 0, 6, 2, 4, 3, 5)
    return out.reshape(n, c, ho, wo)


def attend(queries, keys, values, kernel_size=9, heads=4, mode="direct", probe=None):
    """Neighbourhood cross-attention of NAF.

    queries [N,D,Ho,Wo], keys [N,D,h,w], values [N,C,h,w].
    mode "official": keys/values are upsampled to (Ho,Wo) with F.interpolate(nearest-exact) and
    the dilated window (NATTEN start rule) is gathered there; mode "direct": the same window is
    gathered straight from the low-res grid through per-axis index tables; mode "cells": like
    "direct", but one window per low-res cell when (Ho,Wo) is a multiple of (h,w) (what training
    uses: same numbers, far cheaper backward); falls back to "direct" otherwise.
    probe: optional (n, y, x); then also returns softmax weights [heads, kh, kw] of that pixel."""
    n, dq, ho, wo = queries.shape
    _, c, h, w = values.shape
    if keys.shape[-2:] != (h, w) or keys.shape[:2] != (n, dq):
        raise ValueError("keys must be [N, D, h, w] matching queries and values")
    if c % heads != 0:
        raise ValueError(f"feature channels {c} not divisible by {heads} heads")
    if ho < h or wo < w:
        raise ValueError(f"output size {(ho, wo)} smaller than the feature size {(h, w)}")
    scale = (dq // heads) ** -0.5
    if mode == "cells":
        rows_c, cols_c = cell_windows(ho, h, kernel_size), cell_windows(wo, w, kernel_size)
        if rows_c is not None and cols_c is not None and probe is None:
            return _cell_attention(queries, keys, values, rows_c, cols_c, heads, scale)
        mode = "direct"
    if mode == "official":
        _, rows, _ = axis_tables(ho, h, kernel_size, style="natten")
        _, cols, _ = axis_tables(wo, w, kernel_size, style="natten")
        k_src = F.interpolate(keys, size=(ho, wo), mode="nearest-exact")
        v_src = F.interpolate(values, size=(ho, wo), mode="nearest-exact")
    elif mode == "direct":
        _, _, rows = axis_tables(ho, h, kernel_size)
        _, _, cols = axis_tables(wo, w, kernel_size)
        k_src, v_src = keys, values
    else:
        raise ValueError(f"unknown mode {mode!r}")
    out, pw = _windowed_attention(queries, k_src, v_src, rows, cols, heads, scale, probe)
    return (out, pw) if probe is not None else out


def attend_bruteforce(queries, keys, values, kernel_size=9, heads=4):
    """Per-pixel python loop of the window rule, float64. Tiny sizes only (tests)."""
    q = queries.double()
    k = keys.double()
    v = values.double()
    n, dq, ho, wo = q.shape
    _, c, h, w = v.shape
    dk, dv = dq // heads, c // heads
    ky, kx = effective_kernel(kernel_size, h), effective_kernel(kernel_size, w)
    dy, dx = ho // h, wo // w
    out = torch.zeros(n, c, ho, wo, dtype=torch.float64)
    scale = dk ** -0.5
    for b in range(n):
        for y in range(ho):
            y0 = window_start_grouped(y, ho, ky, dy)
            ys = [int(nearest_exact_index(y0 + dy * t, h, ho)) for t in range(ky)]
            for x in range(wo):
                x0 = window_start_grouped(x, wo, kx, dx)
                xs = [int(nearest_exact_index(x0 + dx * t, w, wo)) for t in range(kx)]
                for hd in range(heads):
                    qv = q[b, hd * dk:(hd + 1) * dk, y, x]
                    logits = []
                    vals = []
                    for yy in ys:
                        for xx in xs:
                            logits.append(float(qv @ k[b, hd * dk:(hd + 1) * dk, yy, xx]) * scale)
                            vals.append(v[b, hd * dv:(hd + 1) * dv, yy, xx])
                    wts = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
                    out[b, hd * dv:(hd + 1) * dv, y, x] = (wts[:, None] * torch.stack(vals)).sum(0)
    return out


# ----------------------------------------------------------------------------------------------
# Full model
# ----------------------------------------------------------------------------------------------

class NAF(nn.Module):
    """Inference-only NAF with the official parameter names (image_encoder.*)."""

    def __init__(self, config=None):
        super().__init__()
        self.config = dict(DEFAULT_CONFIG, **(config or {}))
        self.image_encoder = ImageEncoder(self.config)
        self.eval()

    def prepare_guide(self, image, output_size):
        cfg = self.config
        mean = torch.tensor(cfg["image_mean"], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["image_std"], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        x = (image - mean) / std
        size = guide_size(x.shape[-2], x.shape[-1], output_size[0], output_size[1], cfg["max_guide_scale"])
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def encode(self, image, output_size, rope_frames=None):
        """RoPE'd queries [N, dim, Ho, Wo] (rope_frames: see AxialRoPE.forward; training only)."""
        enc = self.image_encoder
        x = self.prepare_guide(image, output_size)
        x = torch.cat([enc.encoder(x), enc.sem_encoder(x)], dim=1)
        x = F.adaptive_avg_pool2d(x, output_size)
        return enc.rope(x, rope_frames)

    def forward(self, image, features, output_size, kernel_size=None, mode="direct", probe=None,
                return_queries=False, rope_frames=None):
        output_size = (int(output_size[0]), int(output_size[1]))
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError("image must be [N,3,H,W]")
        if features.dim() != 4 or features.shape[0] != image.shape[0]:
            raise ValueError("features must be [N,C,h,w] with the image's batch size")
        if features.shape[1] % self.config["heads_attn"] != 0:
            raise ValueError(f"feature channels {features.shape[1]} not divisible by {self.config['heads_attn']}")
        if output_size[0] < features.shape[-2] or output_size[1] < features.shape[-1]:
            raise ValueError("output size smaller than the feature size")
        k = self.config["kernel_size"] if kernel_size is None else int(kernel_size)
        queries = self.encode(image, output_size, rope_frames)
        keys = F.adaptive_avg_pool2d(queries, features.shape[-2:])
        res = attend(queries, keys, features.to(queries.dtype), k, self.config["heads_attn"], mode, probe)
        if return_queries:
            return res, queries
        return res


# ----------------------------------------------------------------------------------------------
# Weight files (docs/FORMATS.md)
# ----------------------------------------------------------------------------------------------

def expected_tensors(config=None):
    """Ordered list of (name, shape) of the official state dict."""
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    half = cfg["dim"] // 2
    out = []
    for branch, k in (("encoder", 1), ("sem_encoder", 3)):
        p = f"image_encoder.{branch}"
        out += [(f"{p}.0.weight", [half, 3, k, k]), (f"{p}.0.bias", [half])]
        for layer in range(1, cfg["img_layers"] + 1):
            q = f"{p}.{layer}"
            out += [(f"{q}.norm1.weight", [half]), (f"{q}.norm1.bias", [half]),
                    (f"{q}.conv1.weight", [half, half, k, k]), (f"{q}.conv1.bias", [half]),
                    (f"{q}.norm2.weight", [half]), (f"{q}.norm2.bias", [half]),
                    (f"{q}.conv2.weight", [half, half, k, k]), (f"{q}.conv2.bias", [half])]
    out.append(("image_encoder.rope.periods", [cfg["dim"] // cfg["heads_rope"] // 4]))
    return out


def check_state_dict(sd, config=None):
    """Return a list of problems (missing / unexpected / mis-shaped tensors); empty if fine."""
    exp = dict((n, list(s)) for n, s in expected_tensors(config))
    problems = []
    for name in exp:
        if name not in sd:
            problems.append(f"missing tensor: {name}")
    for name, t in sd.items():
        if name not in exp:
            problems.append(f"unexpected tensor: {name}")
        elif list(t.shape) != exp[name]:
            problems.append(f"wrong shape for {name}: {list(t.shape)}, expected {exp[name]}")
    return problems


# The rules of the C++ loader (modules/naf/src/weights.cpp parseConfig): integer fields with their
# range; a file the C++ side refuses must not load here either.
CONFIG_INT_RANGES = {
    "dim": (8, 4096),
    "heads_attn": (1, 64),
    "heads_rope": (1, 64),
    "kernel_size": (1, 63),
    "img_layers": (0, 16),
    "num_groups": (1, 4096),
    "max_guide_scale": (1, 64),
}


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_problem(cfg):
    """The first reason a naf_config dict is invalid (as cv::naf would refuse it), or None."""
    if not isinstance(cfg, dict):
        return f"is a {type(cfg).__name__}, not a JSON object"
    missing = [key for key in DEFAULT_CONFIG if key not in cfg]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, (lo, hi) in CONFIG_INT_RANGES.items():
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool):
            return f"'{key}' = {v!r} is not an integer"
        if not lo <= v <= hi:
            return f"'{key}' = {v} is outside [{lo}, {hi}]"
    if cfg["kernel_size"] % 2 == 0:
        return f"'kernel_size' = {cfg['kernel_size']} is even"
    if not _is_number(cfg["rope_base"]) or not (math.isfinite(cfg["rope_base"]) and cfg["rope_base"] > 0):
        return f"'rope_base' = {cfg['rope_base']!r} is not a positive number"
    for key in ("image_mean", "image_std"):
        v = cfg[key]
        if (not isinstance(v, list) or len(v) != 3
                or not all(_is_number(x) and math.isfinite(x) and abs(x) <= 1e6 for x in v)):
            return f"'{key}' = {v!r} is not [r, g, b] of finite numbers within 1e6"
    if not all(x > 0 for x in cfg["image_std"]):
        return f"'image_std' = {cfg['image_std']!r} is not positive"
    d, ha, hr, g = cfg["dim"], cfg["heads_attn"], cfg["heads_rope"], cfg["num_groups"]
    if d % ha or d % (4 * hr) or (d // 2) % g:
        return (f"'dim' = {d} does not split into {ha} attention heads, 4 x {hr} RoPE heads and "
                f"{g} groups per branch")
    return None


def provenance_problem(prov):
    """The first reason a naf_provenance value is invalid, or None."""
    if not isinstance(prov, dict):
        return f"is a {type(prov).__name__}, not a JSON object"
    if not isinstance(prov.get("source"), str):
        return f"'source' = {prov.get('source')!r} is not a string"
    if not isinstance(prov.get("trained"), bool):
        return f"'trained' = {prov.get('trained')!r} is not true or false"
    return None


def _strict_json(text):
    """json.loads without the NaN / Infinity extension (standard JSON, as the C++ reader takes)."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def weights_metadata(provenance, config=None):
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    problem = config_problem(cfg)
    if problem:
        raise ValueError(f"naf_config {problem}")
    problem = provenance_problem(provenance)
    if problem:
        raise ValueError(f"naf_provenance {problem}")
    out = {"format": "cv-naf-weights", "format_version": "1"}
    for key, value in (("naf_config", cfg), ("naf_provenance", provenance)):
        try:
            out[key] = json.dumps(value, sort_keys=True, allow_nan=False)
        except ValueError:  # readers refuse the NaN / Infinity that json writes by default
            raise ValueError(f"{key} holds a NaN or infinite number: {value!r}"[:300]) from None
    return out


def save_weights(path, state_dict, provenance, config=None):
    """Writes a cv-naf-weights file (atomically); refuses what load_weights would refuse."""
    from safetensors_io import save_file
    problem = config_problem(dict(DEFAULT_CONFIG, **(config or {})))
    if problem:  # before expected_tensors, which divides by the config's numbers
        raise ValueError(f"naf_config {problem}")
    problems = check_state_dict(state_dict, config)
    if problems:
        raise ValueError("; ".join(problems))
    tensors = {n: state_dict[n].detach().float().contiguous().cpu().numpy() for n, _ in expected_tensors(config)}
    for name, arr in tensors.items():
        if not np.isfinite(arr).all():
            raise ValueError(f"tensor {name} contains NaN or Inf")
    metadata = weights_metadata(provenance, config)
    metadata["data_sha256"] = data_section_sha256(tensors)
    save_file(path, tensors, metadata)


def data_section_sha256(tensors):
    """SHA-256 (hex) of the safetensors data section these tensors make: everything after the header.

    Readers (cv::naf) verify it when the metadata has `data_sha256`, so truncation or tampering of
    the tensor bytes is detected even when sizes still add up."""
    from safetensors_io import serialize
    blob = serialize(tensors, {})
    (header_len,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(blob[8 + header_len:]).hexdigest()


def load_weights(path):
    """Read and validate a weight file. Returns (state_dict of torch tensors, config, provenance).

    Refuses what the C++ loader refuses (docs/FORMATS.md, "Readers reject")."""
    from safetensors_io import SafetensorsError, deserialize, read_bytes
    try:
        blob = read_bytes(path)
        tensors, meta = deserialize(blob)
    except SafetensorsError as e:
        raise SafetensorsError(e if str(e).startswith(f"{path}:") else f"{path}: {e}") from None
    if meta.get("format") != "cv-naf-weights" or meta.get("format_version") != "1":
        raise SafetensorsError(f"{path}: not a cv-naf-weights v1 file")
    for key in ("naf_config", "naf_provenance"):
        if key not in meta:
            raise SafetensorsError(f"{path}: __metadata__ has no '{key}'")
    parsed = {}
    for key, check in (("naf_config", config_problem), ("naf_provenance", provenance_problem)):
        try:
            parsed[key] = _strict_json(meta[key])
        except ValueError as e:  # JSONDecodeError is one
            raise SafetensorsError(f"{path}: {key} is not JSON ({e})") from None
        problem = check(parsed[key])
        if problem:
            raise SafetensorsError(f"{path}: {key} {problem}")
    cfg, prov = parsed["naf_config"], parsed["naf_provenance"]
    for name, arr in tensors.items():
        if arr.dtype != np.float32:
            raise SafetensorsError(f"{path}: {name} is not F32")
    if "data_sha256" in meta:
        expected = meta["data_sha256"]
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise SafetensorsError(f"{path}: data_sha256 {expected[:80]!r} is not 64 lowercase hex digits")
        (header_len,) = struct.unpack("<Q", blob[:8])
        actual = hashlib.sha256(blob[8 + header_len:]).hexdigest()
        if actual != expected:
            raise SafetensorsError(f"{path}: tensor data SHA-256 {actual} does not match the metadata "
                                   f"({expected}): corrupted or tampered with")
    sd = {n: torch.from_numpy(a) for n, a in tensors.items()}
    problems = check_state_dict(sd, cfg)
    if problems:
        raise SafetensorsError(f"{path}: " + "; ".join(problems))
    for name, arr in tensors.items():
        if not np.isfinite(arr).all():
            raise SafetensorsError(f"{path}: tensor {name} contains NaN or Inf")
    # RoPE divides by its periods: zero or subnormal ones give NaN queries (the C++ check)
    periods = tensors["image_encoder.rope.periods"]
    if not (periods >= np.finfo(np.float32).tiny).all():
        bad = periods[~(periods >= np.finfo(np.float32).tiny)][0]
        raise SafetensorsError(f"{path}: RoPE period {bad!r} is not a positive normal float")
    return sd, cfg, prov


def load_model(path):
    sd, cfg, _ = load_weights(path)
    model = NAF(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()
