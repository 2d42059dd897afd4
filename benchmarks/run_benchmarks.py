#!/usr/bin/python3
"""Runs cv::naf's benchmarks and the peers in one go, prints a table and writes the generated part
of docs/PERFORMANCE.md (between the BEGIN/END GENERATED markers; the rest of the page is kept).

Per configuration: ours (whole forward via the public API, encoder and attention alone), the
peers (our PyTorch reference of the official forward on the CPU, cv::resize bilinear, ximgproc
guided filter), median times, output megapixels/s, peak memory (max RSS of a separate process per
configuration, /usr/bin/time -v), analytic FLOPs and the fraction of the measured FMA peak.

Usage: /usr/bin/python3 benchmarks/run_benchmarks.py [--build build] [--configs paper,x32,...]
       [--reps 3] [--torch-configs paper] [--no-write]
The machine's load average is recorded before each measurement: other jobs on the same cores
slow every number down, so compare only numbers from the same run."""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_reference import CONFIGS  # noqa: E402

PYTHON = "/usr/bin/python3"
DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
BEGIN, END = "<!-- BEGIN GENERATED (benchmarks/run_benchmarks.py) -->", "<!-- END GENERATED -->"
HIDDEN = 128  # encoder branch width (NafConfig.dim / 2)


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def timed(cmd):
    """Runs cmd under /usr/bin/time -v; returns (stdout, max RSS in MB)."""
    # The library refuses calls over its memory budget (8 GiB by default); x72 needs ~15 GB, so
    # the budget is the memory this machine has available when the command starts.
    env = dict(os.environ, NAF_MEMORY_BUDGET=f"{int(mem_available_mb())}M")
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p.stdout, (int(rss.group(1)) / 1024.0 if rss else float("nan"))


def gbench(binary, regex, reps, min_time=0.01):
    """Runs Google Benchmark entries matching regex in one process; returns
    ({name: {"median_s", "counters"}}, max RSS MB)."""
    # JSON to a file: the library may log to stdout.
    out_json = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"naf_bench_{os.getpid()}.json")
    _, rss = timed([binary, f"--benchmark_filter={regex}", f"--benchmark_repetitions={reps}",
                    f"--benchmark_min_time={min_time}", f"--benchmark_out={out_json}",
                    "--benchmark_out_format=json"])
    with open(out_json) as f:
        data = json.load(f)
    os.remove(out_json)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/process_time", "").replace("/real_time", "")
        if b.get("error_occurred"):
            raise RuntimeError(f"{name}: {b.get('error_message', 'error')}")
        if b.get("run_type") == "iteration" and reps > 1:
            runs.setdefault(name, {}).setdefault("all", []).append(b)
            continue
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        runs.setdefault(name, {})["median_s"] = b["real_time"] * scale
        runs[name]["cpu_s"] = b["cpu_time"] * scale  # CPU time of all threads of the process
        runs[name]["counters"] = {k: v for k, v in b.items() if isinstance(v, (int, float))}
    return runs, rss


def peak_flops(binary):
    runs, _ = gbench(binary, "BM_PeakFma", 5)
    peak = {}
    for name, r in runs.items():
        best = max(x["FLOPS"] for x in r.get("all", [r["counters"]]))
        isa, threads = name.split("/")[1], name.split(":")[-1]
        peak[(isa, int(threads))] = best
    return peak


def fmt_s(x):
    if x is None:
        return "—"
    return f"{x * 1e3:.1f} ms" if x < 0.1 else (f"{x:.3f} s" if x < 10 else f"{x:.1f} s")


