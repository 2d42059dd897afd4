#!/usr/bin/env python3
"""A small, independent ONNX evaluator in numpy: the reference that cv::dnn is checked against.

onnx 1.12 (Debian) has no ReferenceEvaluator and there is no onnxruntime here, so this evaluates
a graph node by node with plain numpy, following the ONNX operator definitions (opset <= 13
semantics, numpy broadcasting). It covers the operators of MobileSAM's image encoder (TinyViT +
SAM neck), of the ViTs written by tools/export_vfm.py, and of the graphs our OpenCV-4.6 passes
produce (MeanVarianceNormalization, Tanh, ...). Unknown operators raise NotImplementedError.

It also serves the converter: evaluate(..., keep_all=True) returns every intermediate value, which
gives the shapes that the OpenCV-4.6 passes fold into constants.
"""

import numpy as np
import onnx
from onnx import numpy_helper

ONNX_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
                 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def attributes(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def erf(x):
    """erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7; numpy has none)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(x.dtype)


def conv2d(x, w, b, strides, pads, dilations, group):
    """NCHW convolution with groups; pads = [top, left, bottom, right]."""
    n, cin, _, _ = x.shape
    cout, cin_g, kh, kw = w.shape
    if cin_g * group != cin:
        raise ValueError(f"Conv: input channels {cin} != {cin_g} x group {group}")
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    sh, sw = strides
    dh, dw = dilations
    hp, wp = x.shape[2], x.shape[3]
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, cout, oh, ow), dtype=np.float32)
    cout_g = cout // group
    if cin_g == 1 and cout_g == 1:
        # depthwise: accumulate the kh*kw shifted views, one weight per channel
        for i in range(kh):
            for j in range(kw):
                view = x[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out += view * w[None, :, 0, i, j, None, None]
    elif kh == 1 and kw == 1 and sh == 1 and sw == 1 and group == 1:
        out = np.matmul(w.reshape(cout, cin), x.reshape(n, cin, hp * wp)).reshape(n, cout, oh, ow)
    else:
        for g in range(group):
            xs = x[:, g * cin_g:(g + 1) * cin_g]
            cols = np.empty((n, cin_g, kh, kw, oh, ow), dtype=np.float32)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, i, j] = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                          j * dw:j * dw + sw * (ow - 1) + 1:sw]
            wg = w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1)
            out[:, g * cout_g:(g + 1) * cout_g] = np.matmul(
                wg, cols.reshape(n, cin_g * kh * kw, oh * ow)).reshape(n, cout_g, oh, ow)
    if b is not None:
        out += b[None, :, None, None]
    return out


def _axes(node, a, inputs, position):
    """Axes from the attribute (opset < 13) or an input (opset >= 13)."""
    if "axes" in a:
        return list(a["axes"])
    if len(inputs) > position and inputs[position] is not None:
        return [int(v) for v in inputs[position]]
    return None


def run_naf_node(node, op, a, x, node_inputs):
    """The cv::naf layers that converted graphs may hold (modules/naf/src/dnn_layer.cpp)."""
    if op == "NafGelu":  # GELU's tanh form as a sigmoid
        with np.errstate(over="ignore"):
            gate = 1.0 / (1.0 + np.exp(-2.0 * np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
        return [(x * gate).astype(x.dtype)]
    if op == "NafLayerNorm":  # over the last axis, then gamma and beta when given
        mean = x.mean(axis=-1, keepdims=True)
        y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + a.get("eps", 1e-5))
        return [(y * node_inputs[1] + node_inputs[2] if len(node_inputs) > 2 else y).astype(x.dtype)]
    if op == "NafConv1x1":  # x [N, cin, H, W], weight [cout, cin, 1, 1], optional bias [cout]
        y = np.einsum("oc,nchw->nohw", node_inputs[1][:, :, 0, 0], x)
        return [(y + node_inputs[2][None, :, None, None] if len(node_inputs) > 2 else y).astype(x.dtype)]
    if op == "NafMatMul":  # A B (+ bias), B a constant [K, N] or a batch like A
        inputs = node_inputs
        y = np.matmul(x, inputs[1])
        return [(y + inputs[2] if len(inputs) > 2 else y).astype(x.dtype)]
    if op == "NafSoftmax":  # the last axis only
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return [(e / np.sum(e, axis=-1, keepdims=True)).astype(x.dtype)]
    raise NotImplementedError(f"onnx_numpy: operator {op} (node {node.name or node.output[0]})")


def run_node(node, inputs):
    """Outputs (a list of arrays) of one node."""
    op = node.op_type
    a = attributes(node)
    x = inputs[0] if inputs else None
    if op in ("NafGelu", "NafSoftmax", "NafMatMul", "NafLayerNorm", "NafConv1x1"):  # cv::naf's layers (onnx_for_opencv46.py, naf_layers=True)
        return run_naf_node(node, op, a, x, inputs)
    if op == "Constant":
        return [numpy_helper.to_array(a["value"]) if "value" in a else np.array(a["value_float"], np.float32)]
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        y = inputs[1]
        if op == "Add":
            r = x + y
        elif op == "Sub":
            r = x - y
        elif op == "Mul":
            r = x * y
        elif op == "Pow":
            r = np.power(x, y)
        elif np.issubdtype(np.asarray(x).dtype, np.integer):
            r = np.floor_divide(x, y)  # ONNX integer Div truncates; shapes here are non-negative
        else:
            r = x / y
        return [np.asarray(r).astype(np.result_type(x))]
    if op == "MatMul":
        return [np.matmul(x, inputs[1])]
    if op == "Gemm":
        A = x.T if a.get("transA", 0) else x
        B = inputs[1].T if a.get("transB", 0) else inputs[1]
        r = a.get("alpha", 1.0) * (A @ B)
        if len(inputs) > 2 and inputs[2] is not None:
            r = r + a.get("beta", 1.0) * inputs[2]
        return [r.astype(np.float32)]
    if op == "Sqrt":
        return [np.sqrt(x)]
    if op == "Erf":
        return [erf(x)]
    if op == "Tanh":
        return [np.tanh(x)]
    if op == "Sigmoid":
        return [(1.0 / (1.0 + np.exp(-x))).astype(x.dtype)]
    if op == "Relu":
        return [np.maximum(x, 0)]
    if op == "Neg":
        return [-x]
    if op == "Exp":
        return [np.exp(x)]
    if op == "Identity":
        return [x]
    if op == "Reshape":
        shape = [int(v) for v in inputs[1]]
        shape = [x.shape[i] if (s == 0 and not a.get("allowzero", 0)) else s for i, s in enumerate(shape)]
        return [x.reshape(shape)]
    if op == "Flatten":
        axis = a.get("axis", 1) % max(x.ndim, 1)
        return [x.reshape(int(np.prod(x.shape[:axis])), -1)]
    if op == "Transpose":
        return [np.transpose(x, a.get("perm"))]
    if op == "Unsqueeze":
        axes = _axes(node, a, inputs, 1)
        r = x
        for ax in sorted(v % (x.ndim + len(axes)) for v in axes):
            r = np.expand_dims(r, ax)
        return [r]
    if op == "Squeeze":
        axes = _axes(node, a, inputs, 1)
        return [np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)]
    if op == "Concat":
        return [np.concatenate([np.asarray(v) for v in inputs], axis=a["axis"])]
    if op == "Shape":
        return [np.array(x.shape, dtype=np.int64)]
    if op == "Gather":
        return [np.take(x, inputs[1], axis=a.get("axis", 0))]
    if op == "Cast":
        return [np.asarray(x).astype(ONNX_TO_NUMPY[a["to"]])]
    if op == "ConstantOfShape":
        value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
        return [np.full([int(v) for v in x], value.reshape(-1)[0], dtype=value.dtype)]
    if op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        axes = _axes(node, a, inputs, 1)
        fn = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max}[op]
        return [fn(x, axis=tuple(axes) if axes is not None else None, keepdims=bool(a.get("keepdims", 1))).astype(x.dtype)]
    if op == "Softmax":
        axis = a.get("axis", -1)
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return [(e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)]
    if op == "Slice":
        starts, ends = [int(v) for v in inputs[1]], [int(v) for v in inputs[2]]
        axes = [int(v) for v in inputs[3]] if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = [int(v) for v in inputs[4]] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            dim = x.shape[ax]
            s = max(-dim - 1, min(s, dim)) if st < 0 else max(-dim, min(s, dim))
            e = max(-dim - 1, min(e, dim))
            index[ax] = slice(s, e if not (st < 0 and e < -dim) else None, st)
        return [x[tuple(index)]]
    if op == "Split":
        axis = a.get("axis", 0)
        split = a.get("split") or ([int(v) for v in inputs[1]] if len(inputs) > 1 and inputs[1] is not None else None)
        if split is None:
            split = [x.shape[axis] // len(node.output)] * len(node.output)
        return np.split(x, np.cumsum(split)[:-1], axis=axis)
    if op == "Pad":
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = [int(v) for v in (inputs[1] if len(inputs) > 1 else a["pads"])]
        value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None and np.size(inputs[2]) else 0.0
        k = x.ndim
        widths = [(pads[i], pads[i + k]) for i in range(k)]
        if mode != "constant":
            raise NotImplementedError(f"Pad mode {mode}")
        return [np.pad(x, widths, constant_values=value)]
    if op == "Conv":
        w = inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        k = w.shape[2:]
        pads = list(a.get("pads", [0] * 4))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise NotImplementedError("Conv auto_pad")
        return [conv2d(x.astype(np.float32), w, b, a.get("strides", [1, 1]), pads, a.get("dilations", [1, 1]),
                       a.get("group", 1))]
    if op == "MeanVarianceNormalization":
        axes = tuple(a.get("axes", [0, 2, 3]))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        return [((x - mean) / np.sqrt(var + 1e-9)).astype(x.dtype)]
    if op in ("Equal", "Less", "Greater"):
        fn = {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[op]
        return [fn(x, inputs[1])]
    if op == "Not":
        return [np.logical_not(x)]
    if op == "Where":
        return [np.where(x, inputs[1], inputs[2])]
    if op == "Expand":
        shape = [int(v) for v in inputs[1]]
        return [x * np.ones(shape, dtype=x.dtype)]  # ONNX Expand broadcasts both ways
    if op == "Tile":
        return [np.tile(x, [int(v) for v in inputs[1]])]
    if op in ("Min", "Max"):
        fn = np.minimum if op == "Min" else np.maximum
        r = inputs[0]
        for v in inputs[1:]:
            r = fn(r, v)
        return [r]
    if op == "Range":
        return [np.arange(x, inputs[1], inputs[2]).astype(np.result_type(x))]
    if op == "MVN":  # cv::dnn's layer (tools/vfm/onnx_for_opencv46.py writes it): per (n, c), or per n
        axes = (1, 2, 3) if a.get("across_channels", 0) else (2, 3)
        mean = x.mean(axis=axes, keepdims=True)
        if not a.get("normalize_variance", 1):
            return [x - mean]
        std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
        return [((x - mean) / (std + a.get("eps", 1e-9))).astype(x.dtype)]
    raise NotImplementedError(f"onnx_numpy: operator {op} (node {node.name or node.output[0]})")


def evaluate(model, feeds, keep_all=False, keep=()):
    """Runs a ModelProto. feeds: name -> array. Returns the graph outputs (plus the intermediate
    values named in `keep`) as a dict, or every value (initializers and intermediates included)
    when keep_all."""
    g = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    values.update(feeds)
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in g.output} | set(keep)
    for n in g.node:
        ins = [values[i] if i else None for i in n.input]
        for name, v in zip(n.output, run_node(n, ins)):
            values[name] = np.asarray(v)
        if not keep_all:  # free what no later node reads
            for i in n.input:
                if i in consumers:
                    consumers[i] -= 1
                    if consumers[i] == 0 and i not in outputs and i not in feeds:
                        values.pop(i, None)
    if keep_all:
        return values
    missing = sorted(o for o in outputs if o not in values)
    if missing:
        raise KeyError(f"no value named {missing} in the graph")
    return {o: values[o] for o in outputs}
