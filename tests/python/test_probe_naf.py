"""Linear-probe evaluation (tools/probe_naf.py): labels, metrics, the probe, and a whole run through
the C++ tool (naf_upsample_cached --input hi, or lo) on a synthetic segmentation set."""
import os

import cv2
import numpy as np
import pytest

import feature_cache
import probe_naf
from safetensors_io import load_file
from test_eval_tools import TOOL, needs_tool

C, HI, IMG = 8, 8, 64  # 8 x 8 feature grid of a 64 px image


def test_label_path_follows_the_images_folder():
    assert probe_naf.label_path_for("/d/camvid/val/images/a_1.jpg") == "/d/camvid/val/labels/a_1.png"
    with pytest.raises(ValueError, match="images"):
        probe_naf.label_path_for("/d/camvid/val/a_1.jpg")


def test_label_is_cropped_like_the_image_and_mapped_to_class_indices(tmp_path):
    os.makedirs(tmp_path / "s" / "labels")
    raw = np.full((4, 6), 11, np.uint8)  # camvid void everywhere ...
    raw[:, 1] = 3  # ... but the first column of the crop (x = 1) is Road ...
    raw[0, 2] = 8  # ... and one Car pixel
    cv2.imwrite(str(tmp_path / "s" / "labels" / "a.png"), raw)
    meta = {"source": str(tmp_path / "s" / "images" / "a.jpg"), "crop_xywh": "1,0,4,4"}
    ids, ignore, _ = probe_naf.dataset_classes("camvid")
    label = probe_naf.load_label(meta, 8, ids, ignore)
    assert label.shape == (8, 8)
    assert (label[:, :2] == 3).all() and (label[:2, 2:4] == 8).all() and (label[2:, 2:] == -1).all()
    raw[3, 3] = 200  # not a camvid class
    cv2.imwrite(str(tmp_path / "s" / "labels" / "a.png"), raw)
    with pytest.raises(ValueError, match="200"):
        probe_naf.load_label(meta, 8, ids, ignore)
    with pytest.raises(ValueError, match="outside"):
        probe_naf.load_label(dict(meta, crop_xywh="3,0,4,4"), 8, ids, ignore)


def test_coco_classes_come_from_the_yaml(tmp_path):
    (tmp_path / "classes.yaml").write_text("names: x\nclasses:\n  0: unlabeled\n  1: person\n  7: train\n")
    ids, ignore, names = probe_naf.dataset_classes("coco128", str(tmp_path))
    assert ids == [1, 7] and ignore == 0 and names == ["person", "train"]


def test_miou_counts_present_classes_and_ignores_unlabelled_pixels():
    label = np.array([[0, 0, 1, -1]])
    pred = np.array([[0, 1, 1, 2]])
    conf = probe_naf.confusion(pred, label, 3)
    assert conf.sum() == 3  # the ignored pixel is not counted
    miou, acc = probe_naf.miou(conf)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2; class 2 absent from the labels
    assert miou == pytest.approx(0.5) and acc == pytest.approx(2 / 3)
    assert probe_naf.miou(probe_naf.confusion(label.clip(0), label.clip(0), 3))[0] == pytest.approx(1.0)


def test_probe_learns_a_linearly_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 5)).astype(np.float32) * 3 + 10  # standardisation matters
    x = x[(np.abs(x[:, 2] - 10) > 0.5) & (np.abs(x[:, 4] - 10) > 0.5)][:3000]  # a margin
    y = (x[:, 2] > 10).astype(np.int64) + 2 * (x[:, 4] > 10)
    probe = probe_naf.train_probe(x, y, 4, seed=0, steps=300, batch=512)
    feats = x.T.reshape(5, 30, 100)
    acc = (probe_naf.predict(probe, feats).reshape(-1) == y).mean()
    assert acc > 0.98


