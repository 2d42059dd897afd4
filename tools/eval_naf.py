#!/usr/bin/env python3
"""Evaluate feature upsamplers on a VFM feature cache: metric 1 of docs/EVALUATION.md.

Feature reconstruction: the VFM features of the half-size image (cache "features_lo") are
upsampled x2 by every method and compared with the VFM features of the full-size image
("features_hi"): MSE over all values and cosine similarity per cell (mean over cells), per image,
then mean and standard deviation over images. Every method runs in C++ through
`naf_upsample_cached` (cv::naf::upsampleWith), so the numbers are those of the library.

Prints the table and writes it between the markers of the feature-reconstruction section of
--report (created when absent; the rest of the file is kept).

  eval_naf.py --cache out/run1/cache_val --tool build/tools/cli/naf_upsample_cached \
      --naf random=out/run1/naf_random_seed0.safetensors --naf trained=out/run1/naf_trained.safetensors \
      --report docs/EVALUATION.md
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feature_cache import list_entries, load_entry  # noqa: E402
from safetensors_io import load_file  # noqa: E402

BASELINES = ["nearest", "bilinear", "bicubic", "guided", "bilateral"]
BEGIN = "<!-- eval:feature-reconstruction:begin (written by tools/eval_naf.py) -->"
END = "<!-- eval:feature-reconstruction:end -->"


def reconstruction_metrics(pred, target):
    """(MSE, mean per-cell cosine similarity) of two [C,h,w] maps."""
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    mse = float(np.mean((pred - target) ** 2))
    dot = np.sum(pred * target, axis=0)
    norms = np.linalg.norm(pred, axis=0) * np.linalg.norm(target, axis=0)
    cosine = float(np.mean(dot / np.maximum(norms, 1e-12)))
    return mse, cosine


def run_method(tool, method, files, out_dir, weights=None, threads=2, low_res="lo"):
    """Runs naf_upsample_cached; on failure its stderr goes to ours and RuntimeError says what failed."""
    cmd = [tool, "--method", method, "--input", low_res, "--out", out_dir, "--threads", str(threads)]
    if weights:
        cmd += ["--weights", weights]
    try:
        proc = subprocess.run(cmd + list(files), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise RuntimeError(f"cannot run {tool}: {e.strerror or e}") from None
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {last[0][-300:]}")


def evaluate(cache, tool, nafs, methods=None, threads=2, work_dir=None, low_res="lo"):
    """Rows [(label, mse_mean, mse_std, cos_mean, cos_std, per-image MSE array)] for the baselines and
    each (label, weights); images in the order of the cache listing."""
    files = list_entries(cache)
    if not files:
        raise ValueError(f"no cache entries in {cache}")
    targets = {os.path.basename(f): load_entry(f)["hi"] for f in files}
    jobs = [(m, m, None) for m in (methods or BASELINES)] + [(f"naf ({label})", "naf", w) for label, w in nafs]
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for i, (label, method, weights) in enumerate(jobs):
            out = os.path.join(tmp, str(i))
            run_method(tool, method, files, out, weights, threads, low_res)
            scores = []
            for name, target in targets.items():
                up = load_file(os.path.join(out, name))[0]["upsampled"][0]
                scores.append(reconstruction_metrics(up, target))
            s = np.array(scores)
            rows.append((label, s[:, 0].mean(), s[:, 0].std(), s[:, 1].mean(), s[:, 1].std(), s[:, 0]))
    return rows, files


def format_table(rows, reference="bilinear"):
    """Markdown table; with a `reference` row, also each method's MSE change against it, paired per
    image (mean ± sd of the relative change; images where the method is better)."""
    per_image = {r[0]: r[5] for r in rows if len(r) > 5}
    paired = reference in per_image
    head = "| method | MSE (mean ± sd over images) | cosine (mean ± sd) |"
    if paired:
        head += f" MSE vs {reference}, paired per image | images better than {reference} |"
    lines = [head, "|---|---|---|" + ("---|---|" if paired else "")]
    for row in rows:
        label, mse, mse_sd, cos, cos_sd = row[:5]
        line = f"| {label} | {mse:.6f} ± {mse_sd:.6f} | {cos:.4f} ± {cos_sd:.4f} |"
        if paired:
            change = 100.0 * (per_image[label] / per_image[reference] - 1.0)
            better = int(np.sum(per_image[label] < per_image[reference]))
            line += f" {change.mean():+.2f}% ± {change.std():.2f}% | {better}/{len(change)} |"
        lines.append(line)
    return "\n".join(lines)


def section_markers(key="feature-reconstruction", writer="tools/eval_naf.py"):
    """(begin, end) markers of a report section; the default key is metric 1's table."""
    return (f"<!-- eval:{key}:begin (written by {writer}) -->", f"<!-- eval:{key}:end -->")


def write_report(path, section, key="feature-reconstruction", writer="tools/eval_naf.py"):
    """Replaces the section `key` of the markdown file `path` (appends it when absent), atomically."""
    begin, end = section_markers(key, writer)
    block = f"{begin}\n{section}\n{end}"
    text = open(path).read() if os.path.exists(path) else "# Evaluation\n\n## Feature reconstruction\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def parse_naf_specs(parser, specs):
    """--naf LABEL=WEIGHTS options -> [(label, weights)]; a malformed one is a usage error."""
    nafs = []
    for spec in specs:
        label, sep, weights = spec.partition("=")
        if not sep or not weights:
            parser.error(f"--naf expects LABEL=WEIGHTS, got {spec!r}")
        nafs.append((label, weights))
    return nafs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="feature cache of held-out images (naf_extract_features)")
    ap.add_argument("--tool", required=True, help="path of the naf_upsample_cached executable")
    ap.add_argument("--naf", action="append", default=[], metavar="LABEL=WEIGHTS",
                    help="NAF weights to evaluate (repeatable)")
    ap.add_argument("--methods", nargs="*", help=f"baselines (default: {' '.join(BASELINES)})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", help="markdown file whose feature-reconstruction section is (re)written")
    ap.add_argument("--section", default="feature-reconstruction",
                    help="key of the report section to (re)write, e.g. zero-shot-mobilesam-trunk for metric 3")
    ap.add_argument("--input", choices=["lo", "pooled"], default="lo",
                    help="low-res input: lo = the features of the half-size image (metric 1); pooled = the "
                         "full-size image's features averaged over 2 x 2 cells (a coherent low-res input)")
    args = ap.parse_args(argv)
    nafs = parse_naf_specs(ap, args.naf)
    try:
        rows, files = evaluate(args.cache, args.tool, nafs, args.methods, args.threads, low_res=args.input)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"eval_naf: {e}") from None
    first = load_entry(files[0])
    c, h, w = first["hi"].shape
    sets = sorted(set(os.path.dirname(load_entry(f)["meta"].get("source", f)) for f in files))
    low = (f"{c} x {first['lo'].shape[1]} x {first['lo'].shape[2]} features of the half-size image"
           if args.input == "lo" else f"{c} x {h // 2} x {w // 2} features of the full-size image averaged over 2 x 2 cells")
    section = (f"{len(files)} images ({', '.join(sets)}), VFM `{first['meta'].get('vfm', '?')}`: {low} "
               f"upsampled to {c} x {h} x {w} and compared with the features of the full-size image.\n\n"
               + format_table(rows) + "\n\nCommand: `/usr/bin/python3 tools/eval_naf.py "
               + shlex.join(argv if argv is not None else sys.argv[1:]) + "`")
    print(format_table(rows))
    if args.report:
        write_report(args.report, section, args.section)
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
