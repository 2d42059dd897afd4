"""The GPU table of benchmarks/run_benchmarks.py --gpu-results, from JSON lines of naf_cuda_bench
and bench_reference.py --device cuda (made up here: no GPU needed)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "run_benchmarks.py")


def ours(mode, median_ms, attention="tiled", **extra):
    line = {"config": "paper", "path": "auto", "conv_path": "cudnn", "mode": mode, "device": "GPU X",
            "median_ms": median_ms, "fps": 1000.0 / median_ms, "encoder_ms": median_ms * 0.6,
            "attention_ms": median_ms * 0.3, "engine_MB": 600.0, "device_used_delta_MB": 618.0, "io_MB": 297.4,
            "rel_l2_vs_fp32": 0.0 if mode == "fp32" else 2.5e-5, "attention": attention}
    line.update(extra)
    return line


def peer(tf32, forward_s):
    return {"config": "paper", "device": "GPU X", "mode": "official", "tf32": tf32, "encoder_s": [0.03] * 3,
            "forward_s": [forward_s] * 3, "max_cuda_MB": 1235.0}


def run_table(tmp_path, lines):
    results = tmp_path / "gpu.jsonl"
    results.write_text("== a log line that is not JSON\n" + "\n".join(json.dumps(l) for l in lines) + "\n")
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n\n## GPU\n\nHand-written intro.\n\n"
                   "| config | ours CUDA fp32 | old |\n|---|---|---|\n| paper | not measured | x |\n\n"
                   "## Next\n\nkept\n")
    out = subprocess.run([sys.executable, SCRIPT, "--gpu-results", str(results), "--doc", str(doc)],
                         capture_output=True, text=True, check=True).stdout
    return out, doc.read_text()


def paper_row(text):
    return next(l for l in text.splitlines() if l.startswith("| paper"))


def test_gpu_table_compares_like_for_like_and_replaces_the_old_table(tmp_path):
    out, doc = run_table(tmp_path, [ours("fp32", 10.0), ours("tf32", 5.0), peer(False, 0.160), peer(True, 0.150)])
    row = paper_row(out)
    assert "10.0 ms, 100 FPS" in row and "5.00 ms, 200 FPS, rel. L2 2.5e-05" in row
    assert "160 ms (16x; 1235 MB)" in row  # fp32 peer / our fp32
    assert "150 ms (30x; 1235 MB)" in row  # tf32 peer / our tf32
    assert "not measured" not in doc and "Hand-written intro." in doc and "kept" in doc
    assert doc.count("BEGIN GENERATED GPU") == 1 and paper_row(doc) == row
    # a second run replaces the generated block instead of adding one
    _, doc2 = run_table(tmp_path, [ours("fp32", 20.0), ours("tf32", 5.0)])
    assert doc2.count("BEGIN GENERATED GPU") == 1


def test_gpu_table_has_a_column_for_the_float16_encoder(tmp_path):
    out, _ = run_table(tmp_path, [ours("fp32", 10.0), ours("tf32", 5.0), ours("fp16", 4.0, rel_l2_vs_fp32=3.1e-5)])
    header = next(l for l in out.splitlines() if l.startswith("| config"))
    row = paper_row(out)
    assert "ours fp16 (auto)" in header and header.count("|") == row.count("|")
    cells = [c.strip() for c in row.split("|")]
    assert cells[4] == "4.00 ms, 250 FPS, rel. L2 3.1e-05"
    assert "(auto fp16)" in row  # the fastest run gives the encoder / attention split
    # without fp16 lines the column is empty, not an error
    out, _ = run_table(tmp_path, [ours("fp32", 10.0), ours("tf32", 5.0)])
    assert [c.strip() for c in paper_row(out).split("|")][4] == "—"


def test_gpu_table_leaves_out_runs_of_the_fallback_attention_kernel(tmp_path):
    out, _ = run_table(tmp_path, [ours("fp32", 10.0), ours("tf32", 5.0), ours("tf32", 12.0, attention="general")])
    assert "5.00 ms, 200 FPS" in paper_row(out) and "12.00 ms" not in paper_row(out)


def test_gpu_table_shows_the_engines_default_kernel_of_newer_bench_lines(tmp_path):
    # newer lines name the kernel asked for ("default": the engine's) and the one that ran; an
    # explicit --attention run stays out of the table even when it asked for the default kernel
    out, _ = run_table(tmp_path, [ours("fp32", 10.0, attention="default", attention_used="tiled"),
                                  ours("tf32", 4.5, attention="default", attention_used="tiled"),
                                  ours("tf32", 4.0, attention="tiled", attention_used="tiled"),
                                  ours("tf32", 3.0, attention="general", attention_used="general")])
    row = paper_row(out)
    assert "4.50 ms, 222 FPS" in row and "4.00 ms" not in row and "3.00 ms" not in row


def test_gpu_table_leaves_out_channels_last_tail_runs(tmp_path):
    # explicit --nhwc-tail / --no-nhwc-tail lines are compared by hand, not tabled; lines of the
    # engine's default are (0 before the tail became the default, "default" since)
    out, _ = run_table(tmp_path, [ours("fp32", 10.0, attention="default", attention_used="tiled"),
                                  ours("tf32", 4.5, attention="default", attention_used="tiled", nhwc_tail=0),
                                  ours("tf32", 3.5, attention="default", attention_used="tiled", nhwc_tail=1,
                                       nhwc_tail_used=1)])
    row = paper_row(out)
    assert "4.50 ms, 222 FPS" in row and "3.50 ms" not in row
    out, _ = run_table(tmp_path, [ours("fp32", 10.0, attention="default", attention_used="tiled"),
                                  ours("tf32", 4.4, attention="default", attention_used="tiled",
                                       nhwc_tail="default", nhwc_tail_used=1),
                                  ours("tf32", 4.6, attention="default", attention_used="tiled", nhwc_tail="off",
                                       nhwc_tail_used=0),
                                  ours("tf32", 4.3, attention="default", attention_used="tiled", nhwc_tail="on",
                                       nhwc_tail_used=1)])
    row = paper_row(out)
    assert "4.40 ms, 227 FPS" in row and "4.60 ms" not in row and "4.30 ms" not in row


def test_gpu_table_lists_errors(tmp_path):
    out, _ = run_table(tmp_path, [ours("fp32", 10.0), {"config": "x72", "path": "auto", "mode": "tf32",
                                                       "error": "cudaMalloc failed: out of memory"}])
    assert "out of memory" in out
