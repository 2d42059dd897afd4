"""Training script: tiny real runs on a synthetic feature cache (tools/train_naf.py)."""
import csv
import os

import numpy as np
import pytest
import torch

import feature_cache
import naf_reference as ref
import train_naf

C, LO = 8, 6  # channels, low-res grid (target 12x12, image 48 px = 4 px per target cell)


def make_cache(folder, count=2, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = rng.integers(0, 256, size=(4 * 2 * LO, 4 * 2 * LO, 3), dtype=np.uint8)
        hi = rng.standard_normal((C, 2 * LO, 2 * LO)).astype(np.float32)
        lo = hi.reshape(C, LO, 2, LO, 2).mean(axis=(2, 4))
        feature_cache.write_entry(os.path.join(folder, f"img{i}.safetensors"), image, hi, lo,
                                  {"source": f"/data/photos/synthetic/img{i}.png", "vfm": "synthetic"})
    return folder


def args_for(tmp_path, cache, steps, **extra):
    argv = ["--cache", cache, "--out-dir", str(tmp_path / extra.pop("run", "run")), "--steps", str(steps),
            "--batch", "2", "--crop", "4", "--checkpoint-every", "1", "--print-every", "1", "--threads", "1"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else str(v).split())
    return train_naf.parse_args(argv)


def test_batch_shapes_and_alignment(tmp_path):
    data = train_naf.CachedPairs(feature_cache.list_entries(make_cache(str(tmp_path / "cache"))))
    guide, lo, hi, frames = data.batch(np.random.default_rng(0), 3, 4)
    assert frames is None  # "crop" (the default of batch): each crop is a whole map
    assert guide.shape == (3, 3, 32, 32) and lo.shape == (3, C, 4, 4) and hi.shape == (3, C, 8, 8)
    # the low-res crop is the 2x2 mean of the target crop (how the synthetic cache was made):
    # it fails if the lo/hi windows are not aligned
    assert torch.allclose(lo, hi.reshape(3, C, 4, 2, 4, 2).mean(dim=(3, 5)), atol=1e-6)


def test_three_steps_write_log_checkpoint_and_weights(tmp_path):
    cache = make_cache(str(tmp_path / "cache"))
    out = str(tmp_path / "naf.safetensors")
    _, result = train_naf.train(args_for(tmp_path, cache, 3, weights_out=out, val_cache=cache))
    with open(tmp_path / "run" / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    sd, cfg, prov = ref.load_weights(out)
    assert prov["source"] == "trained" and prov["trained"] is True and prov["steps"] == 3
    assert prov["data"]["image_count"] == 2
    assert prov["data"]["images"] == ["photos/synthetic/img0.png", "photos/synthetic/img1.png"]
    assert prov["data"]["sets"] == ["photos/synthetic"]
    assert prov["final_loss"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]), rel=1e-4)
    assert np.isfinite(result["val_full_map_mse"])
    # the weights changed from the initialisation
    init = train_naf.make_model(0).state_dict()
    name = "image_encoder.sem_encoder.0.weight"
    assert not torch.equal(init[name], sd[name])


