#!/usr/bin/env python3
"""The attention kernels side by side, from naf_cuda_bench's JSON lines (scripts/gpu_check.sh
writes them to bench.jsonl): one row per configuration and mode, one column per requested
kernel (--attention), each cell the attention stage time and the whole forward's median in ms.
A kernel that fell back to another says which ran. Only the auto convolution path with the
default tail is compared (the other lines measure other things).

    python3 scripts/attention_summary.py bench.jsonl
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from json_lines import default_tail, json_objects  # noqa: E402

CHOOSERS = ("default", "auto", "measured")  # they pick a kernel: the cell names the one they ran
ORDER = ["default", "auto", "measured", "tiled", "tiled-chunked", "cell", "cell-mma", "general"]


def read_lines(paths):
    """Result lines (dicts with an attention time and no error) of the given JSON-lines files."""
    return [d for d in json_objects(paths)
            if "error" not in d and "attention_ms" in d and d.get("path", "auto") == "auto" and default_tail(d)]


def summarize(lines):
    """{(config, mode): {requested kernel: (attention ms, median ms, kernel used)}}; a later line
    for the same cell replaces an earlier one."""
    table = {}
    for d in lines:
        key = (d.get("config", "?"), d.get("mode", "?"))
        requested = d.get("attention", "default")
        table.setdefault(key, {})[requested] = (d["attention_ms"], d.get("median_ms"), d.get("attention_used", "?"))
    return table


def render(table):
    kernels = sorted({k for row in table.values() for k in row}, key=lambda k: (ORDER.index(k) if k in ORDER else 99, k))
    lines = ["| config | mode | " + " | ".join(kernels) + " |", "|---|---|" + "---|" * len(kernels)]
    for (config, mode), row in table.items():
        cells = []
        for k in kernels:
            if k not in row:
                cells.append("-")
                continue
            attention, median, used = row[k]
            text = f"{attention:.2f} ({median:.2f})" if median is not None else f"{attention:.2f}"
            if k in CHOOSERS:
                text += f" {used}"
            elif used != k:
                text += f" ran {used}"
            cells.append(text)
        lines.append(f"| {config} | {mode} | " + " | ".join(cells) + " |")
    lines.append("attention stage ms (whole forward median ms); default, auto and measured: the kernel they chose")
    return "\n".join(lines)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    table = summarize(read_lines(argv[1:]))
    if not table:
        print("no attention results in " + ", ".join(argv[1:]))
        return 1
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
