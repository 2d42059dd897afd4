"""Our PyTorch re-implementation of the official NAF forward (tools/naf_reference.py) against the
window rule of the core issue, a float64 brute force, and the official structure."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import naf_reference as ref


def rule_window(i, length, k, d):
    """The rule as the issue states it: g = i mod d, c = i div d, L_g = ceil((L - g) / d),
    s = clamp(c - k div 2, 0, L_g - k); keys at g + d (s + t)."""
    g, c = i % d, i // d
    lg = math.ceil((length - g) / d)
    s = min(max(c - k // 2, 0), lg - k)
    return [g + d * (s + t) for t in range(k)]


WINDOW_CASES = [(low, factor, k) for low in (3, 5, 9, 10, 13, 28) for factor in (1.0, 2.0, 2.5, 3.7, 16.0)
                for k in (1, 3, 5, 9) if k <= low]  # k > low is the extension, tested below


@pytest.mark.parametrize("low,factor,k", WINDOW_CASES)
def test_window_tables_follow_the_rule_and_natten(low, factor, k):
    length = max(low, int(round(low * factor)))
    d = length // low
    k_eff, up, low_idx = ref.axis_tables(length, low, k)
    k_nat, up_nat, _ = ref.axis_tables(length, low, k, style="natten")
    assert k_eff == k == k_nat
    for i in range(length):
        assert list(up[i]) == rule_window(i, length, k, d), (i, length, k, d)
    np.testing.assert_array_equal(up, up_nat)
    assert low_idx.min() >= 0 and low_idx.max() < low
    # Nearest-exact as PyTorch computes it, checked against F.interpolate itself.
    src = torch.arange(low, dtype=torch.float32).view(1, 1, low)
    mapped = F.interpolate(src, size=length, mode="nearest-exact").view(-1).long().numpy()
    np.testing.assert_array_equal(low_idx, mapped[up])


def test_multiples_give_consecutive_low_res_rows():
    k, up, low_idx = ref.axis_tables(448, 28, 9)
    for i in range(448):
        row = low_idx[i]
        assert list(row) == list(range(row[0], row[0] + 9))
        c = i // 16
        assert row[0] == min(max(c - 4, 0), 28 - 9)


def test_grid_smaller_than_kernel_uses_the_whole_axis():
    k, up, low_idx = ref.axis_tables(28, 7, 9)
    assert k == 7
    for i in range(28):
        assert list(low_idx[i]) == list(range(7))
    # Not a multiple: still 7 entries on the dilated rule, which may repeat a key (as officially).
    k, up, low_idx = ref.axis_tables(31, 7, 9)
    assert k == 7 and low_idx.shape == (31, 7)
    assert low_idx.min() == 0 and low_idx.max() == 6


def test_output_smaller_than_features_is_refused():
    with pytest.raises(ValueError, match="smaller"):
        ref.axis_tables(5, 7, 3)


def random_qkv(n, d, c, h, w, ho, wo, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, ho, wo, generator=g)
    k = torch.randn(n, d, h, w, generator=g)
    v = torch.randn(n, c, h, w, generator=g)
    return q, k, v


@pytest.mark.parametrize("shape", [
    # (h, w, ho, wo, kernel)
    (5, 7, 13, 22, 3),   # non-multiples
    (4, 4, 16, 16, 3),   # multiples
    (6, 5, 17, 11, 5),   # odd
    (3, 9, 7, 40, 5),    # kernel larger than one axis (extension)
])
def test_direct_attention_equals_float64_bruteforce(shape):
    h, w, ho, wo, k = shape
    q, kk, v = random_qkv(2, 16, 8, h, w, ho, wo, seed=h * 100 + w)
    got = ref.attend(q, kk, v, kernel_size=k, heads=4, mode="direct")
    want = ref.attend_bruteforce(q, kk, v, kernel_size=k, heads=4)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [
    # (h, w, ho, wo, kernel): integer multiples, as in training (2x), and other factors
    (12, 12, 24, 24, 9),
    (5, 7, 10, 21, 3),   # 2x rows, 3x columns
    (3, 11, 12, 11, 9),  # kernel larger than the rows (extension); 1x columns
    (9, 10, 18, 20, 9),
])
def test_cell_attention_equals_direct_with_gradients(shape):
    h, w, ho, wo, k = shape
    q, kk, v = random_qkv(2, 16, 12, h, w, ho, wo, seed=h * 10 + w)
    q, kk, v = (t.double().requires_grad_() for t in (q, kk, v))
    assert ref.cell_windows(ho, h, k) is not None and ref.cell_windows(wo, w, k) is not None
    cells = ref.attend(q, kk, v, kernel_size=k, heads=4, mode="cells")
    direct = ref.attend(q, kk, v, kernel_size=k, heads=4, mode="direct")
    assert torch.allclose(cells, direct, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(direct)  # any loss: the gradients must agree too (training uses them)
    g_cells = torch.autograd.grad((cells * weights).sum(), (q, kk, v))
    g_direct = torch.autograd.grad((direct * weights).sum(), (q, kk, v))
    for a, b in zip(g_cells, g_direct):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_cell_attention_falls_back_to_direct_for_non_multiples():
    assert ref.cell_windows(13, 5, 3) is None
    q, kk, v = random_qkv(1, 16, 8, 5, 7, 13, 22, seed=3)
    assert torch.equal(ref.attend(q, kk, v, kernel_size=3, mode="cells"), ref.attend(q, kk, v, kernel_size=3, mode="direct"))


@pytest.mark.parametrize("shape", [(7, 9, 37, 29, 5), (8, 8, 32, 32, 3), (10, 12, 23, 31, 9)])
def test_direct_attention_equals_official_upsample_then_dilated_window(shape):
    h, w, ho, wo, k = shape
    q, kk, v = random_qkv(1, 32, 12, h, w, ho, wo, seed=7)
    (direct, pw_d) = ref.attend(q, kk, v, kernel_size=k, mode="direct", probe=(0, ho - 1, 0))
    (official, pw_o) = ref.attend(q, kk, v, kernel_size=k, mode="official", probe=(0, ho - 1, 0))
    assert torch.allclose(direct, official, rtol=1e-6, atol=1e-6)
    assert torch.allclose(pw_d, pw_o, atol=1e-7)
    assert torch.allclose(pw_d.sum(dim=(1, 2)), torch.ones(4), atol=1e-6)


def test_state_dict_has_the_official_names_and_shapes():
    model = ref.NAF()
    sd = model.state_dict()
    expected = dict((n, s) for n, s in ref.expected_tensors())
    assert set(sd) == set(expected)
    for name, shape in expected.items():
        assert list(sd[name].shape) == shape, name
    assert sum(t.numel() for n, t in sd.items() if not n.endswith("periods")) == 662_528  # 0.66 M, as in the paper
    # RoPE periods: base 100, 64 channels per head -> 16 periods 100**(2i/32).
    np.testing.assert_allclose(sd["image_encoder.rope.periods"].numpy(),
                               100.0 ** (2 * np.arange(16) / 32), rtol=1e-6)


def test_rope_rotates_pairs_by_the_axial_angle():
    rope = ref.AxialRoPE(256, 4, 100.0)
    h, w = 3, 5
    x = torch.randn(1, 256, h, w, generator=torch.Generator().manual_seed(3))
    y = rope(x)
    periods = rope.periods
    for (yy, xx) in [(0, 0), (2, 4), (1, 3)]:
        cy, cx = 2 * (yy + 0.5) / h - 1, 2 * (xx + 0.5) / w - 1
        for head in range(4):
            base = head * 64
            for j in range(32):  # channel j pairs with j + 32; first 16 rotate by row, next 16 by column
                coord = cy if j < 16 else cx
                a = 2 * math.pi * coord / float(periods[j % 16])
                x1, x2 = float(x[0, base + j, yy, xx]), float(x[0, base + j + 32, yy, xx])
                want1 = x1 * math.cos(a) - x2 * math.sin(a)
                want2 = x2 * math.cos(a) + x1 * math.sin(a)
                assert abs(float(y[0, base + j, yy, xx]) - want1) < 1e-4
                assert abs(float(y[0, base + j + 32, yy, xx]) - want2) < 1e-4


def test_guide_is_resized_only_beyond_four_times_the_output():
    assert ref.guide_size(448, 448, 448, 448) is None
    assert ref.guide_size(120, 80, 30, 20) is None
    assert ref.guide_size(121, 80, 30, 20) == (80, 80)  # min(H, 4Ho, 4Wo)
    assert ref.guide_size(140, 180, 23, 31) == (92, 92)  # each axis capped by min(4Ho, 4Wo)


def test_forward_checks_inputs():
    model = ref.NAF()
    img = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="divisible"):
        model(img, torch.randn(1, 6, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="smaller"):
        model(img, torch.randn(1, 8, 4, 4), (3, 8))
    with pytest.raises(ValueError, match="batch"):
        model(img, torch.randn(2, 8, 4, 4), (8, 8))


def test_encoder_matches_a_layer_by_layer_recomputation():
    torch.manual_seed(5)
    model = ref.NAF()
    img = torch.rand(1, 3, 30, 26)
    sd = model.state_dict()
    mean = torch.tensor(ref.IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ref.IMAGE_STD).view(1, 3, 1, 1)
    x = (img - mean) / std

    def conv(t, prefix):
        wgt = sd[prefix + ".weight"]
        pad = wgt.shape[-1] // 2
        if pad:
            t = F.pad(t, (pad,) * 4, mode="reflect")
        return F.conv2d(t, wgt, sd[prefix + ".bias"])

    def branch(name):
        p = f"image_encoder.{name}"
        t = conv(x, p + ".0")
        for layer in (1, 2):
            q = f"{p}.{layer}"
            t = F.silu(F.group_norm(t, 8, sd[q + ".norm1.weight"], sd[q + ".norm1.bias"]))
            t = conv(t, q + ".conv1")
            t = F.silu(F.group_norm(t, 8, sd[q + ".norm2.weight"], sd[q + ".norm2.bias"]))
            t = conv(t, q + ".conv2")
        return t

    feats = F.adaptive_avg_pool2d(torch.cat([branch("encoder"), branch("sem_encoder")], 1), (30, 26))
    with torch.no_grad():
        got = model.encode(img, (30, 26))
        want = model.image_encoder.rope(feats)
    assert torch.allclose(got, want, atol=1e-5)


def test_rope_frame_gives_a_crop_the_coordinates_of_its_place_in_the_whole_map():
    rope = ref.AxialRoPE(64, 4, 100.0)
    whole = rope.angles(20, 16)
    # a 6 x 5 window at (7, 9) of the 20 x 16 map
    assert torch.allclose(rope.angles(6, 5, (7, 9, 20, 16)), whole[7:13, 9:14], atol=1e-5)
    # the frame of the whole map is the default
    assert torch.equal(rope.angles(20, 16, (0, 0, 20, 16)), whole)
    # a crop without a frame is normalised over itself: other coordinates than its window (the
    # mismatch the frame removes)
    assert not torch.allclose(rope.angles(6, 5), whole[7:13, 9:14], atol=1e-2)
    # per-sample frames in a batch: each sample rotated with its own frame
    x = torch.randn(2, 64, 6, 5)
    framed = rope(x, [(7, 9, 20, 16), (0, 0, 6, 5)])
    assert torch.allclose(framed[1:], rope(x[1:]), atol=1e-6)
    cos, sin = torch.cos(whole[7:13, 9:14]).permute(2, 0, 1), torch.sin(whole[7:13, 9:14]).permute(2, 0, 1)
    xh = x[:1].reshape(1, 4, 16, 6, 5)
    rotated = torch.cat([-xh[:, :, 8:], xh[:, :, :8]], dim=2)
    assert torch.allclose(framed[:1], (xh * cos + rotated * sin).reshape(1, 64, 6, 5), atol=1e-5)
    with pytest.raises(ValueError, match="frames"):
        rope(x, [(0, 0, 6, 5)])