def make_segmentation_set(root, split, count, rng):
    """Images, labels and a --hi-only style cache where class = (feature channel 0 > 0)."""
    cache = root / "cache" / split
    os.makedirs(root / "seg" / split / "images")
    os.makedirs(root / "seg" / split / "labels")
    os.makedirs(cache)
    for i in range(count):
        hi = rng.standard_normal((C, HI, HI)).astype(np.float32)
        hi[0] += np.sign(hi[0])  # a margin around the class boundary
        label = np.where(hi[0] > 0, 1, 0).astype(np.uint8).repeat(IMG // HI, 0).repeat(IMG // HI, 1)
        label[:4, :4] = 11  # some void
        cv2.imwrite(str(root / "seg" / split / "labels" / f"{i}.png"), label)
        image = rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
        meta = {"format": feature_cache.CACHE_FORMAT, "format_version": "1", "crop_xywh": f"0,0,{IMG},{IMG}",
                "source": str(root / "seg" / split / "images" / f"{i}.jpg"), "vfm": "synthetic"}
        from safetensors_io import save_file
        save_file(str(cache / f"{i}.safetensors"), {"features_hi": hi[None], "image": image}, meta)
    return str(cache)


@needs_tool
def test_upsampling_a_hi_only_cache(tmp_path):
    cache = make_segmentation_set(tmp_path, "train", 1, np.random.default_rng(1))
    files = feature_cache.list_entries(cache)
    assert feature_cache.load_entry(files[0])["lo"] is None
    (f, up), = probe_naf.upsampled_maps(TOOL, "nearest", files, 2)
    hi = feature_cache.load_entry(f)["hi"]
    np.testing.assert_array_equal(up, hi.repeat(2, axis=1).repeat(2, axis=2))
    # the default input (features_lo) is missing: a clear error, no output
    out = tmp_path / "out"
    import subprocess
    proc = subprocess.run([TOOL, "--method", "bilinear", "--out", str(out), files[0]], capture_output=True, text=True)
    assert proc.returncode != 0 and "--input hi" in proc.stderr
    assert not os.path.exists(out / os.path.basename(files[0]))
    proc = subprocess.run([TOOL, "--method", "nearest", "--input", "hi", "--scale", "0x", "--out", str(out), files[0]],
                          capture_output=True, text=True)
    assert proc.returncode != 0


@needs_tool
def test_guide_rgb_channels_are_the_image_at_the_output_size(tmp_path):
    cache = make_segmentation_set(tmp_path, "train", 1, np.random.default_rng(2))
    files = feature_cache.list_entries(cache)
    (_, plain), = probe_naf.upsampled_maps(TOOL, "nearest", files, 2)
    (_, with_rgb), = probe_naf.upsampled_maps(TOOL, "nearest", files, 2, append_guide_rgb=True)
    assert with_rgb.shape == (C + 3, 2 * HI, 2 * HI)
    np.testing.assert_array_equal(with_rgb[:C], plain)
    # 64 px image -> 16 px output: each output pixel is the mean of a 4 x 4 block, channels RGB
    image = feature_cache.load_entry(files[0])["image"].astype(np.float64)
    blocks = image.reshape(2 * HI, 4, 2 * HI, 4, 3).mean(axis=(1, 3))[:, :, ::-1].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(with_rgb[C:], blocks, atol=0.6 / 255.0)


@needs_tool
def test_lo_input_upsamples_the_half_size_features_and_needs_them(tmp_path):
    cache = make_segmentation_set(tmp_path, "train", 2, np.random.default_rng(3))
    files = feature_cache.list_entries(cache)
    # give the first entry features_lo (what naf_extract_features without --hi-only adds)
    entry = feature_cache.load_entry(files[0])
    lo = np.random.default_rng(4).standard_normal((C, HI // 2, HI // 2)).astype(np.float32)
    feature_cache.write_entry(files[0], entry["image"], entry["hi"], lo, entry["meta"])
    (_, up), = probe_naf.upsampled_maps(TOOL, "nearest", files[:1], 4, feature_input="lo")
    # lo at 4x is the hi grid at 2x: the same output size as the protocol's hi input at 2x
    assert up.shape == (C, 2 * HI, 2 * HI)
    np.testing.assert_array_equal(up, lo.repeat(4, axis=1).repeat(4, axis=2))
    with pytest.raises(ValueError, match="no features_lo"):
        list(probe_naf.upsampled_maps(TOOL, "nearest", files[1:], 4, feature_input="lo"))
    # the command line refuses a --hi-only cache before computing anything
    with pytest.raises(SystemExit):
        probe_naf.main(["--dataset", "camvid", "--train-cache", cache, "--val-cache", cache, "--tool", TOOL,
                        "--methods", "nearest", "--input", "lo", "--seeds", "0"])
    # with features_lo everywhere the run goes through and writes its own report section
    entry = feature_cache.load_entry(files[1])
    feature_cache.write_entry(files[1], entry["image"], entry["hi"], lo, entry["meta"])
    report = tmp_path / "EVAL.md"
    report.write_text("<!-- eval:linear-probe-camvid:begin (written by tools/probe_naf.py) -->\nkept\n"
                      "<!-- eval:linear-probe-camvid:end -->\n")
    probe_naf.main(["--dataset", "camvid", "--train-cache", cache, "--val-cache", cache, "--tool", TOOL,
                    "--methods", "nearest", "--input", "lo", "--scale", "4", "--seeds", "0", "--pixels-per-image",
                    "50", "--probe-steps", "20", "--threads", "1", "--report", str(report),
                    "--section", "linear-probe-camvid-lo"])
    text = report.read_text()
    assert "\nkept\n" in text  # the protocol's section is left alone
    lo_section = text[text.index("<!-- eval:linear-probe-camvid-lo:begin"):]
    assert f"features {C} x {HI // 2} x {HI // 2} (of the {IMG // 2} px image) upsampled to {2 * HI} x {2 * HI}" in lo_section
    assert "| nearest |" in lo_section


@needs_tool
def test_whole_probe_run_separates_a_feature_defined_class(tmp_path):
    rng = np.random.default_rng(0)
    train = make_segmentation_set(tmp_path, "train", 3, rng)
    val = make_segmentation_set(tmp_path, "val", 2, rng)
    report = str(tmp_path / "EVAL.md")
    probe_naf.main(["--dataset", "camvid", "--train-cache", train, "--val-cache", val, "--tool", TOOL,
                    "--methods", "nearest", "--seeds", "0", "1", "--scale", "2", "--pixels-per-image", "200",
                    "--probe-steps", "300", "--threads", "1", "--report", report])
    text = open(report).read()
    assert "<!-- eval:linear-probe-camvid:begin (written by tools/probe_naf.py) -->" in text
    row = [line for line in text.splitlines() if line.startswith("| nearest |")][0]
    miou = float(row.split("|")[2].split("±")[0])
    # labels are channel 0's sign on the feature grid: nearest-upsampled features predict them exactly
    assert miou > 95.0
    train_files = feature_cache.list_entries(train)
    scores = probe_naf.evaluate_method(TOOL, "nearest", None, train_files, feature_cache.list_entries(val),
                                       list(range(11)), 11, [0],
                                       type("A", (), dict(scale=2, guide_scale=1, append_guide_rgb=False, input="hi", pixels_per_image=200,
                                                          probe_steps=300, threads=1,
                                                          work_dir=None)))
    assert scores.shape == (1, 2) and scores[0, 0] > 0.95
    assert load_file(train_files[0])[1]["crop_xywh"] == f"0,0,{IMG},{IMG}"


def test_result_store_reuses_scores_only_for_the_same_settings_and_weights(tmp_path):
    path = str(tmp_path / "results.json")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    settings = {"seeds": [0, 1], "val": ["a"]}
    store = probe_naf.ResultStore(path, settings)
    assert store.get("naf (x)", "naf", str(weights)) is None
    store.put("naf (x)", "naf", str(weights), np.array([[0.5, 0.9], [0.6, 0.8]]))
    store.put("nearest", "nearest", None, np.array([[0.4, 0.7], [0.4, 0.7]]))
    again = probe_naf.ResultStore(path, settings)
    np.testing.assert_array_equal(again.get("naf (x)", "naf", str(weights)), [[0.5, 0.9], [0.6, 0.8]])
    assert again.get("nearest", "nearest", None) is not None
    weights.write_bytes(b"two")  # retrained weights: computed again
    assert again.get("naf (x)", "naf", str(weights)) is None
    assert probe_naf.ResultStore(path, dict(settings, seeds=[0])).get("nearest", "nearest", None) is None


def test_label_values_beyond_the_class_table_and_bad_crops_are_clear_errors(tmp_path):
    os.makedirs(tmp_path / "s" / "labels")
    raw = np.full((4, 6), 3, np.uint16)
    raw[1, 2] = 300  # a 16-bit label beyond any table of 256 values
    cv2.imwrite(str(tmp_path / "s" / "labels" / "a.png"), raw)
    meta = {"source": str(tmp_path / "s" / "images" / "a.jpg"), "crop_xywh": "1,0,4,4"}
    ids, ignore, _ = probe_naf.dataset_classes("camvid")
    with pytest.raises(ValueError, match=r"label values \[300\] are not classes"):
        probe_naf.load_label(meta, 8, ids, ignore)
    raw[1, 2] = 3
    cv2.imwrite(str(tmp_path / "s" / "labels" / "a.png"), raw)
    assert (probe_naf.load_label(meta, 8, ids, ignore) == 3).all()
    for crop in ("1,0,4", "1,0,a,4", None):
        bad = dict(meta, crop_xywh=crop) if crop else {"source": meta["source"]}
        with pytest.raises(ValueError, match="crop_xywh"):
            probe_naf.load_label(bad, 8, ids, ignore)
    with pytest.raises(ValueError, match="empty or outside"):
        probe_naf.load_label(dict(meta, crop_xywh="1,0,0,4"), 8, ids, ignore)
