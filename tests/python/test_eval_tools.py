"""The C++ evaluation tool (naf_upsample_cached) on caches written by Python, and tools/eval_naf.py.

The tool is found through $NAF_CLI_DIR (set by ctest) or build/tools/cli; the tests skip when it
has not been built."""
import os
import subprocess

import numpy as np
import pytest
import torch

import eval_naf
import feature_cache
import naf_reference as ref
import train_naf
from make_random_weights import write_random_weights
from safetensors_io import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(os.environ.get("NAF_CLI_DIR", os.path.join(ROOT, "build", "tools", "cli")), "naf_upsample_cached")
needs_tool = pytest.mark.skipif(not os.path.exists(TOOL), reason=f"{TOOL} not built")

C, LO, IMG = 8, 6, 96  # 12x12 target, 96 px image: 8 px per target cell (the guide gets resized to 4)


def make_cache(folder, count=2, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = rng.integers(0, 256, size=(IMG, IMG, 3), dtype=np.uint8)
        hi = rng.standard_normal((C, 2 * LO, 2 * LO)).astype(np.float32)
        lo = rng.standard_normal((C, LO, LO)).astype(np.float32)
        feature_cache.write_entry(os.path.join(folder, f"img{i}.safetensors"), image, hi, lo, {"source": f"x/img{i}.png"})
    return sorted(feature_cache.list_entries(folder))


def test_reconstruction_metrics():
    a = np.random.default_rng(0).standard_normal((4, 3, 3))
    assert eval_naf.reconstruction_metrics(a, a) == pytest.approx((0.0, 1.0))
    assert eval_naf.reconstruction_metrics(a, -a)[1] == pytest.approx(-1.0)
    assert eval_naf.reconstruction_metrics(a, 2 * a)[1] == pytest.approx(1.0)
    assert eval_naf.reconstruction_metrics(a, a + 1)[0] == pytest.approx(1.0)


@needs_tool
def test_nearest_reads_python_cache_and_writes_readable_result(tmp_path):
    files = make_cache(str(tmp_path / "cache"))
    eval_naf.run_method(TOOL, "nearest", files, str(tmp_path / "out"))
    for f in files:
        up = load_file(str(tmp_path / "out" / os.path.basename(f)))[0]["upsampled"]
        lo = feature_cache.load_entry(f)["lo"]
        assert up.shape == (1, C, 2 * LO, 2 * LO)
        np.testing.assert_array_equal(up[0], lo.repeat(2, axis=1).repeat(2, axis=2))


@needs_tool
def test_a_bad_file_is_reported_and_the_others_are_still_written(tmp_path):
    files = make_cache(str(tmp_path / "cache"))
    bad = tmp_path / "cache" / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "broken.safetensors").write_bytes(b"an earlier run's output")  # must not pass for this run's
    proc = subprocess.run([TOOL, "--method", "nearest", "--out", str(out), str(bad)] + files,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1, proc.stderr
    for f in files:
        assert load_file(str(out / os.path.basename(f)))[0]["upsampled"].shape == (1, C, 2 * LO, 2 * LO)
    assert not (out / "broken.safetensors").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("naf_upsample_cached: 1 of 3 files failed (2 written); the first: ") and str(bad) in last, last


@needs_tool
def test_cpp_naf_matches_the_training_forward(tmp_path):
    # What the trainer optimises (Python NAF on the pre-resized guide) is what the library computes
    # from the full cached image: same weights, same features -> same output.
    files = make_cache(str(tmp_path / "cache"), count=1)
    weights = str(tmp_path / "w.safetensors")
    write_random_weights(weights, seed=3)
    eval_naf.run_method(TOOL, "naf", files, str(tmp_path / "out"), weights=weights)
    cpp = load_file(str(tmp_path / "out" / os.path.basename(files[0])))[0]["upsampled"]
    data = train_naf.CachedPairs(files)
    model = ref.load_model(weights)
    with torch.no_grad():
        py = train_naf.predict(model, data.guides[0][None], data.lo[0][None], (2 * LO, 2 * LO)).numpy()
    np.testing.assert_allclose(cpp, py, atol=2e-4, rtol=1e-3)


@needs_tool
def test_evaluate_ranks_and_writes_report(tmp_path):
    files = make_cache(str(tmp_path / "cache"))
    # make features_hi the exact nearest upsampling of features_lo: nearest must score MSE 0, cosine 1
    for f in files:
        e = feature_cache.load_entry(f)
        feature_cache.write_entry(f, e["image"], e["lo"].repeat(2, axis=1).repeat(2, axis=2), e["lo"], e["meta"])
    rows, _ = eval_naf.evaluate(str(tmp_path / "cache"), TOOL, [], methods=["nearest", "bilinear"])
    by = {r[0]: r for r in rows}
    assert by["nearest"][1] == pytest.approx(0.0, abs=1e-12) and by["nearest"][3] == pytest.approx(1.0)
    assert by["bilinear"][1] > 1e-3
    report = str(tmp_path / "EVAL.md")
    with open(report, "w") as f:
        f.write("# Evaluation\n\nnotes kept\n")
    eval_naf.write_report(report, "first")
    eval_naf.write_report(report, eval_naf.format_table(rows))
    text = open(report).read()
    assert "notes kept" in text and "first" not in text and "| nearest |" in text
    assert text.count(eval_naf.BEGIN) == 1


EXTRACT = os.path.join(os.path.dirname(TOOL), "naf_extract_features")
MOBILESAM = os.path.join(ROOT, "models", "cache", "mobilesam_encoder_1024_cv46.onnx")


@pytest.mark.skipif(not (os.path.exists(EXTRACT) and os.path.exists(MOBILESAM)),
                    reason="naf_extract_features or the MobileSAM model (scripts/fetch_models.sh) missing")
def test_extract_features_layout_alignment_and_resume(tmp_path):
    image = os.path.join(ROOT, "data", "coco_000000000471_bus.jpg")
    out = str(tmp_path / "cache")
    subprocess.run([EXTRACT, "--out", out, "--threads", "2", image], check=True, capture_output=True)
    (path,) = feature_cache.list_entries(out)
    assert os.path.basename(path).endswith("__data__coco_000000000471_bus.safetensors")
    e = feature_cache.load_entry(path)
    assert e["image"].shape == (1024, 1024, 3) and e["hi"].shape == (256, 64, 64) and e["lo"].shape == (256, 32, 32)
    # the low-res map shows the same image: per cell it points the same way as the 2x2-pooled
    # full-res features (a wrong cell window or quadrant would drop this towards 0)
    pooled = e["hi"].reshape(256, 32, 2, 32, 2).mean(axis=(2, 4))
    assert eval_naf.reconstruction_metrics(e["lo"], pooled)[1] > 0.7  # ~0.82 measured; misaligned ~0.45-0.55
    # a second run skips the finished file
    before = os.path.getmtime(path)
    run = subprocess.run([EXTRACT, "--out", out, image], check=True, capture_output=True, text=True)
    assert "0 written, 1 already there" in run.stdout and os.path.getmtime(path) == before
    # a --hi-only entry is completed by a run without --hi-only: features_hi kept as they are,
    # features_lo the same as a full extraction's
    partial = str(tmp_path / "partial")
    subprocess.run([EXTRACT, "--out", partial, "--hi-only", image], check=True, capture_output=True)
    (partial_path,) = feature_cache.list_entries(partial)
    hi_only = feature_cache.load_entry(partial_path)
    assert hi_only["lo"] is None
    run = subprocess.run([EXTRACT, "--out", partial, image], check=True, capture_output=True, text=True)
    assert "(features_lo added)" in run.stdout and "1 written" in run.stdout
    completed = feature_cache.load_entry(partial_path)
    np.testing.assert_array_equal(completed["hi"], hi_only["hi"])
    np.testing.assert_array_equal(completed["image"], hi_only["image"])
    np.testing.assert_allclose(completed["lo"], e["lo"], rtol=1e-4, atol=1e-5)
    assert completed["meta"]["source"] == image and "seconds_lo_added" in completed["meta"]
    # an entry of another size is not completed (and not overwritten)
    before = os.path.getmtime(partial_path)
    run = subprocess.run([EXTRACT, "--out", partial, "--size", "512", image], capture_output=True, text=True)
    assert run.returncode == 1 and "1024x1024 px entry" in run.stderr and "not --size 512" in run.stderr
    assert os.path.getmtime(partial_path) == before


def test_table_pairs_each_method_with_bilinear_per_image():
    rows = [("bilinear", 2.0, 0.0, 0.9, 0.0, np.array([1.0, 2.0, 4.0])),
            ("naf", 1.9, 0.0, 0.9, 0.0, np.array([0.9, 2.2, 3.6]))]
    table = eval_naf.format_table(rows)
    naf_row = [line for line in table.splitlines() if line.startswith("| naf |")][0]
    # relative changes -10%, +10%, -10%: mean -3.33%, 2 of 3 images better
    assert "-3.33% ± 9.43%" in naf_row and "| 2/3 |" in naf_row
    assert "| +0.00% ± 0.00% | 0/3 |" in table.splitlines()[2]
    assert "paired" not in eval_naf.format_table([r[:5] for r in rows])  # no per-image data: plain table


SHARED_VAL = os.path.join(ROOT, "..", "shared", "data", "photos", "bsds500", "val")
SHIPPED = os.path.join(ROOT, "models", "naf", "naf_default.safetensors")


@pytest.mark.skipif(not (os.path.exists(EXTRACT) and os.path.exists(MOBILESAM) and os.path.isdir(SHARED_VAL)),
                    reason="naf_extract_features, the MobileSAM model or ../shared/data missing")
def test_shipped_weights_beat_bilinear_on_held_out_photos(tmp_path):
    # The real outcome issue 4 asks for, on photos training never saw (the first 3 of bsds500/val):
    # the library's default NAF reconstructs the full-size image's MobileSAM features from the
    # half-size image's better than bilinear, image by image (docs/EVALUATION.md has all 16).
    images = sorted(os.path.join(SHARED_VAL, f) for f in os.listdir(SHARED_VAL) if f.endswith(".jpg"))[:3]
    cache = str(tmp_path / "cache")
    subprocess.run([EXTRACT, "--out", cache, "--threads", "2"] + images, check=True, capture_output=True)
    rows, files = eval_naf.evaluate(cache, TOOL, [("shipped", SHIPPED)], methods=["bilinear"])
    by = {r[0]: r for r in rows}
    bilinear, naf = by["bilinear"][5], by["naf (shipped)"][5]
    assert len(files) == 3
    assert (naf < bilinear).all(), f"NAF MSE {naf} vs bilinear {bilinear}"
    assert by["naf (shipped)"][3] > by["bilinear"][3]  # and a higher mean cosine


@needs_tool
def test_pooled_input_is_the_2x2_mean_of_features_hi(tmp_path):
    # nearest from the pooled input repeats each 2x2 mean of features_hi: the exact expected map
    files = make_cache(str(tmp_path / "cache"))
    eval_naf.run_method(TOOL, "nearest", files, str(tmp_path / "out"), low_res="pooled")
    for f in files:
        up = load_file(str(tmp_path / "out" / os.path.basename(f)))[0]["upsampled"][0]
        hi = feature_cache.load_entry(f)["hi"]
        pooled = hi.reshape(C, LO, 2, LO, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(up, pooled.repeat(2, axis=1).repeat(2, axis=2), rtol=1e-6, atol=1e-6)


def test_a_failing_tool_shows_its_stderr_and_a_one_line_error(tmp_path, capsys):
    tool = tmp_path / "failing_tool"
    tool.write_text("#!/bin/sh\necho 'details line 1' >&2\necho 'cv::naf: weights rejected: bad' >&2\nexit 3\n")
    tool.chmod(0o755)
    files = make_cache(str(tmp_path / "cache"), count=1)
    with pytest.raises(RuntimeError, match=r"failed \(3\): cv::naf: weights rejected: bad"):
        eval_naf.run_method(str(tool), "nearest", files, str(tmp_path / "out"))
    assert "details line 1" in capsys.readouterr().err  # the whole stderr, not only the last line
    with pytest.raises(SystemExit, match=r"^eval_naf: .*failing_tool .*failed \(3\)"):
        eval_naf.main(["--cache", str(tmp_path / "cache"), "--tool", str(tool), "--methods", "nearest"])
    assert "details line 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="eval_naf: cannot run"):
        eval_naf.main(["--cache", str(tmp_path / "cache"), "--tool", str(tmp_path / "none"), "--methods", "nearest"])