def test_resume_matches_uninterrupted_run(tmp_path):
    cache = make_cache(str(tmp_path / "cache"))
    full, _ = train_naf.train(args_for(tmp_path, cache, 3, run="full"))
    train_naf.train(args_for(tmp_path, cache, 2, run="split"))
    resumed, _ = train_naf.train(args_for(tmp_path, cache, 3, run="split", resume=True))
    for name, t in full.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    with open(tmp_path / "split" / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_training_reduces_loss_on_fixed_batch(tmp_path):
    # a real outcome: 15 steps on two images lower the loss versus the start
    cache = make_cache(str(tmp_path / "cache"))
    train_naf.train(args_for(tmp_path, cache, 15, lr=2e-3))
    with open(tmp_path / "run" / "loss.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_cosine_schedule_warms_up_peaks_and_ends_at_min_lr(tmp_path):
    args = args_for(tmp_path, "unused", 110, lr=1e-3, lr_schedule="cosine", warmup=10, min_lr=1e-5)
    lrs = [train_naf.learning_rate(s, args) for s in range(1, 111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never increases
    assert lrs[59] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the decay
    assert lrs[-1] == pytest.approx(1e-5)
    constant = args_for(tmp_path, "unused", 110, lr=3e-4)
    assert {train_naf.learning_rate(s, constant) for s in (1, 50, 110)} == {3e-4}


def test_cosine_run_stopped_by_time_resumes_to_the_same_weights(tmp_path):
    cache = make_cache(str(tmp_path / "cache"))
    opts = dict(lr=1e-3, lr_schedule="cosine", warmup=1, min_lr=1e-5)
    full, _ = train_naf.train(args_for(tmp_path, cache, 3, run="full", **opts))
    # --max-minutes ~0 stops after the first step; the resumed run keeps the same schedule
    train_naf.train(args_for(tmp_path, cache, 3, run="split", max_minutes=1e-9, **opts))
    with open(tmp_path / "split" / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1]
    resumed, _ = train_naf.train(args_for(tmp_path, cache, 3, run="split", resume=True, **opts))
    for name, t in full.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    with open(tmp_path / "split" / "loss.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged[-1] == pytest.approx(1e-5, rel=1e-4)


def test_pooled_low_res_is_the_2x2_mean_of_the_target_and_needs_no_cached_lo(tmp_path):
    rng = np.random.default_rng(3)
    folder = str(tmp_path / "cache")
    os.makedirs(folder)
    image = rng.integers(0, 256, size=(8 * LO, 8 * LO, 3), dtype=np.uint8)
    hi = rng.standard_normal((C, 2 * LO, 2 * LO)).astype(np.float32)
    unrelated_lo = rng.standard_normal((C, LO, LO)).astype(np.float32)  # not the mean of hi
    feature_cache.write_entry(os.path.join(folder, "a.safetensors"), image, hi, unrelated_lo, {"source": "a"})
    files = feature_cache.list_entries(folder)
    cached = train_naf.CachedPairs(files, "image")
    pooled = train_naf.CachedPairs(files, "pooled")
    assert torch.equal(cached.lo[0], torch.from_numpy(unrelated_lo))
    assert torch.allclose(pooled.lo[0], torch.from_numpy(hi.reshape(C, LO, 2, LO, 2).mean(axis=(2, 4))), atol=1e-6)
    assert torch.equal(pooled.hi[0], cached.hi[0]) and torch.equal(pooled.guides[0], cached.guides[0])
    with pytest.raises(ValueError, match="low_res"):
        train_naf.CachedPairs(files, "nearest")


def test_hi_only_cache_is_refused_for_image_pairs_and_used_for_pooled_pairs(tmp_path, monkeypatch):
    folder = make_cache(str(tmp_path / "cache"), count=1)
    real_load = feature_cache.load_entry

    def hi_only(path):  # what load_entry returns for a naf_extract_features --hi-only file
        return dict(real_load(path), lo=None)

    monkeypatch.setattr(train_naf, "load_entry", hi_only)
    files = feature_cache.list_entries(folder)
    with pytest.raises(ValueError, match="--low-res pooled"):
        train_naf.CachedPairs(files, "image")
    assert train_naf.CachedPairs(files, "pooled").lo[0].shape == (C, LO, LO)


def test_fine_tuning_starts_from_the_given_weights_over_several_caches(tmp_path):
    first, second = make_cache(str(tmp_path / "c1"), seed=1), make_cache(str(tmp_path / "c2"), count=1, seed=2)
    start = str(tmp_path / "start.safetensors")
    train_naf.train(args_for(tmp_path, first, 2, run="a", weights_out=start))
    tuned = str(tmp_path / "tuned.safetensors")
    # lr 0: AdamW leaves the weights as loaded, so the result must equal the starting file
    argv = args_for(tmp_path, first, 1, run="b", weights_out=tuned, init_weights=start, low_res="pooled", lr=0)
    argv.cache = [first, second]
    train_naf.train(argv)
    start_sd, _, _ = ref.load_weights(start)
    tuned_sd, _, prov = ref.load_weights(tuned)
    for name, t in start_sd.items():
        assert torch.equal(t, tuned_sd[name]), name
    assert prov["data"]["image_count"] == 3
    assert prov["recipe"]["low_res"] == train_naf.LOW_RES_NOTE["pooled"]
    assert prov["recipe"]["init_weights"] == {"file": "start.safetensors", "steps": 2,
                                              "low_res": train_naf.LOW_RES_NOTE["image"], "rope_frame": "image",
                                              "image_count": 2}


def test_rope_frames_place_each_crop_in_its_image(tmp_path):
    data = train_naf.CachedPairs(feature_cache.list_entries(make_cache(str(tmp_path / "cache"))))
    *_, frames = data.batch(np.random.default_rng(5), 4, 4, "image")
    # same draws as the crop itself: the frame is the crop's offset in the 2x output grid of the image
    for top, left, fh, fw in frames:
        assert (fh, fw) == (2 * LO, 2 * LO) and top % 2 == 0 and left % 2 == 0
        assert 0 <= top <= 2 * (LO - 4) and 0 <= left <= 2 * (LO - 4)
    assert data.batch(np.random.default_rng(5), 4, 4, "crop")[3] is None
    # a crop as large as the image has the frame of the whole map: the same prediction as inference
    g, lo, hi, frames = data.batch(np.random.default_rng(1), 1, LO, "image")
    assert frames == [(0.0, 0.0, 2.0 * LO, 2.0 * LO)]
    model = train_naf.make_model(0)
    with torch.no_grad():
        assert torch.allclose(train_naf.predict(model, g, lo, (2 * LO, 2 * LO), frames),
                              train_naf.predict(model, g, lo, (2 * LO, 2 * LO)), atol=1e-6)
    # a larger frame (scale in [1, 3]) keeps the crop inside it
    for _ in range(20):
        top, left, fh, fw = train_naf.rope_frame_of(np.random.default_rng(_), "image", (4, 6), (12, 12), 3.0)
        assert 12 <= fh <= 36 and fh == fw and 4 <= top <= 4 + fh - 12 + 1e-9 and 6 <= left <= 6 + fw - 12 + 1e-9
    with pytest.raises(SystemExit):
        train_naf.parse_args(["--cache", "c", "--out-dir", "o", "--rope-frame-scale-max", "0.5"])



def test_output_scales_supervise_the_cell_means_of_a_finer_output(tmp_path):
    data = train_naf.CachedPairs(feature_cache.list_entries(make_cache(str(tmp_path / "cache"))))
    model = train_naf.make_model(0)
    # a crop as large as the image (guide 48 px = 4 px per target cell): output scale K is the
    # library's forward at K x the target grid, averaged over K x K pixels
    g, lo, hi, frames = data.batch(np.random.default_rng(1), 1, LO, "image")
    with torch.no_grad():
        for k in (1, 2, 4):
            full = model(g, lo, (2 * LO * k, 2 * LO * k), mode="direct")
            expected = torch.nn.functional.avg_pool2d(full, k) if k > 1 else full
            got = train_naf.predict_at_target(model, g, lo, (2 * LO, 2 * LO), k, frames)
            assert got.shape == hi.shape
            assert torch.allclose(got, expected, atol=1e-5), k
        # a crop's frame scales with the output: at K = 4 its RoPE angles are the window of the
        # whole image's angles at 4x the target grid
        rope = model.image_encoder.rope
        (top, left, fh, fw), = data.batch(np.random.default_rng(5), 1, 4, "image")[3]
        k, side = 4, 2 * 4
        scaled = rope.angles(k * side, k * side, (k * top, k * left, k * fh, k * fw))
        whole = rope.angles(int(k * fh), int(k * fw))
        window = whole[int(k * top):int(k * top) + k * side, int(k * left):int(k * left) + k * side]
        assert torch.allclose(scaled, window, atol=1e-5)
    # a run mixing scales trains, resumes to the same weights, and records the scales
    argv = dict(output_scales="1 4", lr=1e-3)
    full_run = train_naf.train(args_for(tmp_path, data.paths[0].rsplit("/", 1)[0], 4, run="a", **argv))[0]
    train_naf.train(args_for(tmp_path, data.paths[0].rsplit("/", 1)[0], 2, run="b", **argv))
    resumed = train_naf.train(args_for(tmp_path, data.paths[0].rsplit("/", 1)[0], 4, run="b", resume=True, **argv))[0]
    for (name, a), b in zip(full_run.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(SystemExit):
        train_naf.parse_args(["--cache", "c", "--out-dir", "o", "--output-scales", "3"])


def test_fine_tuning_keeps_the_config_of_the_initial_weights(tmp_path):
    # a config unlike the default in every field (built from the file: the default NAF cannot load it)
    cfg = dict(ref.DEFAULT_CONFIG, dim=32, heads_attn=2, heads_rope=2, kernel_size=5, img_layers=1, num_groups=4,
               image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25])
    start = str(tmp_path / "start.safetensors")
    torch.manual_seed(0)
    ref.save_weights(start, ref.NAF(cfg).state_dict(), {"source": "random-init", "trained": False}, cfg)
    tuned = str(tmp_path / "tuned.safetensors")
    cache = make_cache(str(tmp_path / "cache"), count=1)
    model, _ = train_naf.train(args_for(tmp_path, cache, 1, weights_out=tuned, init_weights=start, lr=0))
    assert model.config == cfg
    start_sd, _, _ = ref.load_weights(start)
    tuned_sd, tuned_cfg, _ = ref.load_weights(tuned)
    assert tuned_cfg == cfg
    for name, t in start_sd.items():
        assert torch.equal(t, tuned_sd[name]), name


def test_a_non_finite_loss_stops_training_naming_the_step_and_writes_no_weights(tmp_path, monkeypatch, capsys):
    cache = make_cache(str(tmp_path / "cache"), count=1)
    real = train_naf.predict_at_target
    calls = []

    def diverging(*a, **k):  # the third step's prediction overflows
        calls.append(1)
        pred = real(*a, **k)
        return pred * float("inf") if len(calls) == 3 else pred

    monkeypatch.setattr(train_naf, "predict_at_target", diverging)
    out = tmp_path / "naf.safetensors"
    with pytest.raises(train_naf.TrainingDiverged, match="at step 3"):
        train_naf.train(args_for(tmp_path, cache, 5, weights_out=str(out)))
    assert not out.exists()
    with open(tmp_path / "run" / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]
    calls.clear()
    argv = ["--cache", cache, "--out-dir", str(tmp_path / "run2"), "--steps", "5", "--batch", "1", "--crop", "4",
            "--threads", "1", "--weights-out", str(out)]
    with pytest.raises(SystemExit, match="train_naf: loss is .* at step 3"):
        train_naf.main(argv)
    assert not out.exists()


@pytest.mark.parametrize("option,value", [("steps", "0"), ("limit", "0"), ("crop", "0"), ("crop", "33"),
                                          ("batch", "0"), ("checkpoint-every", "0"), ("print-every", "-1"),
                                          ("threads", "0")])
def test_out_of_range_options_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit):
        train_naf.parse_args(["--cache", "c", "--out-dir", "o", f"--{option}", value])
    assert f"--{option} must be" in capsys.readouterr().err


def test_missing_inputs_and_output_folders_are_refused_before_training(tmp_path):
    cache = make_cache(str(tmp_path / "cache"), count=1)
    (tmp_path / "empty").mkdir()
    cases = [(dict(), str(tmp_path / "nocache"), "--cache folder .*nocache does not exist"),
             (dict(), str(tmp_path / "empty"), "--cache folder .*empty has no"),
             (dict(weights_out=str(tmp_path / "no" / "w.safetensors")), cache, "folder .*no of --weights-out"),
             (dict(weights_out=str(tmp_path)), cache, "is a directory"),
             (dict(val_cache=str(tmp_path / "empty")), cache, "--val-cache folder .*empty has no")]
    for extra, folder, message in cases:
        with pytest.raises(ValueError, match=message):
            train_naf.train(args_for(tmp_path, folder, 2, **extra))
        assert not (tmp_path / "run").exists()  # nothing started
    with pytest.raises(SystemExit, match="train_naf: --cache folder"):
        train_naf.main(["--cache", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "run")])
