#!/usr/bin/env python3
"""Graph passes that make ONNX vision encoders load and run correctly in OpenCV 4.6's cv::dnn.

OpenCV 4.6 (Debian 12) imports ONNX graphs layer by layer with a fixed set of patterns. Vision
transformers exported from PyTorch trip over it in a few known ways; each pass below fixes one,
keeping the computed function the same (checked against tools/vfm/onnx_numpy.py):

- fix_input_shape: one fixed input size (batch 1); cv::dnn cannot propagate symbolic sizes.
- fold_constants: every value that does not depend on the image (Shape/Gather/Concat arithmetic,
  Constant, ConstantOfShape, Cast, ...) is evaluated once and stored as an initializer.
- rewrite_layernorm: the decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div)
  needs (N,L,C) - (N,L,1) broadcasting, which 4.6 cannot do; it becomes Reshape to
  (1, rows, C, 1), cv::dnn's own "MVN" layer (op type MVN, default domain: 4.6 creates unknown op
  types by layer name; its MeanVarianceNormalization import is missing) over each row, Reshape
  back. MVN divides by (std + eps) where LayerNorm divides by sqrt(var + eps): same eps, a
  difference far below float32 noise for the usual std ~ 1.
- rewrite_gelu: 4.6 has no Erf; PyTorch's exact GELU chain becomes the tanh form of GELU written
  as x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (7 cheap layers; |difference| < 4e-4 x).
- rewrite_erf: any other Erf; erf(z) becomes tanh(2/sqrt(pi) (z + 0.044715*2 z^3))
  (the tanh form of GELU; |difference| < 4e-4 per activation), computed as 2 sigmoid(2 a) - 1
  (cv::dnn's TanH is scalar libm, 6.5x slower than its Sigmoid).
- reshape_broadcast_constants: a constant operand of Add/Mul/Sub/Div that broadcasts over leading
  dimensions (e.g. a (C,) LayerNorm weight against (1,L,C), or a (H,L,L) attention bias against
  (B,H,L,L)) is applied to the other operand reshaped to 2-D (rows, trailing size) and reshaped
  back; 4.6 applies constants along axis 1 only and otherwise fails.
- drop_empty_trailing_inputs: optional inputs given as "" are removed (4.6 cannot look them up).
- move_attention_scale: MatMul(q, k^T) followed by Mul(scalar) becomes MatMul(Mul(q, scalar), k^T);
  4.6 fuses the original order wrongly (relative error ~4.7 seen on MobileSAM).
- transposes_as_4d (speed only): a 3-D, 5-D or 6-D Transpose whose axes merge into 4 runs as a
  4-D one between Reshapes; 4.6 permutes other ranks element by element, 11x slower (TinyViT's
  windows).

With naf_layers=True (speed only; the graph then needs cv::naf::registerLayers() before
cv::dnn::readNetFromONNX, which cv::naf::VisionFoundationModel does), two more use cv::naf's own
cv::dnn layers (modules/naf/src/dnn_layer.cpp), as op types of the default domain like MVN (4.6
creates them by name; a custom domain would log a warning per node):
- rewrite_gelu writes one NafGelu node (the same function) instead of its 7 elementwise layers;
- softmax_as_naf_layer: a Softmax over the last axis becomes NafSoftmax (cv::dnn 4.6's Softmax
  spends ~7 ns per value).
- rewrite_layernorm writes one NafLayerNorm node for a LayerNorm over the last axis, with the
  constant scale and shift that follow it folded in (the exact sqrt(var + eps) of LayerNorm),
  instead of Reshape, MVN, Reshape and two broadcast constants;
- conv1x1_as_naf_layer: a 1x1 convolution (stride 1, one group, no padding) becomes NafConv1x1,
  cv::naf's CPU 1x1 convolution (MobileSAM's MBConv stage at 256 x 256: 2-3x cv::dnn's time);
- matmul_as_naf_layer: MatMul becomes NafMatMul (the register-blocked GEMM of cv::naf's CPU
  convolutions), a linear layer's bias Add folded in; cv::dnn 4.6's InnerProduct ran at about a
  fifth of the FMA peak.

Usage as a library: convert(model, {input_name: shape}) -> ModelProto. The MobileSAM wrapper is
tools/vfm/convert_mobilesam.py; tools/export_vfm.py uses the same passes for exported ViTs.
"""

