#!/usr/bin/python3
"""Runs cv::naf's benchmarks and the peers in one go, prints a table and writes the generated part
of docs/PERFORMANCE.md (between the BEGIN/END GENERATED markers; the rest of the page is kept).

Per configuration: ours (whole forward via the public API, encoder and attention alone), the
peers (our PyTorch reference of the official forward on the CPU, cv::resize bilinear, ximgproc
guided filter), median times, output megapixels/s, peak memory (max RSS of a separate process per
configuration, /usr/bin/time -v), analytic FLOPs and the fraction of the measured FMA peak.
The configurations of --avx2-configs (default paper) run a second time, ours and the peers, with
every library capped at AVX2: the speed on a CPU without AVX-512.

Usage: /usr/bin/python3 benchmarks/run_benchmarks.py [--build build] [--configs paper,x32,...]
       [--reps 3] [--torch-configs paper] [--avx2-configs paper] [--no-write] [--doc docs/PERFORMANCE.md]

GPU table: python3 benchmarks/run_benchmarks.py --gpu-results FILE [FILE...] reads JSON lines of
kernels' naf_cuda_bench and of bench_reference.py --device cuda (lines that are not JSON are
skipped), runs nothing, prints the table and writes it under "## GPU" of the page, between the
BEGIN/END GENERATED GPU markers.

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
from json_lines import default_tail, json_objects  # noqa: E402

PYTHON = "/usr/bin/python3"
DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
BEGIN, END = "<!-- BEGIN GENERATED (benchmarks/run_benchmarks.py) -->", "<!-- END GENERATED -->"
GPU_BEGIN = "<!-- BEGIN GENERATED GPU (benchmarks/run_benchmarks.py --gpu-results) -->"
GPU_END = "<!-- END GENERATED GPU -->"
GPU_CONFIG_ORDER = ["paper", "x32", "x72", "mobilesam", "dinov2", "tiny"]
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


# An AVX2-only machine, emulated on this one: every library of the run capped at AVX2 (our kernels,
# OpenCV's dispatch, PyTorch's ATen kernels, oneDNN's convolutions, OpenBLAS). Most desktop and
# laptop CPUs have no AVX-512; PERFORMANCE item 47 is what a table without this row hid.
AVX2_ENV = {
    "NAF_CPU_ISA": "avx2",
    "OPENCV_CPU_DISABLE": "AVX512F,AVX512-SKX,AVX512-COMMON,AVX512BW,AVX512CD,AVX512DQ,AVX512VL",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}


def timed(cmd, extra_env=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout, max RSS in MB)."""
    # The library refuses calls over its memory budget (8 GiB by default); x72 needs ~15 GB, so
    # the budget is the memory this machine has available when the command starts.
    env = dict(os.environ, NAF_MEMORY_BUDGET=f"{int(mem_available_mb())}M", **(extra_env or {}))
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p.stdout, (int(rss.group(1)) / 1024.0 if rss else float("nan"))


def gbench(binary, regex, reps, min_time=0.01, extra_env=None):
    """Runs Google Benchmark entries matching regex in one process; returns
    ({name: {"median_s", "counters"}}, max RSS MB)."""
    # JSON to a file: the library may log to stdout.
    out_json = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"naf_bench_{os.getpid()}.json")
    _, rss = timed([binary, f"--benchmark_filter={regex}", f"--benchmark_repetitions={reps}",
                    f"--benchmark_min_time={min_time}", f"--benchmark_out={out_json}",
                    "--benchmark_out_format=json"], extra_env)
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


def cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def cpu_description():
    """'AMD EPYC (family 25, model 1), AVX2 without AVX-512' from /proc/cpuinfo: tables from
    different machines of the same kind are not comparable (Zen 3 and Zen 5 both say AMD EPYC)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "CPU unknown"
    isa = "AVX-512" if cpu_has_avx512() else ("AVX2 without AVX-512" if " avx2" in fields.get("flags", "")
                                               else "neither AVX2 nor AVX-512")
    return (f"{fields.get('model name', 'CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {isa}")


def peak_flops(binary):
    # BM_PeakFma/avx512 reports an error on a CPU without AVX-512 (e.g. Zen 3): measure AVX2 only.
    runs, _ = gbench(binary, "BM_PeakFma" if cpu_has_avx512() else "BM_PeakFma/avx2", 5)
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


# ---- GPU table (--gpu-results) ----------------------------------------------------------------

def read_gpu_results(paths):
    """JSON lines of naf_cuda_bench and bench_reference.py --device cuda. Returns (ours, peers,
    errors, devices): ours[(config, path, mode)] and peers[(config, "tf32" | "fp32")] are the last
    result line seen for that key; errors are (where, message) of the lines with "error"."""
    ours, peers, errors, devices = {}, {}, [], []
    for d in json_objects(paths):
        dev = d.get("device")
        if isinstance(dev, str) and dev not in devices and dev != "cuda" and "error" not in d:
            devices.append(dev)
        is_peer = "forward_s" in d or "max_cuda_MB" in d or ("tf32" in d and "path" not in d)
        if "error" in d:
            where = " ".join(str(d[k]) for k in ("config", "path", "mode") if d.get(k) is not None)
            if is_peer:
                where = f"PyTorch {where} tf32 {'on' if d.get('tf32') else 'off'}"
            errors.append((where or "run", str(d["error"])))
            cfg = d.get("config")
            if cfg and is_peer:
                peers.setdefault((cfg, "tf32" if d.get("tf32") else "fp32"), {"error": d["error"]})
            elif cfg:  # (config, path, mode), (config, path, None) or (config, None, None)
                ours.setdefault((cfg, d.get("path"), d.get("mode")), {"error": d["error"]})
            continue
        if "median_ms" in d and "mode" in d and "config" in d:
            # the table shows the engine's default attention kernel (--attention default; older
            # lines without "attention_used" ran the then default, tiled)
            att = d.get("attention", "tiled")
            if not (att == "default" or ("attention_used" not in d and att == "tiled")):
                continue
            if not default_tail(d):
                continue
            ours[(d["config"], d.get("path", "auto"), d["mode"])] = d
        elif "forward_s" in d and "max_cuda_MB" in d and "config" in d:
            peers[(d["config"], "tf32" if d.get("tf32") else "fp32")] = d
    return ours, peers, errors, devices


def _num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else None


def fmt_ms(ms):
    ms = _num(ms)
    if ms is None:
        return "—"
    return f"{ms:.2f} ms" if ms < 10 else (f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms")


def fmt_fps(fps):
    fps = _num(fps)
    if fps is None:
        return "—"
    return f"{fps:.1f} FPS" if fps < 10 else f"{fps:.0f} FPS"


def fmt_x(x):
    return "—" if x is None else (f"{x:.0f}x" if x >= 10 else f"{x:.2g}x")


def fmt_mb(mb):
    mb = _num(mb)
    return "—" if mb is None else (f"{mb:.1f}" if mb < 10 else f"{mb:.0f}")


def gpu_table(ours, peers, errors, devices, sources):
    """Lines of the generated GPU section (markers included)."""
    configs = sorted({k[0] for k in ours} | {k[0] for k in peers},
                     key=lambda c: (GPU_CONFIG_ORDER.index(c) if c in GPU_CONFIG_ORDER else 99, c))

    def ok(d):
        return d is not None and "error" not in d and _num(d.get("median_ms")) is not None

    def cell_ours(d, with_err=False):
        if d is None:
            return "—"
        if "error" in d:
            return "error (below)"
        text = f"{fmt_ms(d.get('median_ms'))}, {fmt_fps(d.get('fps'))}"
        if d.get("path", "auto") != "auto":
            text += f" ({d['path']})"
        if with_err:
            rel = _num(d.get("rel_l2_vs_fp32"))
            text += f", rel. L2 {rel:.1e}" if rel is not None else ", rel. L2 —"
        if d.get("nonfinite"):
            text += f", {d['nonfinite']} non-finite!"
        return text

    lines = [GPU_BEGIN, "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             + ", ".join(f"`{os.path.basename(p)}`" for p in sources)
             + (f" (device: {'; '.join(devices)})" if devices else "") + ". Command: "
             "`python3 benchmarks/run_benchmarks.py --gpu-results " + " ".join(os.path.basename(p) for p in sources)
             + "`.", "",
             "| config | ours fp32 (auto) | ours tf32 (auto), error vs fp32 | ours fp16 (auto), error vs fp32 | "
             "builtin conv tf32 | auto conv path | "
             "encoder / attention (best) | PyTorch CUDA fp32 (ratio) | PyTorch CUDA tf32 (ratio) | "
             "engine MB (device used) | io MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in configs:
        shape = ""
        if cfg in CONFIGS:
            ih, iw, c, h, w, oh, ow = CONFIGS[cfg]
            shape = f": {c}x{h}x{w} -> {oh}x{ow}"
        # an error of the whole config or of its auto engine stands for the lines it prevented
        failed = ours.get((cfg, "auto", None)) or ours.get((cfg, None, None))
        fp32 = ours.get((cfg, "auto", "fp32"))
        tf32 = ours.get((cfg, "auto", "tf32"))
        fp16 = ours.get((cfg, "auto", "fp16"))
        b_tf32 = ours.get((cfg, "builtin", "tf32")) or ours.get((cfg, "builtin", None)) \
            or ours.get((cfg, None, None))
        mine = [d for (c_, _, _), d in ours.items() if c_ == cfg and ok(d)]
        best = min(mine, key=lambda d: d["median_ms"]) if mine else None
        if fp32 is None and tf32 is None:  # no auto engine run: show another path's lines
            for (c_, p_, m_), d in ours.items():
                if c_ == cfg and p_ != "auto":
                    if m_ == "fp32" and fp32 is None:
                        fp32 = d
                    if m_ == "tf32" and tf32 is None:
                        tf32 = d
        conv = next((d.get("conv_path") for d in (fp32, tf32) if d and d.get("conv_path")), None)
        fp32, tf32 = fp32 or failed, tf32 or failed
        enc_att = "—"
        if best is not None:
            enc_att = (f"{fmt_ms(best.get('encoder_ms'))} / {fmt_ms(best.get('attention_ms'))} "
                       f"({best.get('path', '?')} {best.get('mode', '?')})")

        def peer_cell(d, same_mode):
            # like for like: the fp32 peer against our fp32 line, the tf32 peer against our tf32 line
            ref = same_mode if ok(same_mode) else best
            if d is None:
                return "—"
            if "error" in d:
                return "out of memory" if d["error"] == "out of memory" else "error (below)"
            fw = sorted(x for x in d.get("forward_s", []) if _num(x) is not None)
            if not fw:
                return "—"
            ms = fw[len(fw) // 2] * 1e3
            ratio = fmt_x(ms / ref["median_ms"]) if ref is not None and ref["median_ms"] > 0 else "—"
            mem = _num(d.get("max_cuda_MB"))
            return f"{fmt_ms(ms)} ({ratio}; {mem:.0f} MB)" if mem is not None else f"{fmt_ms(ms)} ({ratio})"

        mem_src = best or fp32 or tf32
        engine_mb = "—"
        if mem_src is not None and "error" not in mem_src:
            engine_mb = fmt_mb(mem_src.get("engine_MB"))
            if _num(mem_src.get("device_used_delta_MB")) is not None:
                engine_mb += f" ({fmt_mb(mem_src.get('device_used_delta_MB'))})"
        io_mb = next((fmt_mb(d.get("io_MB")) for d in (mem_src, fp32, tf32, b_tf32)
                      if d is not None and _num(d.get("io_MB")) is not None), "—")
        lines.append(f"| {cfg}{shape} | {cell_ours(fp32)} | {cell_ours(tf32, True)} | {cell_ours(fp16, True)} | "
                     f"{fmt_ms(b_tf32.get('median_ms')) if ok(b_tf32) else ('error (below)' if b_tf32 else '—')} | "
                     f"{conv or '—'} | {enc_att} | {peer_cell(peers.get((cfg, 'fp32')), fp32)} | "
                     f"{peer_cell(peers.get((cfg, 'tf32')), tf32)} | {engine_mb} | {io_mb} |")
    lines += ["", "Ours: `naf_cuda_bench` (kernels/bench), batch 1, `Engine::forwardDevice` on device-resident "
              "inputs, median wall time of the timed calls (each returns when the output is written), FPS = "
              "1000 / median. auto: cuDNN convolutions when built in and usable (auto conv path), else the "
              "builtin kernels; builtin conv: the same engine forced to the builtin convolutions. Error vs fp32: "
              "relative L2 of the tf32 or fp16 output against an fp32 forward of the same engine with the tiled "
              "attention kernel (fp16: `MathMode::FP16`, the float16 encoder). Encoder / attention: "
              "device stage times (CUDA events) of the fastest of our runs (path and mode in parentheses). "
              "PyTorch: `bench_reference.py --device cuda` (tools/naf_reference.py, official mode: K/V upsampled "
              "to the output), median forward time; ratio = PyTorch time / our time in the same mode (fp32 / "
              "tf32, auto path; above 1: we are faster); its peak `torch.cuda.max_memory_allocated` after the semicolon. Engine MB: "
              "`Engine::deviceBytes()` (weights + scratch), in parentheses the growth of the device's used "
              "memory (cudaMemGetInfo) from before the engine was built to after the timed calls; io MB: "
              "image + features + output tensors."]
    if errors:
        lines += ["", "Errors:", ""]
        for where, msg in errors:
            msg = " ".join(msg.split())
            lines.append(f"- {where}: {msg[:300]}{'...' if len(msg) > 300 else ''}")
    lines += ["", GPU_END]
    return lines


def write_gpu_section(doc, block):
    """Puts block (markers included) into doc: over the old markers; else over the hand-written
    table under "## GPU" (one that starts with "| config | ours CUDA fp32 |"); else after the first
    paragraph under that heading; else in a new "## GPU" section at the end."""
    text = open(doc).read() if os.path.exists(doc) else "# Performance\n"
    if GPU_BEGIN in text and GPU_END in text and text.index(GPU_BEGIN) < text.index(GPU_END):
        text = text[:text.index(GPU_BEGIN)] + block + text[text.index(GPU_END) + len(GPU_END):]
    else:
        lines = text.split("\n")
        head = next((i for i, l in enumerate(lines) if l.strip() == "## GPU"), None)
        if head is None:
            text = text.rstrip("\n") + "\n\n## GPU\n\n" + block + "\n"
        else:
            end = next((i for i in range(head + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            start = next((i for i in range(head + 1, end)
                          if lines[i].replace(" ", "").startswith("|config|oursCUDAfp32|")), None)
            if start is not None:
                stop = start
                while stop < end and lines[stop].startswith("|"):
                    stop += 1
                lines[start:stop] = block.split("\n")
            else:
                # after the heading's first paragraph (the first blank line after some text)
                i = head + 1
                while i < end and not lines[i].strip():
                    i += 1
                while i < end and lines[i].strip():
                    i += 1
                lines[i:i] = [""] + block.split("\n")
            text = "\n".join(lines)
    with open(doc, "w") as f:
        f.write(text)


def gpu_main(args):
    missing = [p for p in args.gpu_results if not os.path.exists(p)]
    if missing:
        sys.exit(f"--gpu-results: no such file: {', '.join(missing)}")
    ours, peers, errors, devices = read_gpu_results(args.gpu_results)
    if not ours and not peers and not errors:
        sys.exit(f"--gpu-results: no result lines in {', '.join(args.gpu_results)}")
    block = "\n".join(gpu_table(ours, peers, errors, devices, args.gpu_results))
    print(block)
    if not args.no_write:
        write_gpu_section(args.doc, block)
        print(f"wrote {args.doc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--configs", default="paper,x32,mobilesam,x72,dinov2")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per benchmark (median reported)")
    ap.add_argument("--big-reps", type=int, default=1, help="repetitions for x72")
    ap.add_argument("--torch-configs", default="paper", help="configs where the PyTorch peer runs (1 rep)")
    ap.add_argument("--torch-reps", type=int, default=1)
    ap.add_argument("--avx2-configs", default="paper",
                    help="configs also run with every library capped at AVX2 (an AVX2-only machine; "
                         "the PyTorch peer too where --torch-configs has the config)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/PERFORMANCE.md alone")
    ap.add_argument("--doc", default=DOC, help="page to write the generated table into (default: %(default)s)")
    ap.add_argument("--gpu-results", nargs="+", metavar="FILE",
                    help="JSON lines of naf_cuda_bench / bench_reference.py --device cuda: write the GPU table "
                         "from them (runs nothing)")
    args = ap.parse_args()
    if args.gpu_results:
        gpu_main(args)
        return
    binary = os.path.join(args.build, "benchmarks", "naf_benchmarks")
    configs = [c for c in args.configs.split(",") if c]
    torch_configs = set(c for c in args.torch_configs.split(",") if c)
    jobs = [(c, None) for c in configs] + [(c, "AVX2") for c in args.avx2_configs.split(",") if c]

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = [load()]
    peak = peak_flops(binary)
    rows = []
    torch_paper = None
    for cfg, isa in jobs:
        ih, iw, c, h, w, oh, ow = CONFIGS[cfg]
        reps = args.big_reps if cfg == "x72" else args.reps
        env = AVX2_ENV if isa == "AVX2" else None
        row = {"cfg": cfg, "isa": isa, "label": f"{cfg}, AVX2 only" if isa else cfg,
               "shape": f"{c}x{h}x{w} -> {oh}x{ow} (image {ih}x{iw})", "load": load()}
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
            print(f"{row['label']}: {row['skipped']}", flush=True)
            rows.append(row)
            continue
        fwd, rss = gbench(binary, f"^BM_NafForward/{cfg}/", reps, extra_env=env)
        row["ours"] = fwd[f"BM_NafForward/{cfg}"]["median_s"]
        row["ours_cpu"] = fwd[f"BM_NafForward/{cfg}"]["cpu_s"]
        row["rss"] = rss
        row["flop"] = fwd[f"BM_NafForward/{cfg}"]["counters"]["flop"]
        parts, _ = gbench(binary, f"^BM_(Encoder|Attention|ResizeBilinear|GuidedFilter)/{cfg}/", reps,
                          extra_env=env)
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
                               "--reps", str(args.torch_reps)], env)
            res = json.loads(out.strip().splitlines()[-1])
            row["torch"] = sorted(res["forward_s"])[len(res["forward_s"]) // 2]
            row["torch_enc"] = sorted(res["encoder_s"])[len(res["encoder_s"]) // 2]
            row["torch_rss"] = trss
            if cfg == "paper" and not isa:
                torch_paper = row["torch"]
        rows.append(row)
        print(f"{row['label']}: ours {row['ours']:.3f} s (enc {row['enc']:.3f}, att {row['att']:.3f}), "
              f"torch {row['torch']}, resize {row['resize']:.3f}, guided {row['guided']:.3f}, "
              f"rss {rss:.0f} MB, load {row['load']:.2f}", flush=True)
    loads.append(load())
    for row in rows:
        if "skipped" not in row and row["torch"] is None and torch_paper and not row["isa"]:
            ih, iw, c, h, w, oh, ow = CONFIGS[row["cfg"]]
            est = torch_paper * (oh * ow * c) / (448 * 448 * 384)
            kv_gb = (256 + c) * oh * ow * 4 / 2**30  # official: K and V upsampled to the output
            est_text = f"~{est / 60:.0f} min" if est >= 90 else f"~{est:.0f} s"
            row["torch_note"] = (f"not run: est. {est_text} from the paper run, "
                                 f"upsampled K/V alone {kv_gb:.1f} GB")

    p1 = peak.get(("avx512", 1)) or peak.get(("avx2", 1))
    lines = [BEGIN, "",
             f"Run {started} on `{os.uname().nodename}` ({os.cpu_count()} cores of {cpu_description()}), load average "
             f"{loads[0]:.2f} at start, {loads[-1]:.2f} at end (other jobs on the same cores inflate "
             f"every time; ratios within a run are comparable). Command: "
             f"`/usr/bin/python3 benchmarks/run_benchmarks.py --configs {args.configs} --reps {args.reps} "
             f"--torch-configs {args.torch_configs} --avx2-configs {args.avx2_configs}`.", "",
             "Measured FMA peak (fp32, `BM_PeakFma`, best of 5): " +
             ", ".join(f"{isa} {'1 thread per CPU-second' if t == 1 else '2 threads per wall second'}: "
                       f"{v / 1e9:.0f} GFLOPS" for (isa, t), v in sorted(peak.items())) + ".", "",
             "| config | ours (whole NAF) | CPU time | MPix/s | peak RSS (bound) | encoder | attention | "
             "PyTorch official (ratio) | PyTorch encoder | cv::resize (ratio) | guided filter (ratio) | "
             "GFLOP (enc + att) | % of peak (per CPU-s) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']}: {r['shape']} | {r['skipped']} |" + " |" * 12)
            continue
        ih, iw, c, h, w, oh, ow = CONFIGS[r["cfg"]]
        mpix = oh * ow / 1e6 / r["ours"]
        torch_cell = (f"{fmt_s(r['torch'])} ({fmt_ratio(r['torch'], r['ours'])} slower)" if r["torch"]
                      else r["torch_note"] or "not run")
        p = peak.get(("avx2", 1)) if r["isa"] else p1  # an AVX2 row against the AVX2 peak
        pct = 100 * r["flop"] / r["ours"] / (2 * p) if p else float("nan")
        pct_cpu = 100 * r["flop"] / r["ours_cpu"] / p if p else float("nan")
        lines.append(
            f"| {r['label']}: {r['shape']} | {fmt_s(r['ours'])} | {fmt_s(r['ours_cpu'])} | {mpix:.2f} | {r['rss']:.0f} MB "
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
              "AVX2-only rows: every library of the row capped at AVX2 (ours with NAF_CPU_ISA=avx2, OpenCV, "
              "PyTorch's ATen and oneDNN), as on a CPU without AVX-512; % of peak against the AVX2 peak. "
              "PyTorch peer RSS: " + (", ".join(f"{r['label']} {r['torch_rss']:.0f} MB" for r in rows
                                                if r.get("torch_rss")) or "not run") + ".", "", END]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = open(args.doc).read() if os.path.exists(args.doc) else f"# Performance\n\n{BEGIN}\n{END}\n"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text += "\n" + table + "\n"
        with open(args.doc, "w") as f:
            f.write(text)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
