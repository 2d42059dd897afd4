#!/usr/bin/env python3
"""Per-kernel summary of an `ncu --csv` log with the metrics gpu__time_duration.sum,
dram__bytes_read.sum and dram__bytes_write.sum (as scripts/gpu_check.sh writes it with
NAF_GPU_NCU=1): calls, total time, DRAM traffic and the bandwidth it reached, per kernel name,
in launch order.

    python3 scripts/ncu_summary.py ncu_x72.csv
"""
import collections
import csv
import re
import sys

TIME_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6,
           "second": 1e6}
BYTES_MB = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "Tbyte": 1e6}
METRICS = {"gpu__time_duration.sum": ("us", TIME_US), "dram__bytes_read.sum": ("read_MB", BYTES_MB),
           "dram__bytes_write.sum": ("write_MB", BYTES_MB)}


def kernel_name(full):
    """'ns::<unnamed>::fooKernel<4>(const float *, int)' -> 'fooKernel<4>'."""
    name = re.sub(r"\(.*", "", full)
    return name.split("::")[-1]


def summarize(lines):
    """Rows of the CSV (the log may hold other lines) -> {kernel: {calls, us, read_MB, write_MB}}."""
    header = None
    launches = collections.OrderedDict()
    for row in csv.reader(lines):
        if row[:1] == ["ID"]:
            header = {name: i for i, name in enumerate(row)}
            continue
        if header is None or len(row) != len(header) or not row[0].isdigit():
            continue
        metric = row[header["Metric Name"]]
        if metric not in METRICS:
            continue
        key, scales = METRICS[metric]
        unit = row[header["Metric Unit"]]
        if unit not in scales:
            raise ValueError(f"unknown unit {unit!r} for {metric}")
        value = float(row[header["Metric Value"]].replace(",", "")) * scales[unit]
        launch = launches.setdefault(int(row[0]), {"name": kernel_name(row[header["Kernel Name"]])})
        launch[key] = value
    per_kernel = collections.OrderedDict()
    for launch in launches.values():
        agg = per_kernel.setdefault(launch["name"], {"calls": 0, "us": 0.0, "read_MB": 0.0, "write_MB": 0.0})
        agg["calls"] += 1
        for key in ("us", "read_MB", "write_MB"):
            agg[key] += launch.get(key, 0.0)
    return per_kernel


def render(per_kernel):
    out = [f"{'kernel':<32} {'calls':>5} {'total us':>10} {'read MB':>9} {'write MB':>9} {'TB/s':>6}"]
    for name, a in per_kernel.items():
        bandwidth = (a["read_MB"] + a["write_MB"]) / a["us"] if a["us"] > 0 else 0.0  # MB/us = TB/s
        out.append(f"{name:<32} {a['calls']:>5} {a['us']:>10.0f} {a['read_MB']:>9.0f} {a['write_MB']:>9.0f} "
                   f"{bandwidth:>6.2f}")
    calls = sum(a["calls"] for a in per_kernel.values())
    out.append(f"{'all':<32} {calls:>5} {sum(a['us'] for a in per_kernel.values()):>10.0f}")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], newline="") as f:
        per_kernel = summarize(f)
    if not per_kernel:
        sys.exit(f"{sys.argv[1]}: no ncu CSV rows with the metrics {', '.join(METRICS)}")
    print(render(per_kernel))


if __name__ == "__main__":
    main()