def fmt_ratio(peer, ours):
    return "—" if peer is None or ours is None else f"{peer / ours:.2g}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--configs", default="paper,x32,mobilesam,x72")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per benchmark (median reported)")
    ap.add_argument("--big-reps", type=int, default=1, help="repetitions for x72")
    ap.add_argument("--torch-configs", default="paper", help="configs where the PyTorch peer runs (1 rep)")
    ap.add_argument("--torch-reps", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/PERFORMANCE.md alone")
    args = ap.parse_args()
    binary = os.path.join(args.build, "benchmarks", "naf_benchmarks")
    configs = [c for c in args.configs.split(",") if c]
    torch_configs = set(c for c in args.torch_configs.split(",") if c)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = [load()]
    peak = peak_flops(binary)
    rows = []
    torch_paper = None
    for cfg in configs:
        ih, iw, c, h, w, oh, ow = CONFIGS[cfg]
        reps = args.big_reps if cfg == "x72" else args.reps
        row = {"cfg": cfg, "shape": f"{c}x{h}x{w} -> {oh}x{ow} (image {ih}x{iw})", "load": load()}
        # Memory bound of the issue: 2x the output tensor + the encoder's activations (two
        # 128-channel buffers at guide resolution + 256-channel queries at output resolution).
        gh, gw = min(ih, 4 * oh, 4 * ow), min(iw, 4 * ow, 4 * oh)
        out_mb = c * oh * ow * 4 / 2**20
        act_mb = (2 * HIDDEN * gh * gw + 2 * HIDDEN * oh * ow) * 4 / 2**20
        row["bound_mb"] = 2 * out_mb + act_mb
        # What the benchmark process needs: one output (the NAF object writes into the reused
        # dst), the activations, the normalized image and ~300 MB of process and libraries.
        need_mb = out_mb + act_mb + 2 * 3 * ih * iw * 4 / 2**20 + 300
        if mem_available_mb() < 1.1 * need_mb + 500:
            # The machine may be shared: never push it into swap or the OOM killer.
            row["skipped"] = (f"skipped: needs ~{need_mb / 1024:.1f} GB, "
                              f"{mem_available_mb() / 1024:.1f} GB were available")
            print(f"{cfg}: {row['skipped']}", flush=True)
            rows.append(row)
            continue
        fwd, rss = gbench(binary, f"^BM_NafForward/{cfg}/", reps)
        row["ours"] = fwd[f"BM_NafForward/{cfg}"]["median_s"]
        row["ours_cpu"] = fwd[f"BM_NafForward/{cfg}"]["cpu_s"]
        row["rss"] = rss
        row["flop"] = fwd[f"BM_NafForward/{cfg}"]["counters"]["flop"]
        parts, _ = gbench(binary, f"^BM_(Encoder|Attention|ResizeBilinear|GuidedFilter)/{cfg}/", reps)
        for key, name in (("enc", "Encoder"), ("att", "Attention"), ("resize", "ResizeBilinear"),
                          ("guided", "GuidedFilter")):
            r = parts[f"BM_{name}/{cfg}"]
            row[key] = r["median_s"]
            if "flop" in r["counters"]:
                row[key + "_flop"] = r["counters"]["flop"]
        row["torch"] = row["torch_enc"] = row["torch_rss"] = None
        row["torch_note"] = ""
        if cfg in torch_configs:
            row["torch_load"] = load()
            out, trss = timed([PYTHON, os.path.join(ROOT, "benchmarks", "bench_reference.py"), cfg,
                               "--reps", str(args.torch_reps)])
            res = json.loads(out.strip().splitlines()[-1])
            row["torch"] = sorted(res["forward_s"])[len(res["forward_s"]) // 2]
            row["torch_enc"] = sorted(res["encoder_s"])[len(res["encoder_s"]) // 2]
            row["torch_rss"] = trss
            if cfg == "paper":
                torch_paper = row["torch"]
        rows.append(row)
        print(f"{cfg}: ours {row['ours']:.3f} s (enc {row['enc']:.3f}, att {row['att']:.3f}), "
              f"torch {row['torch']}, resize {row['resize']:.3f}, guided {row['guided']:.3f}, "
              f"rss {rss:.0f} MB, load {row['load']:.2f}", flush=True)
    loads.append(load())
    for row in rows:
        if "skipped" not in row and row["torch"] is None and torch_paper:
            ih, iw, c, h, w, oh, ow = CONFIGS[row["cfg"]]
            est = torch_paper * (oh * ow * c) / (448 * 448 * 384)
            kv_gb = (256 + c) * oh * ow * 4 / 2**30  # official: K and V upsampled to the output
            row["torch_note"] = (f"not run: est. ~{est / 60:.0f} min from the paper run, "
                                 f"upsampled K/V alone {kv_gb:.1f} GB")

    p1 = peak.get(("avx512", 1)) or peak.get(("avx2", 1))
    lines = [BEGIN, "",
             f"Run {started} on `{os.uname().nodename}` ({os.cpu_count()} cores), load average "
             f"{loads[0]:.2f} at start, {loads[-1]:.2f} at end (other jobs on the same cores inflate "
             f"every time; ratios within a run are comparable). Command: "
             f"`/usr/bin/python3 benchmarks/run_benchmarks.py --configs {args.configs} --reps {args.reps} "
             f"--torch-configs {args.torch_configs}`.", "",
             "Measured FMA peak (fp32, `BM_PeakFma`, best of 5): " +
             ", ".join(f"{isa} {'1 thread per CPU-second' if t == 1 else '2 threads per wall second'}: "
                       f"{v / 1e9:.0f} GFLOPS" for (isa, t), v in sorted(peak.items())) + ".", "",
             "| config | ours (whole NAF) | CPU time | MPix/s | peak RSS (bound) | encoder | attention | "
             "PyTorch official (ratio) | PyTorch encoder | cv::resize (ratio) | guided filter (ratio) | "
             "GFLOP (enc + att) | % of peak (per CPU-s) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['cfg']}: {r['shape']} | {r['skipped']} |" + " |" * 12)
            continue
        ih, iw, c, h, w, oh, ow = CONFIGS[r["cfg"]]
        mpix = oh * ow / 1e6 / r["ours"]
        torch_cell = (f"{fmt_s(r['torch'])} ({fmt_ratio(r['torch'], r['ours'])} slower)" if r["torch"]
                      else r["torch_note"] or "not run")
        pct = 100 * r["flop"] / r["ours"] / (2 * p1) if p1 else float("nan")
        pct_cpu = 100 * r["flop"] / r["ours_cpu"] / p1 if p1 else float("nan")
        lines.append(
            f"| {r['cfg']}: {r['shape']} | {fmt_s(r['ours'])} | {fmt_s(r['ours_cpu'])} | {mpix:.2f} | {r['rss']:.0f} MB "
            f"({r['bound_mb']:.0f} MB) | {fmt_s(r['enc'])} | {fmt_s(r['att'])} | {torch_cell} | "
            f"{fmt_s(r['torch_enc'])} | {fmt_s(r['resize'])} ({fmt_ratio(r['resize'], r['ours'])}) | "
            f"{fmt_s(r['guided'])} ({fmt_ratio(r['guided'], r['ours'])}) | "
            f"{r.get('enc_flop', 0) / 1e9:.0f} + {r.get('att_flop', 0) / 1e9:.1f} | {pct:.0f}% ({pct_cpu:.0f}%) | {r['load']:.2f} |")
    lines += ["", "Times are medians of wall-clock time; CPU time is that of all threads of our process "
              "(2 cores: at most 2x the wall time; much less means other jobs took the cores). "
              "% of peak: FLOP / wall time / 2x the 1-thread peak (both cores, undisturbed); in parentheses "
              "FLOP / CPU time / the 1-thread peak: the efficiency of the core time we actually got. "
              "Ratios are peer time / our time (above 1: we are faster). Peak RSS: max resident memory "
              "of the separate process that ran the whole forward (includes the inputs, the weights and "
              "the process itself); bound: the issue's limit, 2x output tensor + encoder activations. "
              "PyTorch peer RSS: " + ", ".join(f"{r['cfg']} {r['torch_rss']:.0f} MB" for r in rows
                                               if r.get("torch_rss")) + ".", "", END]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = open(DOC).read() if os.path.exists(DOC) else f"# Performance\n\n{BEGIN}\n{END}\n"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text += "\n" + table + "\n"
        with open(DOC, "w") as f:
            f.write(text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
