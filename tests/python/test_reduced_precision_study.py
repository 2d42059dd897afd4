"""tools/reduced_precision_study.py: its rounding emulations and the forward it wraps."""
import torch

import naf_reference as ref
import reduced_precision_study as study


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest():
    one_ulp = 2.0 ** -10  # TF32's spacing above 1
    x = torch.tensor([1.0, 1.0 + one_ulp, 1.0 + 0.49 * one_ulp, 1.0 + 0.51 * one_ulp, -(1.0 + 0.51 * one_ulp),
                      3.0e-20, 6.5e4])
    y = study.round_tf32(x)
    expected = torch.tensor([1.0, 1.0 + one_ulp, 1.0, 1.0 + one_ulp, -(1.0 + one_ulp)])
    assert torch.equal(y[:5], expected)
    # Every result has its 13 low mantissa bits clear and is within half a TF32 ulp.
    assert torch.all((y.view(torch.int32) & 0x1FFF) == 0)
    assert torch.all((y - x).abs() <= x.abs() * 2.0 ** -11)


def small_model(seed):
    """A small NAF with seeded normal weights (the study's rounding shows at this scale too)."""
    torch.manual_seed(seed)
    model = ref.NAF({"dim": 32, "heads_attn": 2, "heads_rope": 2, "num_groups": 4})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_emulation_rounds_inside_and_restores_the_weights_after():
    model = small_model(0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    image = torch.rand(1, 3, 24, 20)
    features = torch.randn(1, 8, 6, 5)
    reference = study.forward(model, image, features, (24, 20))
    errors = {name: study.rel_l2(study.forward(model, image, features, (24, 20), name), reference)
              for name in study.VARIANTS}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert study.rel_l2(study.forward(model, image, features, (24, 20)), reference) == 0.0
    # Each variant changes the output, by about its format's precision: TF32 operands the least
    # (10-bit mantissa), bfloat16 everywhere (7-bit) more than float16 everywhere (10-bit).
    assert all(e > 0.0 for e in errors.values()), errors
    assert errors["tf32-conv"] < errors["bf16-all"]
    assert errors["fp16-all"] < errors["bf16-all"]
    assert errors["bf16-all"] < 0.1


def test_the_last_convolution_of_each_branch_can_round_on_its_own():
    model = small_model(1)
    enc = model.image_encoder
    last = study.last_convolutions(model)
    assert last == {enc.encoder[-1].conv2, enc.sem_encoder[-1].conv2}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    image = torch.rand(1, 3, 24, 20)
    # fp16-encoder-tf32-last: every convolution output is stored in float16 except the last ones'
    # (hooks registered after the emulation's see the outputs it stores).
    outputs = {}
    with study.emulated(model, study.VARIANTS["fp16-encoder-tf32-last"]):
        handles = [m.register_forward_hook(lambda m, i, out: outputs.__setitem__(m, out)) for m in convs]
        with torch.no_grad():
            model.encode(image, (24, 20))
        for h in handles:
            h.remove()
    assert len(outputs) == len(convs)
    for m, out in outputs.items():
        assert torch.equal(out, study.round_fp16(out)) != (m in last)
    features = torch.randn(1, 8, 6, 5)
    reference = study.forward(model, image, features, (24, 20))
    errors = {name: study.rel_l2(study.forward(model, image, features, (24, 20), name), reference)
              for name in ("fp16-encoder", "fp16-encoder-tf32-last", "tf32-conv")}
    # Keeping the queries' convolution out of float16 storage removes most of the error.
    assert errors["fp16-encoder-tf32-last"] < errors["fp16-encoder"], errors
