"""The VFM tools: our numpy ONNX evaluator (tools/vfm/onnx_numpy.py) against PyTorch, the
OpenCV-4.6 passes (tools/vfm/onnx_for_opencv46.py) and the ViT exporter (tools/export_vfm.py):
cv::dnn (python3-opencv, the same OpenCV 4.6 as the C++ library) on the converted graph against
PyTorch on the model it came from."""
import json
import math
import os
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "vfm"))
import export_vfm  # noqa: E402  (tools/ is on the path through conftest.py)
import onnx_numpy  # noqa: E402

cv2 = pytest.importorskip("cv2", reason="python3-opencv (scripts/install_deps.sh) is not installed")


def cosine(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("groups,stride,kernel,pad", [(1, 1, 3, 1), (1, 2, 3, 1), (4, 1, 3, 1), (8, 2, 3, 1),
                                                      (1, 1, 1, 0), (1, 4, 4, 0)])
def test_numpy_conv_matches_torch(groups, stride, kernel, pad):
    rng = np.random.RandomState(groups * 10 + stride)
    x = rng.randn(1, 8, 13, 11).astype(np.float32)
    w = rng.randn(16 if groups != 8 else 8, 8 // groups, kernel, kernel).astype(np.float32)
    b = rng.randn(w.shape[0]).astype(np.float32)
    got = onnx_numpy.conv2d(x, w, b, [stride, stride], [pad] * 4, [1, 1], groups)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, pad, 1, groups).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_numpy_erf_matches_torch():
    x = np.linspace(-6, 6, 10001).astype(np.float32)
    np.testing.assert_allclose(onnx_numpy.erf(x), torch.erf(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-6)


def test_erf_rewrite_is_the_tanh_form_computed_with_a_sigmoid():
    """rewrite_erf: cv::dnn 4.6 has no Erf, and its TanH is scalar libm (6.5x slower than its
    Sigmoid), so erf(z) becomes 2 sigmoid(2 c1 (z + c2 z^3)) - 1 = tanh(c1 (z + c2 z^3)). In cv2.dnn
    that equals the tanh form to float rounding and exact erf to the tanh form's 4e-4."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper
    z = np.linspace(-5, 5, 4096, dtype=np.float32).reshape(1, 4, 32, 32)
    graph = helper.make_graph([helper.make_node("Erf", ["z"], ["y"])], "erf",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, list(z.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(z.shape))])
    model, count = onnx_for_opencv46.rewrite_erf(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]))
    assert count == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Erf" not in ops and "Tanh" not in ops and "Sigmoid" in ops
    net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
    net.setInput(z)
    got = net.forward().reshape(-1).astype(np.float64)
    zz = z.reshape(-1).astype(np.float64)
    tanh_form = np.tanh(2 / np.sqrt(np.pi) * (zz + 2 * 0.044715 * zz ** 3))
    np.testing.assert_allclose(got, tanh_form, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, onnx_numpy.erf(z).reshape(-1), rtol=0, atol=4e-4)
    # the reference evaluator computes the rewritten graph the same way
    np.testing.assert_allclose(onnx_numpy.evaluate(model, {"z": z})["y"].reshape(-1), tanh_form, rtol=0, atol=1e-6)


def test_gelu_rewrite_is_one_sigmoid_chain_of_the_tanh_form():
    """rewrite_gelu: PyTorch's exact GELU, 0.5 * (x * (1 + erf(x / sqrt 2))), becomes
    x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) in 7 nodes: in cv2.dnn it equals the tanh form of
    GELU to float rounding, and exact GELU to the tanh form's 4e-4."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper, numpy_helper
    x = np.linspace(-6, 6, 4096, dtype=np.float32).reshape(1, 4, 32, 32)
    consts = {"root2": np.sqrt(2), "one": 1.0, "half": 0.5}
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
                              [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()])
    model, count = onnx_for_opencv46.rewrite_gelu(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]))
    assert count == 1
    ops = [n.op_type for n in model.graph.node]
    assert len(ops) == 7 and "Erf" not in ops and "Tanh" not in ops and "Sigmoid" in ops
    net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
    net.setInput(x)
    got = net.forward().reshape(-1).astype(np.float64)
    xx = x.reshape(-1).astype(np.float64)
    tanh_form = 0.5 * xx * (1 + np.tanh(np.sqrt(2 / np.pi) * (xx + 0.044715 * xx ** 3)))
    np.testing.assert_allclose(got, tanh_form, rtol=0, atol=2e-6)
    exact = 0.5 * xx * (1 + np.array([math.erf(v / math.sqrt(2)) for v in xx]))
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-3)  # the tanh form is within 5e-4 of it
    np.testing.assert_allclose(onnx_numpy.evaluate(model, {"x": x})["y"].reshape(-1), tanh_form, rtol=0, atol=2e-6)