import numpy as np
from onnx import helper, numpy_helper

import onnx_numpy



class GraphEditor:
    """Nodes + initializers of a graph with producer/consumer look-ups."""

    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.init = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.nodes = list(self.graph.node)
        self.counter = 0
        self.taken = set(self.init) | {o for n in self.nodes for o in n.output} | {i.name for i in self.graph.input}

    def fresh(self, base):
        """A value name used nowhere in the graph yet (passes run one after another)."""
        while True:
            self.counter += 1
            name = f"{base}__cv46_{self.counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def constant(self, base, array):
        name = self.fresh(base)
        self.init[name] = np.asarray(array)
        return name

    def producers(self):
        return {o: n for n in self.nodes for o in n.output}

    def consumers(self):
        result = {}
        for n in self.nodes:
            for i in n.input:
                result.setdefault(i, []).append(n)
        for o in self.graph.output:
            result.setdefault(o.name, []).append(None)  # graph output: never removable
        return result

    def splice(self, replacements, removed):
        """replacements: id(node) -> nodes put in its place; removed: ids of nodes dropped."""
        out = []
        for n in self.nodes:
            if id(n) in replacements:
                out.extend(replacements[id(n)])
            elif id(n) not in removed:
                out.append(n)
        self.nodes = out

    def commit(self):
        used = {i for n in self.nodes for i in n.input}
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.initializer[:]
        for name, arr in self.init.items():
            if name in used:
                # np.array keeps 0-d values 0-d (np.ascontiguousarray would make them 1-d)
                self.graph.initializer.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        del self.graph.value_info[:]
        return self.model


def fix_input_shape(model, shapes):
    """shapes: input name -> list of ints."""
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shapes[inp.name]):
                raise ValueError(f"input {inp.name}: rank {len(dims)} != {len(shapes[inp.name])}")
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    for out in model.graph.output:  # output sizes follow from the input; let cv::dnn infer them
        for d in out.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.Clear()
                d.dim_value = 1
    return model


def trace_shapes(model, shapes):
    """Evaluates the graph on zeros: every value (for shapes and constant values)."""
    feeds = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    return onnx_numpy.evaluate(model, feeds, keep_all=True)


def fold_constants(model, values):
    """Replaces every node whose outputs do not depend on a graph input by initializers.
    values: the trace of trace_shapes() (Shape outputs are exact since input sizes are fixed)."""
    ed = GraphEditor(model)
    const = set(ed.init)
    kept = []
    for n in ed.nodes:
        inputs = [i for i in n.input if i]
        if n.op_type in ("Constant", "Shape") or all(i in const for i in inputs):
            const.update(n.output)
        else:
            kept.append(n)
    for n in kept:
        for i in n.input:
            if i in const and i not in ed.init:
                ed.init[i] = values[i]
    ed.nodes = kept
    return ed.commit()


def _const_value(ed, name):
    return ed.init.get(name)


def _fold_affine(ed, cons, out):
    """The constant scale (Mul) and shift (Add) that follow `out` as its only consumers, when both
    are there and hold one value per channel of the last axis: (gamma, beta, final output, nodes)."""
    users = cons.get(out, [])
    mul = users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == "Mul" else None
    gamma_name = next((i for i in mul.input if i != out), None) if mul else None
    users = cons.get(mul.output[0], []) if mul else []
    add = users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == "Add" else None
    beta_name = next((i for i in add.input if i != mul.output[0]), None) if add else None
    gamma, beta = ed.init.get(gamma_name), ed.init.get(beta_name)
    if gamma is None or beta is None or gamma.ndim != 1 or beta.shape != gamma.shape:
        return None
    return gamma_name, beta_name, add.output[0], (mul, add)


