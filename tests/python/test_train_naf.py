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
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return train_naf.parse_args(argv)


def test_batch_shapes_and_alignment(tmp_path):
    data = train_naf.CachedPairs(feature_cache.list_entries(make_cache(str(tmp_path / "cache"))))
    guide, lo, hi = data.batch(np.random.default_rng(0), 3, 4)
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
