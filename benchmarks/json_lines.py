"""The JSON lines of naf_cuda_bench and bench_reference.py (gpu_check.sh's bench.jsonl and
torch.jsonl), shared by run_benchmarks.py and scripts/attention_summary.py. No torch import, so
that scripts run where torch is missing can use it."""
import json


def json_objects(paths):
    """The objects, in file order, of the lines that parse as one JSON object; log lines, partial
    lines and other JSON values are skipped."""
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    yield d


def default_tail(d):
    """Whether a result line ran the engine's default tail: an explicit --nhwc-tail / --no-nhwc-tail
    run (1 or "on" / "off") is compared by hand; "default", or 0 from before the channels-last tail
    was the default, is the engine's own."""
    return d.get("nhwc_tail", "default") in ("default", 0)