def rewrite_layernorm(model, values, naf_layers=False):
    """The decomposed LayerNorm -> Reshape, MVN, Reshape (see the module's docstring); with
    naf_layers, one over the last axis -> NafLayerNorm, its following constant scale and shift
    folded in when there are both."""
    ed = GraphEditor(model)
    cons = ed.consumers()
    replaced = 0
    remove = set()
    new_nodes = {}
    for r1 in ed.nodes:
        if r1.op_type != "ReduceMean" or id(r1) in remove:
            continue
        x = r1.input[0]
        rank = values[x].ndim
        axes = [a % rank for a in onnx_numpy.attributes(r1).get("axes", [])]
        if len(axes) != 1 or not onnx_numpy.attributes(r1).get("keepdims", 1):
            continue
        axis = axes[0]
        try:
            sub = [n for n in cons[r1.output[0]] if n is not None and n.op_type == "Sub" and n.input[0] == x][0]
            pow_ = [n for n in cons[sub.output[0]] if n is not None and n.op_type == "Pow"][0]
            r2 = cons[pow_.output[0]][0]
            add = cons[r2.output[0]][0]
            sqrt = cons[add.output[0]][0]
            div = cons[sqrt.output[0]][0]
        except (IndexError, KeyError, TypeError):
            continue
        if (r2 is None or r2.op_type != "ReduceMean" or add is None or add.op_type != "Add" or sqrt is None
                or sqrt.op_type != "Sqrt" or div is None or div.op_type != "Div" or div.input[0] != sub.output[0]):
            continue
        # Every intermediate is removed: none may feed anything else, and the variance must be
        # taken over the mean's axis.
        if any(len(cons[v]) != 1 for v in (pow_.output[0], r2.output[0], add.output[0], sqrt.output[0])):
            continue
        if [a % rank for a in onnx_numpy.attributes(r2).get("axes", [])] != axes:
            continue
        eps = _const_value(ed, add.input[1])
        exponent = _const_value(ed, pow_.input[1])
        if eps is None or np.asarray(eps).size != 1:
            continue
        if exponent is None or float(np.asarray(exponent).reshape(-1)[0]) != 2.0:
            continue
        if len(cons[sub.output[0]]) != 2 or len(cons[r1.output[0]]) != 1:
            continue
        base = r1.output[0]
        if naf_layers and axis == rank - 1 and rank >= 2:  # NafLayerNorm refuses 1-D (a column in 4.6)
            affine = _fold_affine(ed, cons, div.output[0])
            channels = values[x].shape[-1]
            if affine and ed.init[affine[0]].shape == (channels,):
                gamma, beta, y, folded = affine
                remove.update(id(n) for n in folded)
                inputs = [x, gamma, beta]
            else:
                y, inputs = div.output[0], [x]
            for n in (r1, sub, pow_, r2, add, sqrt, div):
                remove.add(id(n))
            new_nodes[id(r1)] = [helper.make_node("NafLayerNorm", inputs, [y], name=y, eps=float(eps))]
            replaced += 1
            continue
        nodes = []
        src = x
        shape = list(values[x].shape)
        perm = None
        if axis != rank - 1:  # e.g. SAM's LayerNorm2d over the channels of NCHW: move them last
            perm = [d for d in range(rank) if d != axis] + [axis]
            moved = ed.fresh(base + "_last")
            nodes.append(helper.make_node("Transpose", [x], [moved], name=moved, perm=perm))
            src, shape = moved, [shape[d] for d in perm]
        rows = int(np.prod(shape[:-1]))
        flat, normed = ed.fresh(base + "_rows"), ed.fresh(base + "_mvn")
        back = div.output[0] if perm is None else ed.fresh(base + "_back")
        nodes += [
            helper.make_node("Reshape", [src, ed.constant(base + "_shape4", np.array([1, rows, shape[-1], 1], np.int64))],
                             [flat], name=flat),
            helper.make_node("MVN", [flat], [normed], name=normed, eps=float(eps), across_channels=0,
                             normalize_variance=1),
            helper.make_node("Reshape", [normed, ed.constant(base + "_shapeback", np.array(shape, np.int64))],
                             [back], name=back),
        ]
        if perm is not None:
            nodes.append(helper.make_node("Transpose", [back], [div.output[0]], name=div.output[0],
                                          perm=[int(i) for i in np.argsort(perm)]))
        for n in (r1, sub, pow_, r2, add, sqrt, div):
            remove.add(id(n))
        new_nodes[id(r1)] = nodes
        replaced += 1
    ed.splice(new_nodes, remove)
    return ed.commit(), replaced


