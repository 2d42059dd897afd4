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


# ---------------------------------------------------------------- review fixes (atomic writes, strict reading)

import scale_attention_logits  # noqa: E402
from safetensors_io import read_header  # noqa: E402

# A config unlike the default in every field the C++ layer reads from naf_config.
SMALL_CONFIG = dict(ref.DEFAULT_CONFIG, dim=32, heads_attn=2, heads_rope=2, kernel_size=5, img_layers=1,
                    num_groups=4, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.25])


def write_small_weights(path, config=SMALL_CONFIG, seed=0):
    torch.manual_seed(seed)
    model = ref.NAF(config)
    ref.save_weights(str(path), model.state_dict(), {"source": "random-init", "trained": False}, model.config)
    return model


def rewrite_metadata(path, **changes):
    """Replaces metadata values of a safetensors file in place (None removes the key)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    for key, value in changes.items():
        if value is None:
            header["__metadata__"].pop(key, None)
        else:
            header["__metadata__"][key] = value
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def test_save_file_replaces_the_target_atomically_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    st.save_file(str(path), {"x": np.zeros(4, np.float32)})
    before = path.read_bytes()
    replaced = []
    monkeypatch.setattr(st.os, "replace", lambda src, dst: (replaced.append((src, dst)), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        st.save_file(str(path), {"x": np.ones(1000, np.float32)})
    # written elsewhere in the same folder and renamed onto the target; the failed rename left the
    # old file whole and removed the temp file
    (src, dst), = replaced
    assert os.path.dirname(src) == str(tmp_path) and dst == str(path) and not src.endswith(".safetensors")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]
    monkeypatch.undo()
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        st.save_file(str(tmp_path), {"x": np.zeros(1, np.float32)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        st.save_file(str(tmp_path / "no" / "t.safetensors"), {"x": np.zeros(1, np.float32)})
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]


def test_read_header_checks_bounds_and_shape_like_deserialize(tmp_path):
    path = tmp_path / "h.safetensors"
    good = st.serialize({"x": np.zeros(2, np.float32)}, {"k": "v"})
    path.write_bytes(good)
    header, _ = read_header(str(path))
    assert header["__metadata__"] == {"k": "v"} and "x" in header
    for blob, message in [
            (struct.pack("<Q", 1 << 62) + good[8:], "larger than the file"),
            (struct.pack("<Q", 2) + b"[]" + good[10:], "JSON object"),
            (struct.pack("<Q", 24) + b'{"__metadata__": [1, 2]}', "__metadata__"),
            (good[:5], "shorter")]:
        path.write_bytes(blob)
        with pytest.raises(st.SafetensorsError, match=message):
            read_header(str(path))
    big = st.MAX_HEADER_BYTES + 8
    with open(path, "wb") as f:  # sparse: a header length within the file but beyond the limit
        f.write(struct.pack("<Q", big))
        f.truncate(big + 16)
    with pytest.raises(st.SafetensorsError, match="unreasonably large"):
        read_header(str(path))


def test_readers_refuse_non_regular_files(tmp_path):
    for reader in (st.load_file, read_header, ref.load_weights):
        with pytest.raises(ValueError, match="not a regular file"):
            reader("/dev/zero")  # used to read until MemoryError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        st.load_file(str(fifo))  # does not wait for a writer


def test_save_weights_refuses_non_finite_values(tmp_path):
    sd = ref.NAF().state_dict()
    sd["image_encoder.sem_encoder.1.conv1.bias"][3] = float("inf")
    path = tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match="image_encoder.sem_encoder.1.conv1.bias"):
        ref.save_weights(str(path), sd, {"source": "test", "trained": False})
    sd = ref.NAF().state_dict()
    with pytest.raises(ValueError, match="naf_provenance.*NaN"):  # json would write the non-standard NaN
        ref.save_weights(str(path), sd, {"source": "test", "trained": True, "final_loss": float("nan")})
    assert not path.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("key,value,message", [
    ("naf_config", dict(ref.DEFAULT_CONFIG, heads_attn=0), "naf_config 'heads_attn' = 0 is outside"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, kernel_size=-3), "naf_config 'kernel_size' = -3 is outside"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, kernel_size=8), "naf_config 'kernel_size' = 8 is even"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, dim="256"), "naf_config 'dim' = '256' is not an integer"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, num_groups=True), "naf_config 'num_groups' = True is not an integer"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, num_groups=7), "does not split"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, image_std=[0.2, 0.0, 0.2]), "image_std"),
    ("naf_config", dict(ref.DEFAULT_CONFIG, image_mean=[0.5, 0.5]), "image_mean"),
    ("naf_config", '{"dim": NaN}', "naf_config is not JSON"),
    ("naf_config", [1, 2], "naf_config is a list"),
    ("naf_provenance", None, "no 'naf_provenance'"),
    ("naf_provenance", "[]", "naf_provenance is a list"),
    ("naf_provenance", {"source": 3, "trained": True}, "naf_provenance 'source' = 3"),
    ("naf_provenance", {"source": "x"}, "naf_provenance 'trained' = None"),
    ("naf_provenance", "{bad", "naf_provenance is not JSON"),
    ("data_sha256", "ABC", "data_sha256 'ABC' is not 64 lowercase hex"),
])
def test_load_weights_refuses_what_the_cpp_loader_refuses(tmp_path, key, value, message):
    path = tmp_path / "w.safetensors"
    make_random_weights.write_random_weights(str(path), seed=1)
    rewrite_metadata(path, **{key: value if value is None or isinstance(value, str) else json.dumps(value)})
    with pytest.raises(st.SafetensorsError, match=message):
        ref.load_weights(str(path))


def test_load_weights_refuses_nan_tensors_and_zero_rope_periods(tmp_path):
    for name, value, message in [("image_encoder.encoder.2.conv2.weight", float("nan"), "conv2.weight contains NaN"),
                                 ("image_encoder.rope.periods", 0.0, "RoPE period")]:
        sd = ref.NAF().state_dict()
        path = tmp_path / "w.safetensors"
        make_random_weights.write_random_weights(str(path), seed=1)
        sd = ref.load_weights(str(path))[0]
        sd[name].view(-1)[0] = value
        # written around save_weights (which refuses NaN itself), without a checksum to trip first
        st.save_file(str(path), {n: t.numpy() for n, t in sd.items()},
                     {k: v for k, v in read_header(str(path))[0]["__metadata__"].items() if k != "data_sha256"})
        with pytest.raises(st.SafetensorsError, match=message):
            ref.load_weights(str(path))


# ---------------------------------------------------------------- make_naf_onnx: config, kernel size, checks

def onnx_main(tmp_path, *extra, out="g.onnx", features=("1", "8", "4", "4")):
    return make_naf_onnx.main(["--out", str(tmp_path / out), "--image-size", "32", "32",
                               "--features", *features, "--output-size", "16", "16", *extra])


def test_embedded_graph_carries_the_weights_config_and_kernel_size_only_when_given(tmp_path):
    weights = tmp_path / "small.safetensors"
    write_small_weights(weights)
    stored = read_header(str(weights))[0]["__metadata__"]["naf_config"]
    assert onnx_main(tmp_path, "--weights", str(weights), "--embed", features=("1", "6", "4", "4")) == 0
    a = attrs_of(onnx.load(str(tmp_path / "g.onnx")).graph.node[0])
    assert a["naf_config"].decode() == stored  # the text exactly as in the file
    assert json.loads(a["naf_config"])["num_groups"] == 4 and "kernel_size" not in a
    assert onnx_main(tmp_path, "--weights", str(weights), "--embed", "--kernel-size", "7",
                     features=("1", "6", "4", "4")) == 0
    assert attrs_of(onnx.load(str(tmp_path / "g.onnx")).graph.node[0])["kernel_size"] == 7
    # by path: the file has its config, the node gets neither naf_config nor a kernel size
    assert onnx_main(tmp_path, "--weights", str(weights), features=("1", "6", "4", "4")) == 0
    a = attrs_of(onnx.load(str(tmp_path / "g.onnx")).graph.node[0])
    assert "naf_config" not in a and "kernel_size" not in a and "weights_path" in a
    # the C++ test set: the embedded graph has the golden weights' config
    make_naf_onnx.write_test_set(str(tmp_path / "set"), GOLDEN_WEIGHTS)
    a = attrs_of(onnx.load(str(tmp_path / "set" / "naf_embedded.onnx")).graph.node[0])
    assert a["naf_config"].decode() == read_header(GOLDEN_WEIGHTS)[0]["__metadata__"]["naf_config"]


@pytest.mark.parametrize("extra,features,message", [
    ((), ("1", "8", "0", "4"), "feature shape"),
    (("--kernel-size", "65"), ("1", "8", "4", "4"), "kernel size 65"),
    (("--kernel-size", "-3"), ("1", "8", "4", "4"), "kernel size -3"),
    ((), ("1", "6", "4", "4"), "channels 6 are not divisible by the 4"),
    (("--weights", "SMALL"), ("1", "5", "4", "4"), "channels 5 are not divisible by the 2"),
    (("--weights", "MISSING", "--embed"), ("1", "8", "4", "4"), "does not exist"),
    (("--weights", "GARBAGE"), ("1", "8", "4", "4"), "GARBAGE"),
])
def test_onnx_writer_refuses_graphs_cpp_would_refuse_and_writes_nothing(tmp_path, capsys, extra, features, message):
    write_small_weights(tmp_path / "small.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"not json, not weights")
    names = {"SMALL": "small.safetensors", "MISSING": "missing.safetensors", "GARBAGE": "garbage.safetensors"}
    extra = [str(tmp_path / names[e]) if e in names else e for e in extra]
    message = message.replace("GARBAGE", "garbage.safetensors")
    assert onnx_main(tmp_path, *extra, features=features) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("tool", ["make_naf_onnx", "convert"])
def test_writers_refuse_a_directory_or_missing_folder_as_output_and_leave_no_temp(tmp_path, capsys, tool):
    torch.save(official_like_state_dict(), tmp_path / "c.pth")
    (tmp_path / "outdir").mkdir()
    for out in (tmp_path / "outdir", tmp_path / "missing" / "x.out"):
        if tool == "make_naf_onnx":
            rc = make_naf_onnx.main(["--out", str(out), "--image-size", "32", "32", "--features", "1", "8", "4", "4",
                                     "--output-size", "16", "16"])
        else:
            rc = conv.main([str(tmp_path / "c.pth"), str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and str(out) in err and ".tmp" not in err and ".part" not in err
        assert sorted(os.listdir(tmp_path)) == ["c.pth", "outdir"] and os.listdir(tmp_path / "outdir") == []


# ---------------------------------------------------------------- scale_attention_logits, make_random_weights, make_golden

def test_scaled_attention_logits_without_blocks_scale_the_stem(tmp_path):
    import math
    cfg = dict(SMALL_CONFIG, img_layers=0)
    src, dst = tmp_path / "w.safetensors", tmp_path / "w3.safetensors"
    model = write_small_weights(src, cfg)
    scale_attention_logits.main([str(src), str(dst), "--factor", "3"])
    scaled = ref.load_model(str(dst))
    image = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        q, q3 = model.encode(image, (12, 10)), scaled.encode(image, (12, 10))
    assert torch.allclose(q3, q * math.sqrt(3.0), rtol=1e-5, atol=1e-6)


def test_weight_tools_give_one_line_errors_for_missing_files(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    write_small_weights(weights)
    for run, message in [
            (lambda: scale_attention_logits.main([str(tmp_path / "no.safetensors"), str(tmp_path / "o.safetensors"),
                                                  "--factor", "2"]), "no.safetensors is not a file"),
            (lambda: scale_attention_logits.main([str(weights), str(tmp_path / "no" / "o.safetensors"),
                                                  "--factor", "2"]), "folder does not exist"),
            (lambda: make_random_weights.main(["--out", str(tmp_path / "no" / "r.safetensors")]), "does not exist"),
            (lambda: make_random_weights.main(["--out", str(tmp_path)]), "is a directory")]:
        with pytest.raises(SystemExit):
            run()
        assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_make_golden_names_an_unknown_case_before_writing(tmp_path, capsys):
    import make_golden
    with pytest.raises(SystemExit):
        make_golden.main(["--out-dir", str(tmp_path / "g"), "--only", "odd_c4", "bogus_case"])
    err = capsys.readouterr().err
    assert "bogus_case" in err and "multiple_c64" in err
    assert not (tmp_path / "g").exists()
