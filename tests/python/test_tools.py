"""The tools around the reference: safetensors I/O, weight files, the official-checkpoint
converter (on a synthetic state dict with the official keys and shapes) and the ONNX writer."""
import json
import os
import struct

import numpy as np
import onnx
import pytest
import torch

import convert_official_checkpoint as conv
import make_naf_onnx
import make_random_weights
import naf_reference as ref
import safetensors_io as st


# ---------------------------------------------------------------- safetensors

def test_safetensors_round_trip_keeps_order_dtypes_and_metadata(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], dtype=np.int32),
               "img": np.zeros((1, 2, 2, 3), np.uint8), "idx": np.array([7], np.int64)}
    path = tmp_path / "t.safetensors"
    st.save_file(str(path), tensors, {"k": "v"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0  # data aligned
    assert list(json.loads(raw[8:8 + n]).keys())[1:] == ["b", "a", "img", "idx"]
    back, meta = st.load_file(str(path))
    assert meta == {"k": "v"}
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name], arr)


def damaged_variants(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")

    def with_header(mutate):
        h = json.loads(raw[8:8 + n])
        mutate(h)
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + raw[8 + n:]

    return {
        "truncated data": raw[:-5],
        "short file": raw[:6],
        "header length past the end": struct.pack("<Q", len(raw)) + raw[8:],
        "header not JSON": raw[:8] + b"#" + raw[9:],
        "offsets outside": with_header(lambda h: h[name].update(data_offsets=[0, 10 ** 9])),
        "offsets disagree with shape": with_header(lambda h: h[name].update(shape=[1])),
        "unknown dtype": with_header(lambda h: h[name].update(dtype="F64")),
        "negative shape": with_header(lambda h: h[name].update(shape=[-1, 2])),
    }


def test_safetensors_reader_rejects_damaged_files():
    raw = st.serialize({"x": np.ones((3, 4), np.float32), "y": np.ones(2, np.float32)})
    for what, data in damaged_variants(raw).items():
        with pytest.raises(st.SafetensorsError):
            st.deserialize(data)
            pytest.fail(what)


def test_overlapping_tensors_are_rejected():
    raw = st.serialize({"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)})
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    h["y"]["data_offsets"] = [8, 24]
    text = json.dumps(h).encode()
    with pytest.raises(st.SafetensorsError, match="overlap"):
        st.deserialize(struct.pack("<Q", len(text)) + text + raw[8 + n:])


# ---------------------------------------------------------------- weights

def test_random_weights_are_reproducible_and_say_untrained(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    make_random_weights.write_random_weights(str(a), seed=3)
    make_random_weights.write_random_weights(str(b), seed=3)
    assert a.read_bytes() == b.read_bytes()
    sd, cfg, prov = ref.load_weights(str(a))
    assert prov["trained"] is False and prov["source"] == "random-init" and prov["seed"] == 3
    assert cfg["dim"] == 256 and cfg["kernel_size"] == 9
    assert len(sd) == len(ref.expected_tensors())


def test_saved_weights_carry_the_sha256_of_their_data_and_tampering_is_detected(tmp_path):
    import hashlib
    import struct
    path = tmp_path / "w.safetensors"
    make_random_weights.write_random_weights(str(path), seed=4)
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert meta["data_sha256"] == hashlib.sha256(blob[8 + n:]).hexdigest()
    ref.load_weights(str(path))  # verifies
    tampered = bytearray(blob)
    tampered[-3] ^= 0x01  # still a finite float, same size: only the checksum can tell
    path.write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="SHA-256"):
        ref.load_weights(str(path))


def test_weights_with_a_wrong_shape_are_refused(tmp_path):
    sd = ref.NAF().state_dict()
    sd["image_encoder.encoder.1.conv1.weight"] = torch.zeros(128, 128, 3, 3)
    with pytest.raises(ValueError, match="wrong shape"):
        ref.save_weights(str(tmp_path / "w.safetensors"), sd, {"source": "test"})


# ---------------------------------------------------------------- official checkpoint converter

def official_like_state_dict(seed=11):
    """What torch.save(NAF().state_dict()) of the official code holds: our module uses the same
    names; values randomised so that the conversion is checked value by value."""
    g = torch.Generator().manual_seed(seed)
    sd = ref.NAF().state_dict()
    return {n: (t if n.endswith("periods") else torch.randn(t.shape, generator=g)) for n, t in sd.items()}


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_converter_keeps_every_tensor_and_records_provenance(tmp_path, wrap):
    sd = official_like_state_dict()
    obj = {"plain": sd,
           "state_dict": {"state_dict": sd, "step": 25000},
           "module_prefix": {"module." + n: t for n, t in sd.items()}}[wrap]
    src, dst = tmp_path / "naf_release.pth", tmp_path / "naf.safetensors"
    torch.save(obj, src)
    cfg, prov = conv.convert(str(src), str(dst))
    assert cfg["dim"] == 256 and cfg["img_layers"] == 2 and cfg["heads_rope"] == 4
    loaded, cfg2, prov2 = ref.load_weights(str(dst))
    assert prov2["source"] == "official-checkpoint" and prov2["trained"] is True
    assert prov2["checkpoint_sha256"] == conv.sha256_of(str(src))
    for name, t in sd.items():
        assert torch.equal(loaded[name], t.float()), name
    assert not os.path.exists(str(dst) + ".tmp")


def test_converted_weights_give_the_same_forward_as_the_checkpoint(tmp_path):
    sd = official_like_state_dict(seed=2)
    model = ref.NAF()
    model.load_state_dict(sd)
    torch.save(sd, tmp_path / "c.pth")
    conv.convert(str(tmp_path / "c.pth"), str(tmp_path / "c.safetensors"))
    img, feats = torch.rand(1, 3, 24, 20), torch.randn(1, 8, 4, 5)
    with torch.no_grad():
        a = model(img, feats, (12, 10))
        b = ref.load_model(str(tmp_path / "c.safetensors"))(img, feats, (12, 10))
    assert torch.equal(a, b)


@pytest.mark.parametrize("damage,message", [
    ("missing", "missing tensor"),
    ("extra", "unexpected tensor"),
    ("shape", "wrong shape"),
    ("nan", "NaN"),
    ("garbage", "cannot be read"),
    ("not_a_dict", "not a state dict"),
])
def test_converter_rejects_broken_checkpoints_and_writes_nothing(tmp_path, damage, message):
    sd = official_like_state_dict()
    src, dst = tmp_path / "bad.pth", tmp_path / "out.safetensors"
    if damage == "missing":
        del sd["image_encoder.sem_encoder.2.norm2.bias"]
    elif damage == "extra":
        sd["upsampler.proj.weight"] = torch.zeros(4)
    elif damage == "shape":
        sd["image_encoder.sem_encoder.0.weight"] = torch.zeros(128, 3, 1, 1)
    elif damage == "nan":
        sd["image_encoder.encoder.2.conv2.bias"][5] = float("nan")
    if damage == "garbage":
        src.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], src)
    else:
        torch.save(sd, src)
    with pytest.raises(conv.ConversionError, match=message):
        conv.convert(str(src), str(dst))
    assert not dst.exists() and not os.path.exists(str(dst) + ".tmp")
    assert conv.main([str(src), str(dst)]) == 2


# ---------------------------------------------------------------- ONNX writer

GOLDEN_WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "data", "golden", "weights_seed0.safetensors")


