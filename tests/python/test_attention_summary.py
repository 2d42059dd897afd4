"""scripts/attention_summary.py: the attention kernels side by side from naf_cuda_bench JSON lines
(made up here: no GPU needed)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "attention_summary.py")


def line(config, mode, attention, used, attention_ms, median_ms, **extra):
    d = {"config": config, "mode": mode, "path": "auto", "attention": attention, "attention_used": used,
         "attention_ms": attention_ms, "median_ms": median_ms, "nhwc_tail": "default"}
    d.update(extra)
    return json.dumps(d)


def run(tmp_path, lines):
    path = tmp_path / "bench.jsonl"
    path.write_text("== naf_cuda_bench\n" + "\n".join(lines) + "\n")
    return subprocess.run([sys.executable, SCRIPT, str(path)], capture_output=True, text=True)


def test_one_row_per_config_and_mode_with_each_kernels_times_and_fallbacks(tmp_path):
    result = run(tmp_path, [
        line("x72", "fp16", "default", "tiled", 26.6, 64.4),
        line("x72", "fp16", "cell-mma", "cell-mma", 9.5, 47.3),
        line("x72", "fp16", "measured", "cell-mma", 9.4, 47.1),
        line("paper", "fp16", "cell-mma", "tiled", 1.4, 3.6),  # fell back
        line("x72", "fp16", "tiled", "tiled", 26.0, 63.9, path="builtin"),  # other path: left out
        line("x72", "fp16", "cell", "cell", 27.9, 65.0, nhwc_tail="off"),  # other tail: left out
        json.dumps({"config": "x72", "mode": "tf32", "attention": "cell-mma", "error": "out of memory"}),
    ])
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0] == "| config | mode | default | measured | cell-mma |"
    x72 = next(r for r in rows if r.startswith("| x72 | fp16 |"))
    assert "26.60 (64.40) tiled" in x72 and "9.50 (47.30) |" in x72 and "9.40 (47.10) cell-mma" in x72
    assert "27.9" not in result.stdout and "26.00" not in result.stdout
    paper = next(r for r in rows if r.startswith("| paper | fp16 |"))
    assert "1.40 (3.60) ran tiled" in paper and paper.endswith("| - | - | 1.40 (3.60) ran tiled |")
    assert not any(r.startswith("| x72 | tf32") for r in rows)  # the error line has no times


def test_no_results_is_an_error(tmp_path):
    result = run(tmp_path, [json.dumps({"config": "paper", "error": "no device"})])
    assert result.returncode == 1
    assert "no attention results" in result.stdout