def _scalar(ed, name):
    """The value of a one-element constant, else None."""
    value = _const_value(ed, name)
    return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else None


def _sigmoid_of_cubic(ed, z, y, cubic, scale):
    """The nodes of sigmoid(scale * (z + cubic * z^3)), the core of both tanh forms below (values
    named after y); returns (nodes, the sigmoid's output)."""
    z2, z3, cz3, s, arg, sig = (ed.fresh(y + t) for t in ("_z2", "_z3", "_cz3", "_sum", "_arg", "_sig"))
    return [
        helper.make_node("Mul", [z, z], [z2], name=z2),
        helper.make_node("Mul", [z2, z], [z3], name=z3),
        helper.make_node("Mul", [z3, ed.constant(y + "_cubic", np.array(cubic, np.float32))], [cz3], name=cz3),
        helper.make_node("Add", [z, cz3], [s], name=s),
        helper.make_node("Mul", [s, ed.constant(y + "_scale", np.array(scale, np.float32))], [arg], name=arg),
        helper.make_node("Sigmoid", [arg], [sig], name=sig),
    ], sig


def rewrite_gelu(model, naf_layers=False):
    """Exact GELU as PyTorch exports it, Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5), becomes its
    tanh form in one chain: x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), which equals
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). 7 elementwise layers in cv::dnn instead of
    the 12 of rewrite_erf inside the exported chain; the same function as rewrite_erf's. An Erf
    outside this pattern is left to rewrite_erf. naf_layers: one NafGelu node (cv::naf's layer)
    instead of the chain."""
    ed = GraphEditor(model)
    cons = ed.consumers()
    remove = set()
    new_nodes = {}
    count = 0

    def only(value, op):
        users = cons.get(value, [])
        return users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == op else None

    for div in ed.nodes:
        if div.op_type != "Div" or len(div.input) != 2:
            continue
        x, root2 = div.input[0], _scalar(ed, div.input[1])
        if root2 is None or abs(root2 - np.sqrt(2)) > 1e-3:
            continue
        erf = only(div.output[0], "Erf")
        add = erf and only(erf.output[0], "Add")
        mul = add and only(add.output[0], "Mul")
        half = mul and only(mul.output[0], "Mul")
        if not half:
            continue
        one = _scalar(ed, add.input[1] if add.input[0] == erf.output[0] else add.input[0])
        other = [i for i in half.input if i != mul.output[0]]
        if one != 1.0 or sorted(mul.input) != sorted([x, add.output[0]]) or len(other) != 1:
            continue
        if _scalar(ed, other[0]) != 0.5:
            continue
        y = half.output[0]
        if naf_layers:
            new_nodes[id(div)] = [helper.make_node("NafGelu", [x], [y], name=y)]
        else:
            nodes, gate = _sigmoid_of_cubic(ed, x, y, 0.044715, 2 * np.sqrt(2 / np.pi))
            new_nodes[id(div)] = nodes + [helper.make_node("Mul", [x, gate], [y], name=y)]
        remove.update(id(n) for n in (erf, add, mul, half))
        count += 1
    ed.splice(new_nodes, remove)
    return ed.commit(), count


def rewrite_erf(model):
    """erf(z) -> tanh(c1 * (z + c2 * z^3)), c1 = 2/sqrt(pi), c2 = 2*0.044715 (GELU's tanh form),
    computed as 2 * sigmoid(2 * c1 * (z + c2 * z^3)) - 1: the same function, but cv::dnn 4.6's
    TanH layer calls libm's tanhf per value (7.8 ns each here, a fifth of MobileSAM's forward)
    while its Sigmoid takes 1.2 ns."""
    ed = GraphEditor(model)
    out = []
    count = 0
    for n in ed.nodes:
        if n.op_type != "Erf":
            out.append(n)
            continue
        z, y = n.input[0], n.output[0]
        nodes, sig = _sigmoid_of_cubic(ed, z, y, 2 * 0.044715, 4 / np.sqrt(np.pi))
        twice = ed.fresh(y + "_twice")
        out += nodes + [
            helper.make_node("Mul", [sig, ed.constant(y + "_two", np.array(2, np.float32))], [twice], name=twice),
            helper.make_node("Add", [twice, ed.constant(y + "_minus_one", np.array(-1, np.float32))], [y], name=y),
        ]
        count += 1
    ed.nodes = out
    return ed.commit(), count