def test_transposes_of_other_ranks_run_as_4d_with_the_same_values():
    """transposes_as_4d: a 6-D window partition and a 3-D transpose become Reshape -> 4-D Transpose
    -> Reshape (cv::dnn 4.6 permutes other ranks element by element); cv2.dnn gives the same bits."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper
    x6 = np.random.RandomState(0).rand(1, 3, 5, 4, 5, 8).astype(np.float32)
    x3 = np.random.RandomState(1).rand(1, 60, 8).astype(np.float32)
    for x, perm, size in ((x6, [0, 1, 3, 2, 4, 5], 6), (x3, [0, 2, 1], 3)):
        want = x.transpose(perm)
        graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=perm)], "t",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(want.shape))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
        model, count = onnx_for_opencv46.transposes_as_4d(model, {"x": x})
        assert count == 1
        transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
        assert len(transposes) == 1 and len(transposes[0].attribute[0].ints) == 4
        assert np.array_equal(onnx_numpy.evaluate(model, {"x": x})["y"], want)
        if size == 6:  # cv::dnn reads a 3-D network input differently; the 6-D case runs there
            net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
            net.setInput(x)
            assert np.array_equal(net.forward().reshape(want.shape), want)


def test_naf_layer_passes_take_only_what_the_layers_compute():
    """With naf_layers, rewrite_gelu writes one NafGelu node, and softmax_as_naf_layer takes a
    Softmax over the last axis (given as -1 or as rank - 1) but leaves one over another axis or
    without an explicit axis (the default differs between opsets) to cv::dnn."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper
    x = np.random.RandomState(0).randn(2, 3, 4, 5).astype(np.float32)
    nodes = [helper.make_node("Softmax", ["x"], ["a"], axis=3), helper.make_node("Softmax", ["a"], ["b"], axis=-1),
             helper.make_node("Softmax", ["b"], ["c"], axis=1), helper.make_node("Softmax", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    want = onnx_numpy.evaluate(model, {"x": x})["y"]
    values = onnx_for_opencv46.trace_shapes(model, {"x": list(x.shape)})
    model, count = onnx_for_opencv46.softmax_as_naf_layer(model, values)
    assert count == 2
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("", "NafSoftmax"), ("", "NafSoftmax"),
                                                                 ("", "Softmax"), ("", "Softmax")]
    np.testing.assert_allclose(onnx_numpy.evaluate(model, {"x": x})["y"], want, rtol=1e-6, atol=1e-7)


def test_naf_layer_passes_leave_what_the_layers_would_compute_differently():
    """A 1-D Softmax stays cv::dnn's (4.6 keeps a 1-D blob as a column, so the layer refuses it), and
    a linear layer's Add is folded only when it keeps the product's shape: a (1, 1, N) bias on a
    2-D product broadcasts it to 3-D, which NafMatMul would not."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(2)
    x = rng.randn(5, 4).astype(np.float32)
    inits = {"w": rng.randn(4, 3), "bias3d": rng.randn(1, 1, 3), "flat": np.array([-1], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "bias3d"], ["q"]),
             helper.make_node("Reshape", ["q", "flat"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    values = onnx_for_opencv46.trace_shapes(model, {"x": list(x.shape)})
    model, softmaxes = onnx_for_opencv46.softmax_as_naf_layer(model, values)
    model, matmuls = onnx_for_opencv46.matmul_as_naf_layer(model, values)
    assert softmaxes == 0 and matmuls == 1
    ops = [(n.op_type, len(n.input)) for n in model.graph.node]
    assert ops == [("NafMatMul", 2), ("Add", 2), ("Reshape", 2), ("Softmax", 1)]


def test_conv1x1_pass_takes_only_pointwise_convolutions():
    """conv1x1_as_naf_layer takes a 1x1 convolution with stride 1, one group and no padding (with or
    without bias) and leaves a strided, grouped, padded or wider one to cv::dnn; same function."""
    import onnx_for_opencv46
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(1)
    x = rng.randn(1, 4, 6, 5).astype(np.float32)
    inits = {"w": rng.randn(4, 4, 1, 1), "b": rng.randn(4), "w3": rng.randn(4, 4, 3, 3), "wg": rng.randn(4, 2, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["b1"]),
             helper.make_node("Conv", ["b1", "w", "b"], ["c"], strides=[2, 2]),
             helper.make_node("Conv", ["c", "wg"], ["d"], group=2),
             helper.make_node("Conv", ["d", "w3"], ["e"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["e", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    want = onnx_numpy.evaluate(model, {"x": x})["y"]
    model, count = onnx_for_opencv46.conv1x1_as_naf_layer(model)
    assert count == 2
    assert [n.op_type for n in model.graph.node] == ["NafConv1x1", "NafConv1x1", "Conv", "Conv", "Conv", "Conv"]
    np.testing.assert_allclose(onnx_numpy.evaluate(model, {"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def tiny_vit(seed, dim=32, depth=2, heads=4, patch=8, pos_grid=6):
    args = type("A", (), dict(hub=None, state_dict=None, patch=patch, dim=dim, depth=depth, heads=heads,
                              mlp_ratio=4.0, pos_grid=pos_grid, registers=0, seed=seed))()
    vit, _ = export_vfm.build(args)
    return vit


@pytest.mark.parametrize("size,seed", [(64, 0), (96, 1)])
def test_exported_vit_in_cv_dnn_matches_torch(tmp_path, size, seed):
    """A random-weight ViT (cls token, pos-embed resampled to the grid, LayerScale, exact GELU):
    torch -> ONNX opset 12 -> OpenCV-4.6 passes -> cv2.dnn equals torch (cosine >= 0.9999)."""
    vit = tiny_vit(seed)
    path = str(tmp_path / "vit.onnx")
    module = export_vfm.export(vit, size, path, log=lambda *_: None, naf_layers=False)  # cv2.dnn has no naf layers
    image = np.random.RandomState(seed).randn(1, 3, size, size).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(image)).numpy()
    assert want.shape == (1, 32, size // 8, size // 8)
    net = cv2.dnn.readNetFromONNX(path)
    net.setInput(image)
    got = net.forward("features")
    assert got.shape == want.shape
    assert cosine(got, want) >= 0.9999
    # the converted graph also evaluates to the same in our numpy evaluator (the passes keep the function)
    converted = onnx_numpy.evaluate(onnx.load(path), {"image": image})["features"]
    assert cosine(converted, want) >= 0.9999
    # and every pass that the ViT needs was applied
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Erf" not in ops and "Tanh" not in ops and "ReduceMean" not in ops and "Shape" not in ops and "MVN" in ops
    # with cv::naf's layers (the default): the same function in the numpy evaluator, each GELU one
    # NafGelu node, each attention Softmax a NafSoftmax and each MatMul a NafMatMul (cv::dnn runs it: naf_vfm_tests)
    naf_path = str(tmp_path / "vit_naf.onnx")
    export_vfm.export(vit, size, naf_path, log=lambda *_: None)
    naf_model = onnx.load(naf_path)
    naf_ops = [(n.domain, n.op_type) for n in naf_model.graph.node]
    assert naf_ops.count(("", "NafGelu")) == 2 and naf_ops.count(("", "NafSoftmax")) == 2  # depth 2
    # per block: qkv, proj, fc1, fc2 (biases folded in) and attention's two batched products
    assert naf_ops.count(("", "NafMatMul")) == 12 and ("", "MatMul") not in naf_ops
    # two LayerNorms per block and the final one, each with its scale and shift
    assert naf_ops.count(("", "NafLayerNorm")) == 5 and ("", "MVN") not in naf_ops
    assert all(len(n.input) == 3 for n in naf_model.graph.node if n.op_type == "NafLayerNorm")
    assert ("", "Sigmoid") not in naf_ops and ("", "Softmax") not in naf_ops
    with_layers = onnx_numpy.evaluate(naf_model, {"image": image})["features"]
    assert cosine(with_layers, want) >= 0.9999
    np.testing.assert_allclose(with_layers, converted, rtol=0, atol=1e-5 * np.abs(converted).max())


def test_numpy_evaluator_runs_the_torch_export_exactly(tmp_path):
    """The reference evaluator on an unconverted export (Erf, decomposed LayerNorm, Shape arithmetic)."""
    vit = tiny_vit(3).eval()
    path = str(tmp_path / "orig.onnx")
    image = np.random.RandomState(3).randn(1, 3, 48, 48).astype(np.float32)
    module = export_vfm.FixedSizeExport(vit, 48).eval()
    with torch.no_grad():
        torch.onnx.export(module, torch.zeros(1, 3, 48, 48), path, opset_version=12, input_names=["image"],
                          output_names=["features"])
        want = module(torch.from_numpy(image)).numpy()
    got = onnx_numpy.evaluate(onnx.load(path), {"image": image})["features"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_export_writes_a_valid_registry_entry(tmp_path):
    out = tmp_path / "cache" / "v.onnx"
    out.parent.mkdir()
    registry = tmp_path / "models" / "vfm"
    sys_argv = sys.argv
    sys.argv = ["export_vfm.py", "--random", "--size", "32", "--patch", "8", "--dim", "16", "--depth", "1",
                "--heads", "2", "--pos-grid", "4", "--name", "v", "--out", str(out), "--registry", str(registry)]
    try:
        export_vfm.main()
    finally:
        sys.argv = sys_argv
    entry = json.loads((registry / "v.json").read_text())
    assert entry["onnx"] == "cache/v.onnx"  # relative to the project root (the registry's grandparent)
    assert entry["input"]["size"] == 32 and entry["output"] == {"name": "features", "channels": 16, "stride": 8}
    assert entry["input"]["mean"] == [123.675, 116.28, 103.53]


def export_argv(tmp_path, *extra):
    return ["--random", "--size", "32", "--patch", "8", "--dim", "16", "--depth", "1", "--heads", "2",
            "--pos-grid", "4", "--name", "v", "--out", str(tmp_path / "v.onnx"), *extra]


@pytest.mark.parametrize("change,message", [
    (("--size", "0"), "--size must be > 0"), (("--size", "36"), "--size 36 is not a multiple of --patch 8"),
    (("--patch", "0"), "--patch must be > 0"), (("--heads", "3"), "--dim 16 is not divisible by --heads 3"),
    (("--registry", "FILE"), "is not a folder"), (("--out", "DIR"), "is a directory")])
def test_export_refuses_bad_arguments_before_writing(tmp_path, capsys, change, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    change = [{"FILE": str(tmp_path / "file"), "DIR": str(tmp_path / "dir")}.get(c, c) for c in change]
    with pytest.raises(SystemExit):
        export_vfm.main(export_argv(tmp_path, *change))
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and os.listdir(tmp_path / "dir") == []


def test_export_leaves_no_temp_files_on_failure_and_writes_the_registry_atomically(tmp_path, monkeypatch):
    def failing_convert(*a, **k):
        raise ValueError("conversion failed")

    monkeypatch.setattr(export_vfm.onnx_for_opencv46, "convert", failing_convert)
    with pytest.raises(SystemExit, match="export_vfm: conversion failed"):
        export_vfm.main(export_argv(tmp_path, "--registry", str(tmp_path / "reg")))
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "v.json").write_text("{\"old\": 1}\n")
    monkeypatch.setattr(export_vfm.os, "replace", lambda src, dst: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_vfm.write_registry_entry(str(tmp_path / "reg"), "v", {"new": 2})
    assert os.listdir(tmp_path / "reg") == ["v.json"] and json.loads((tmp_path / "reg" / "v.json").read_text()) == {"old": 1}