def attrs_of(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_onnx_test_set_has_the_attributes_the_layer_reads(tmp_path):
    make_naf_onnx.write_test_set(str(tmp_path), GOLDEN_WEIGHTS)
    by_path = onnx.load(str(tmp_path / "naf_weights_path.onnx"))
    node = by_path.graph.node[0]
    assert (node.op_type, node.domain) == ("NAF", "naf")
    a = attrs_of(node)
    assert a["output_height"] == 40 and a["output_width"] == 50 and a["kernel_size"] == 5
    assert os.path.samefile(a["weights_path"].decode(), GOLDEN_WEIGHTS)
    assert [i.name for i in by_path.graph.input] == ["image", "features"]

    embedded = onnx.load(str(tmp_path / "naf_embedded.onnx"))
    node = embedded.graph.node[0]
    names = attrs_of(node)["weight_names"].decode().split(",")
    assert list(node.input[2:]) == names
    tensors, _ = st.load_file(GOLDEN_WEIGHTS)
    assert names == list(tensors.keys())
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in embedded.graph.initializer}
    for name in names:
        np.testing.assert_array_equal(inits[name], tensors[name])

    missing = attrs_of(onnx.load(str(tmp_path / "naf_missing_output_size.onnx")).graph.node[0])
    assert "output_height" not in missing and missing["output_width"] == 50


def test_onnx_writer_refuses_impossible_graphs(tmp_path):
    with pytest.raises(ValueError, match="smaller"):
        make_naf_onnx.naf_graph((1, 3, 32, 32), (1, 8, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="odd"):
        make_naf_onnx.naf_graph((1, 3, 32, 32), (1, 8, 8, 8), (16, 16), kernel_size=4)
    with pytest.raises(ValueError, match="image shape"):
        make_naf_onnx.naf_graph((2, 3, 32, 32), (1, 8, 8, 8), (16, 16))
    assert make_naf_onnx.main(["--out", str(tmp_path / "x.onnx"), "--image-size", "32", "32",
                               "--features", "1", "8", "8", "8", "--output-size", "4", "4"]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_scaled_attention_logits_are_factor_times_the_original(tmp_path):
    """tools/scale_attention_logits.py: queries x sqrt(T) and keys x sqrt(T), so every logit x T."""
    import math
    import torch
    import naf_reference
    import scale_attention_logits
    torch.manual_seed(0)
    model = naf_reference.NAF()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scaled = naf_reference.NAF()
    scaled.load_state_dict(scale_attention_logits.scaled_state_dict(sd, 3.0))
    image = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        q, q3 = model.encode(image, (12, 10)), scaled.encode(image, (12, 10))
    assert torch.allclose(q3, q * math.sqrt(3.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(q3, q)
    import pytest
    with pytest.raises(ValueError, match="positive"):
        scale_attention_logits.scaled_state_dict(sd, 0.0)