def matmul_as_naf_layer(model, values):
    """MatMul -> NafMatMul (cv::naf's layer) where its layer computes it:
    - B a constant [K, N] (a linear layer; A of any rank >= 2, all but its last axis rows); when
      the product's only consumer adds a constant of N values (the bias), that Add is folded in;
    - B computed, of A's rank (>= 3) with the same leading dimensions: one product per leading
      index (attention's q k^T and a v).
    Others are left to cv::dnn."""
    ed = GraphEditor(model)
    cons = ed.consumers()
    replaced, removed = {}, set()
    count = 0
    for n in ed.nodes:
        if n.op_type != "MatMul" or len(n.input) != 2:
            continue
        a, b = n.input
        if a in ed.init or a not in values:
            continue
        shape_a = np.shape(values[a])
        inputs, out = [a, b], n.output[0]
        if b in ed.init:
            w = ed.init[b]
            if w.ndim != 2 or len(shape_a) < 2 or shape_a[-1] != w.shape[0]:
                continue
            users = cons.get(out, [])
            add = users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == "Add" else None
            other = [i for i in add.input if i != out] if add else []
            bias = ed.init.get(other[0]) if len(other) == 1 else None
            # A bias of one value per column that does not add axes: the Add keeps the product's
            # shape (a (1, 1, N) bias on a 2-D product would broadcast it to 3-D).
            keeps_shape = add is not None and add.output[0] in values and out in values and \
                np.shape(values[add.output[0]]) == np.shape(values[out])
            if bias is not None and keeps_shape and bias.size == w.shape[1] and bias.shape[-1:] == (w.shape[1],) \
                    and bias.ndim <= len(shape_a):
                inputs.append(other[0])
                out = add.output[0]
                removed.add(id(add))
        else:
            if b not in values:
                continue
            shape_b = np.shape(values[b])
            if len(shape_a) < 3 or len(shape_b) != len(shape_a) or shape_a[:-2] != shape_b[:-2] or \
                    shape_a[-1] != shape_b[-2]:
                continue
        replaced[id(n)] = [helper.make_node("NafMatMul", inputs, [out], name=n.name or out)]
        count += 1
    ed.splice(replaced, removed)
    return ed.commit(), count


def conv1x1_as_naf_layer(model):
    """Conv with a [cout, cin, 1, 1] constant weight, stride and dilation 1, one group and no
    padding -> NafConv1x1 (same inputs: x, weight[, bias]); others are left to cv::dnn."""
    ed = GraphEditor(model)
    count = 0
    for i, n in enumerate(ed.nodes):
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in ed.init:
            continue
        if len(n.input) > 2 and n.input[2] not in ed.init:
            continue
        w = ed.init[n.input[1]]
        a = onnx_numpy.attributes(n)
        if w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("group", 1) != 1:
            continue
        if any(v != 1 for v in a.get("strides", [1, 1])) or any(v != 1 for v in a.get("dilations", [1, 1])):
            continue
        if any(v != 0 for v in a.get("pads", [0, 0, 0, 0])) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        ed.nodes[i] = helper.make_node("NafConv1x1", list(n.input), [n.output[0]], name=n.name or n.output[0])
        count += 1
    return ed.commit(), count


def softmax_as_naf_layer(model, values):
    """Softmax over its input's last axis -> NafSoftmax (cv::naf's layer); any other axis is left
    to cv::dnn."""
    ed = GraphEditor(model)
    count = 0
    for i, n in enumerate(ed.nodes):
        if n.op_type != "Softmax" or n.domain not in ("", "ai.onnx"):
            continue
        if n.input[0] not in values:  # a value an earlier pass made: its rank is not traced
            continue
        rank = np.ndim(values[n.input[0]])
        if rank < 2:  # cv::dnn 4.6 keeps a 1-D blob as a column: the layer refuses it
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        if axis is None:  # the default differs between opsets: only an explicit axis is taken
            continue
        if axis not in (-1, rank - 1):
            continue
        ed.nodes[i] = helper.make_node("NafSoftmax", [n.input[0]], [n.output[0]], name=n.name or n.output[0],
                                       axis=-1)
        count += 1
    return ed.commit(), count


