"""scripts/ncu_summary.py: per-kernel sums of an `ncu --csv` log (made up here: no GPU needed)."""
import csv
import io
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "ncu_summary.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ncu_summary  # noqa: E402

HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
          "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value"]


def rows(launch, kernel, time, time_unit, read, write, byte_unit="byte"):
    base = [str(launch), "1", "bench", "host", kernel, "1", "13", "(256, 1, 1)", "(4096, 1, 1)", "0", "9.0",
            "Command line profiler metrics"]
    return [base + ["dram__bytes_read.sum", byte_unit, read], base + ["dram__bytes_write.sum", byte_unit, write],
            base + ["gpu__time_duration.sum", time_unit, time]]


def log_text(*launches):
    out = io.StringIO()
    out.write("==PROF== Connected to process 1 (bench)\n")
    out.write('{"config": "paper", "median_ms": 5.0}\n')  # the bench's own JSON line, not a CSV row
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(HEADER)
    for launch in launches:
        for row in rows(*launch):
            writer.writerow(row)
    return out.getvalue()


def test_sums_launches_per_kernel_in_launch_order_with_units_converted():
    text = log_text(
        (0, "naf::<unnamed>::gnApplyKernel(const float *, int)", "1,500,000", "ns", "2,000,000,000", "1,000,000,000"),
        (1, "naf::<unnamed>::cellPoolHwcKernel<4>(const float *)", "1.25", "ms", "4,000", "0", "Mbyte"),
        (2, "naf::<unnamed>::gnApplyKernel(const float *, int)", "500", "us", "1", "1", "Gbyte"),
    )
    per_kernel = ncu_summary.summarize(io.StringIO(text))
    assert list(per_kernel) == ["gnApplyKernel", "cellPoolHwcKernel<4>"]
    apply = per_kernel["gnApplyKernel"]
    assert apply["calls"] == 2
    assert apply["us"] == pytest.approx(2000.0)
    assert apply["read_MB"] == pytest.approx(3000.0)
    assert apply["write_MB"] == pytest.approx(2000.0)
    pool = per_kernel["cellPoolHwcKernel<4>"]
    assert (pool["calls"], pool["us"], pool["read_MB"], pool["write_MB"]) == (1, pytest.approx(1250.0), 4000.0, 0.0)
    table = ncu_summary.render(per_kernel).splitlines()
    # 5000 MB in 2000 us = 2.5 TB/s; the last line counts every launch.
    assert table[1].split() == ["gnApplyKernel", "2", "2000", "3000", "2000", "2.50"]
    assert table[-1].split() == ["all", "3", "3250"]


def test_unknown_unit_is_an_error_not_a_wrong_number():
    text = log_text((0, "k(int)", "3", "fortnights", "1", "1"))
    with pytest.raises(ValueError, match="fortnights"):
        ncu_summary.summarize(io.StringIO(text))


def test_command_line_prints_the_table_and_refuses_a_log_without_rows(tmp_path):
    good = tmp_path / "ncu.csv"
    good.write_text(log_text((0, "ns::tiledAttentionKernel<64>(const float *)", "1,322,000", "ns", "211,000,000",
                              "286,000,000")))
    out = subprocess.run([sys.executable, SCRIPT, str(good)], capture_output=True, text=True, check=True).stdout
    assert "tiledAttentionKernel<64>" in out and "0.38" in out
    empty = tmp_path / "empty.csv"
    empty.write_text("==ERROR== the profiler could not start\n")
    result = subprocess.run([sys.executable, SCRIPT, str(empty)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "no ncu CSV rows" in result.stderr