def reshape_broadcast_constants(model, values):
    """x (op) c where c equals the trailing dims of x (broadcast over its leading dims): computed as
    Reshape(x, (R, T)) (op) c.reshape(T), then Reshape back. cv::dnn 4.6 applies a constant
    along axis 1 only, so e.g. a (C,) LayerNorm weight on (1, L, C) or an (H, L, L) attention bias
    on (B, H, L, L) would otherwise fail or hit the wrong axis."""
    ed = GraphEditor(model)
    out = []
    count = 0
    for n in ed.nodes:
        if n.op_type not in ("Add", "Mul", "Sub", "Div") or len(n.input) != 2:
            out.append(n)
            continue
        const_pos = [k for k in (0, 1) if n.input[k] in ed.init]
        if len(const_pos) != 1 or n.input[1 - const_pos[0]] not in values:
            out.append(n)
            continue
        k = const_pos[0]
        arr, x = ed.init[n.input[k]], n.input[1 - k]
        shape = list(values[x].shape)
        trailing = list(arr.shape)
        while trailing and trailing[0] == 1:
            trailing.pop(0)
        lead = len(shape) - len(trailing)
        if arr.size == 1 or len(shape) < 3 or lead < 1 or shape[lead:] != trailing:
            out.append(n)
            continue
        rows, cols = int(np.prod(shape[:lead])), int(np.prod(trailing))
        y = n.output[0]
        flat, res = ed.fresh(y + "_2d"), ed.fresh(y + "_op2d")
        inputs = [None, None]
        inputs[1 - k] = flat
        # 1-D: 4.6 puts a constant bias at axis rank(x) - rank(c) (= 1 here); scales always at axis 1
        inputs[k] = ed.constant(n.input[k] + "_flat", arr.reshape(cols))
        out += [
            helper.make_node("Reshape", [x, ed.constant(y + "_shape2d", np.array([rows, cols], np.int64))], [flat], name=flat),
            helper.make_node(n.op_type, inputs, [res], name=res),
            helper.make_node("Reshape", [res, ed.constant(y + "_shape", np.array(shape, np.int64))], [y], name=y),
        ]
        count += 1
    ed.nodes = out
    return ed.commit(), count


def move_attention_scale(model):
    ed = GraphEditor(model)
    cons = ed.consumers()
    count = 0
    skip = set()
    replacement = {}
    for n in ed.nodes:
        if n.op_type != "MatMul" or n.input[1] in ed.init:
            continue
        users = cons.get(n.output[0], [])
        if len(users) != 1 or users[0] is None or users[0].op_type != "Mul":
            continue
        mul = users[0]
        scale_name = mul.input[1] if mul.input[0] == n.output[0] else mul.input[0]
        scale = ed.init.get(scale_name)
        if scale is None or np.asarray(scale).size != 1:
            continue
        q_scaled = ed.fresh(n.input[0] + "_scaled")
        replacement[id(n)] = [
            helper.make_node("Mul", [n.input[0], ed.constant(q_scaled + "_s", np.asarray(scale, np.float32).reshape(()))],
                             [q_scaled], name=q_scaled),
            helper.make_node("MatMul", [q_scaled, n.input[1]], [mul.output[0]], name=mul.output[0]),
        ]
        skip.add(id(mul))
        count += 1
    ed.splice(replacement, skip)
    return ed.commit(), count


def drop_empty_trailing_inputs(model):
    """Optional inputs given as "" (e.g. Pad's constant_value): 4.6 looks them up and fails."""
    count = 0
    for n in model.graph.node:
        while len(n.input) and n.input[-1] == "":
            del n.input[-1]
            count += 1
    return model, count


def transposes_as_4d(model, values, ranks=(3, 5, 6)):
    """A Transpose whose input rank is in `ranks` becomes Reshape -> 4-D Transpose -> Reshape when
    its axes fit in 4 once the runs of adjacent axes that stay together are merged. cv::dnn 4.6
    permutes 4-D blobs in parallel and other ranks one element at a time: TinyViT's 6-D window
    partition (1, 19, 7, 19, 7, 128), perm (0, 1, 3, 2, 4, 5), took 24 ms, the same move as
    (19, 7, 19, 896), perm (0, 2, 1, 3), 2.2 ms. On MobileSAM: 20 6-D and 23 3-D Transposes,
    the forward 2.25 -> 1.89 s. Pure data movement: the same values, bit for bit."""
    ed = GraphEditor(model)
    out = []
    count = 0
    for n in ed.nodes:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None) if n.op_type == "Transpose" else None
        shape = list(values[n.input[0]].shape) if perm is not None and n.input[0] in values else None
        if shape is None or len(shape) not in ranks or len(shape) != len(perm):
            out.append(n)
            continue
        groups = []  # runs of input axes that stay adjacent and in order, in output order
        for axis in perm:
            if groups and groups[-1][-1] + 1 == axis:
                groups[-1].append(axis)
            else:
                groups.append([axis])
        if len(groups) > 4:
            out.append(n)
            continue
        by_input = sorted(range(len(groups)), key=lambda g: groups[g][0])  # groups in input order
        merged_shape = [int(np.prod([shape[a] for a in groups[g]])) for g in by_input]
        merged_perm = [by_input.index(g) for g in range(len(groups))]
        pad = 4 - len(groups)
        shape4 = [1] * pad + merged_shape
        perm4 = list(range(pad)) + [p + pad for p in merged_perm]
        y = n.output[0]
        flat, moved = ed.fresh(y + "_4d"), ed.fresh(y + "_moved4d")
        out += [
            helper.make_node("Reshape", [n.input[0], ed.constant(y + "_shape4d", np.array(shape4, np.int64))], [flat],
                             name=flat),
            helper.make_node("Transpose", [flat], [moved], name=moved, perm=perm4),
            helper.make_node("Reshape", [moved, ed.constant(y + "_shape", np.array([shape[a] for a in perm], np.int64))],
                             [y], name=y),
        ]
        count += 1
    ed.nodes = out
    return ed.commit(), count


def convert(model, input_shapes, log=print, naf_layers=False):
    """All passes, in order. input_shapes: input name -> fixed shape. naf_layers: also use cv::naf's
    cv::dnn layers (see the module's docstring). Returns the new model."""
    model = fix_input_shape(model, input_shapes)
    values = trace_shapes(model, input_shapes)
    model = fold_constants(model, values)
    log(f"folded constants: {len(model.graph.node)} nodes left")
    model, n = rewrite_layernorm(model, values, naf_layers)
    log(f"LayerNorm -> " + ("NafLayerNorm (over the last axis), else " if naf_layers else "") + f"MVN: {n}")
    model, n = rewrite_gelu(model, naf_layers)
    log(f"exact GELU -> tanh form, " + ("NafGelu" if naf_layers else "x * sigmoid") + f": {n}")
    model, n = rewrite_erf(model)
    log(f"other Erf -> tanh form (as a sigmoid): {n}")
    if naf_layers:  # before the passes that rewrite the bias Adds and move the attention scale
        model, n = matmul_as_naf_layer(model, values)
        log(f"MatMul -> NafMatMul: {n}")
    model, n = reshape_broadcast_constants(model, values)
    log(f"broadcast constants reshaped: {n}")
    model, n = move_attention_scale(model)
    log(f"attention scale moved onto q: {n}")
    model, n = drop_empty_trailing_inputs(model)
    log(f"empty optional inputs dropped: {n}")
    model, n = transposes_as_4d(model, values)
    log(f"transposes of other ranks as 4-D: {n}")
    if naf_layers:
        model, n = softmax_as_naf_layer(model, values)
        log(f"last-axis Softmax -> NafSoftmax: {n}")
        model, n = conv1x1_as_naf_layer(model)
        log(f"1x1 Conv -> NafConv1x1: {n}")
    # no onnx.checker here: "MVN" is cv::dnn's layer type, not a standard ONNX operator
    return model
