"""A float64 copy of an ONNX model that onnxruntime can run, for replaying inputs float32 cannot
hold (a VNN-LIB box that pins an input to 0.1 contains no float32 value).

``float64_copy(model_bytes)`` returns the serialized copy: the same graph with every float tensor
(initializers, Constant and ConstantOfShape values, Cast targets, inputs and outputs) in DOUBLE.
The weights are float32 values, so they are exact in double; the copy is the model executed in
float64 arithmetic.

onnxruntime's CPU kernels lack double versions of some ops the loader reads (measured with
onnxruntime 1.32: Conv, AveragePool, GlobalAveragePool, GlobalMaxPool, Mean).  Those nodes are
rewritten into ops that have them:

- Conv, AveragePool, GlobalAveragePool are linear maps (plus Conv's bias).  Their matrix is read
  from onnxruntime itself: the float32 node (without its bias) applied to every basis vector.  Each
  response entry is a single product ``w * 1.0`` (exact), which is checked -- a Conv entry must be
  one of the node's weights, a pooling entry ``float32(1/c)`` for a whole count ``c`` (then ``1/c``
  in double is used).  In the copy the map becomes Gather + Mul + ReduceSum on a padded row list.
- GlobalMaxPool becomes ReduceMax over the spatial axes; Mean becomes Sum / n; Clip before
  opset 11 (bounds as attributes) becomes ``lo + relu(x - lo)``, ``hi - relu(hi - x)`` (Max and
  Min have no double kernel in those opsets either).

Anything that cannot be converted raises ``Float64Unsupported`` (one line); replay then reports
the candidate as not replayed (``unknown``), never as a counterexample.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Float64Unsupported", "float64_copy"]

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
_LINEAR = ("Conv", "AveragePool", "GlobalAveragePool")
_REWRITTEN = _LINEAR + ("GlobalMaxPool", "Mean")
MAX_ENTRIES = 2**24        # padded row-list entries of one rewritten linear node (256 MB)
_CHUNK = 2**24             # float32 response values computed per onnxruntime call


class Float64Unsupported(ValueError):
    """The model has no float64 copy onnxruntime can run; one line saying why."""


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _session(data: bytes):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# what the rewritten nodes read: constant inputs and run-time shapes
# --------------------------------------------------------------------------------------------
def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values (the weights a rewritten node may read)."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _shapes(model: onnx.ModelProto, names: set[str]) -> dict[str, tuple[int, ...]]:
    """The run-time shape of each tensor in ``names``: the float32 model run once (batch 1, zero
    input) with them as extra outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    inp = next(i for i in g.input if i.name not in {t.name for t in g.initializer})
    have = {o.name for o in g.output} | {inp.name}
    elem = inp.type.tensor_type.elem_type          # the rewritten ops keep their input's type
    for name in sorted(names - have):
        g.output.append(helper.make_tensor_value_info(name, elem, None))
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
             for d in inp.type.tensor_type.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    sess = _session(probe.SerializeToString())
    outs = sess.run(None, {inp.name: np.zeros(shape, dtype)})
    got = {o.name: tuple(np.shape(v)) for o, v in zip(sess.get_outputs(), outs)}
    got[inp.name] = tuple(shape)
    return {k: got[k] for k in names}


# --------------------------------------------------------------------------------------------
# linear nodes: their exact matrix, read from onnxruntime
# --------------------------------------------------------------------------------------------
def _responses(node: onnx.NodeProto, consts: dict, in_shape, opset: int):
    """(rows, cols, values) of the node's matrix without bias: the float32 node on the basis."""
    inputs = [node.input[0]] + [i for i in node.input[1:2] if i]   # Conv: data, W (no bias)
    inits = [numpy_helper.from_array(np.asarray(consts[i], np.float32), i) for i in inputs[1:]]
    single = helper.make_node(node.op_type, inputs, ["out"], name=node.name)
    single.attribute.extend(node.attribute)
    batch = ["n"] + list(in_shape[1:])
    g = helper.make_graph([single], "basis", [helper.make_tensor_value_info(inputs[0], F32, batch)],
                          [helper.make_tensor_value_info("out", F32, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = max(7, helper.find_min_ir_version_for(list(m.opset_import)))
    sess = _session(m.SerializeToString())
    n_in = int(np.prod(in_shape))
    rows, cols, vals = [], [], []
    first = sess.run(None, {inputs[0]: np.zeros([1] + batch[1:], np.float32)})[0]
    n_out = first.size
    step = max(1, _CHUNK // max(n_out, 1))
    for start in range(0, n_in, step):
        k = min(step, n_in - start)
        basis = np.zeros((k, n_in), np.float32)
        basis[np.arange(k), start + np.arange(k)] = 1.0
        y = sess.run(None, {inputs[0]: basis.reshape([k] + batch[1:])})[0].reshape(k, n_out)
        c, r = np.nonzero(y)
        rows.append(r)
        cols.append(c + start)
        vals.append(y[c, r])
    return (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float64),
            n_out)


def _exact_entries(node, consts, vals: np.ndarray) -> np.ndarray:
    """The matrix entries in double, after checking each is an exact single product."""
    label = f"{node.op_type} ({node.name or node.output[0]})"
    if node.op_type == "Conv":
        w = np.asarray(consts[node.input[1]], np.float32).astype(np.float64).reshape(-1)
        if not np.all(np.isin(vals, w)):
            raise Float64Unsupported(f"{label}: onnxruntime's basis responses are not its weights")
        return vals
    count = np.rint(1.0 / vals)                     # pools: float32(1 / count)
    if not np.all((count >= 1) & (np.float32(1.0) / count.astype(np.float32) == vals)):
        raise Float64Unsupported(f"{label}: onnxruntime's basis responses are not 1/count")
    return 1.0 / count


def _linear_nodes(node, consts, shapes, opset, tag):
    """Nodes computing ``node`` in double as a padded row list; plus their initializers."""
    x, y = node.input[0], node.output[0]
    label = f"{node.op_type} ({node.name or y})"
    for i in node.input[1:]:
        if i and i not in consts:
            raise Float64Unsupported(f"{label}: its weights are computed, not constants")
    rows, cols, vals, n_out = _responses(node, consts, shapes[x], opset)
    vals = _exact_entries(node, consts, vals)
    n_in = int(np.prod(shapes[x]))
    if n_out != int(np.prod(shapes[y])):
        raise Float64Unsupported(f"{label}: output shape differs between batch sizes")
    bias = np.zeros(n_out)
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
        b = np.asarray(consts[node.input[2]], np.float32).astype(np.float64)
        bias = np.repeat(b, n_out // b.size)        # (1, M, spatial...): channel-major
    # one extra entry per row: the bias, read from a constant 1 appended to the input
    rows = np.concatenate([rows, np.arange(n_out)])
    cols = np.concatenate([cols, np.full(n_out, n_in)])
    vals = np.concatenate([vals, bias])
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    per_row = np.bincount(rows, minlength=n_out)
    width = int(per_row.max())
    if n_out * width > MAX_ENTRIES:
        raise Float64Unsupported(f"{label}: {n_out} x {width} entries is too large to rewrite")
    slot = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    idx = np.full((n_out, width), n_in, np.int64)   # padding reads the 1 with weight 0
    w = np.zeros((n_out, width))
    idx[rows, slot], w[rows, slot] = cols, vals
    p = f"_f64_{tag}"
    inits = [numpy_helper.from_array(np.array([1, n_in], np.int64), p + "flat"),
             numpy_helper.from_array(np.ones((1, 1)), p + "one"),
             numpy_helper.from_array(idx, p + "idx"), numpy_helper.from_array(w, p + "w"),
             numpy_helper.from_array(np.array(shapes[y], np.int64), p + "shape")]
    nodes = [helper.make_node("Reshape", [x, p + "flat"], [p + "x"]),
             helper.make_node("Concat", [p + "x", p + "one"], [p + "x1"], axis=1),
             helper.make_node("Gather", [p + "x1", p + "idx"], [p + "g"], axis=1),
             helper.make_node("Mul", [p + "g", p + "w"], [p + "t"])]
    nodes += _reduce("ReduceSum", p + "t", p + "s", [2], 0, opset, inits, p)
    nodes.append(helper.make_node("Reshape", [p + "s", p + "shape"], [y]))
    return nodes, inits


def _reduce(op, x, y, axes, keepdims, opset, inits, p):
    """A Reduce* node over ``axes`` under the model's opset (axes became an input in 13/18)."""
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    if as_input:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), p + "axes"))
        return [helper.make_node(op, [x, p + "axes"], [y], keepdims=keepdims)]
    return [helper.make_node(op, [x], [y], axes=axes, keepdims=keepdims)]


# --------------------------------------------------------------------------------------------
# the copy
# --------------------------------------------------------------------------------------------
def _to_double_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    if t.data_type != F32:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)


def _convert_node(n: onnx.NodeProto) -> None:
    """Float tensor attributes and Cast targets in place."""
    for a in n.attribute:
        if a.name == "to" and n.op_type == "Cast" and a.i == F32:
            a.i = F64
        if a.HasField("t"):
            a.t.CopyFrom(_to_double_tensor(a.t))
    if n.op_type == "Constant":
        for a in list(n.attribute):
            if a.name in ("value_float", "value_floats"):
                v = np.array(a.f if a.name == "value_float" else list(a.floats), np.float64)
                n.attribute.remove(a)
                n.attribute.append(helper.make_attribute("value",
                                                         numpy_helper.from_array(v, "value")))


def float64_copy(model_bytes: bytes) -> bytes:
    """The serialized float64 copy of the model (see the module docstring)."""
    model = onnx.load_from_string(model_bytes)
    opset = _opset(model)
    g = model.graph
    rewrite = [n for n in g.node if n.domain in ("", "ai.onnx") and
               (n.op_type in _REWRITTEN or (n.op_type == "Clip" and opset < 11))]
    rewritten = {id(n) for n in rewrite}
    consts = _constants(model)
    try:
        shapes = _shapes(model, {t for n in rewrite for t in (n.input[0], n.output[0])}) \
            if rewrite else {}
    except Exception as e:
        raise Float64Unsupported(f"cannot run the float32 model to read its shapes: "
                                 f"{_first_line(e)}") from None
    new_nodes, new_inits = [], []
    for k, n in enumerate(g.node):
        if id(n) not in rewritten:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            _convert_node(c)
            new_nodes.append(c)
            continue
        if n.op_type in _LINEAR:
            try:
                nodes, inits = _linear_nodes(n, consts, shapes, opset, k)
            except (Float64Unsupported, MemoryError):
                raise
            except Exception as e:          # onnxruntime refusing the single node, …
                raise Float64Unsupported(f"{n.op_type} ({n.name or n.output[0]}): "
                                         f"{_first_line(e)}") from None
        elif n.op_type == "Clip":        # opset < 11: Max/Min have no double kernel there
            a = {x.name: x.f for x in n.attribute}
            inits, nodes, cur, p = [], [], n.input[0], f"_f64_{k}"
            if "min" in a:                                       # lo + relu(x - lo)
                inits.append(numpy_helper.from_array(np.array(a["min"]), p + "lo"))
                nodes += [helper.make_node("Sub", [cur, p + "lo"], [p + "a"]),
                          helper.make_node("Relu", [p + "a"], [p + "b"]),
                          helper.make_node("Add", [p + "b", p + "lo"], [p + "c"])]
                cur = p + "c"
            if "max" in a:                                       # hi - relu(hi - x)
                inits.append(numpy_helper.from_array(np.array(a["max"]), p + "hi"))
                nodes += [helper.make_node("Sub", [p + "hi", cur], [p + "d"]),
                          helper.make_node("Relu", [p + "d"], [p + "e"]),
                          helper.make_node("Sub", [p + "hi", p + "e"], [p + "f"])]
                cur = p + "f"
            nodes.append(helper.make_node("Identity", [cur], list(n.output)))
        elif n.op_type == "GlobalMaxPool":
            inits = []
            nodes = _reduce("ReduceMax", n.input[0], n.output[0],
                            list(range(2, len(shapes[n.input[0]]))), 1, opset, inits,
                            f"_f64_{k}")
        else:                                                    # Mean
            inits = [numpy_helper.from_array(np.array(float(len(n.input))), f"_f64_{k}n")]
            nodes = [helper.make_node("Sum", list(n.input), [f"_f64_{k}s"]),
                     helper.make_node("Div", [f"_f64_{k}s", f"_f64_{k}n"], list(n.output))]
        new_nodes.extend(nodes)
        new_inits.extend(inits)
    del g.node[:]
    g.node.extend(new_nodes)
    inits = [_to_double_tensor(t) for t in g.initializer] + new_inits
    del g.initializer[:]
    g.initializer.extend(inits)
    for s in g.sparse_initializer:
        s.values.CopyFrom(_to_double_tensor(s.values))
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == F32:
            v.type.tensor_type.elem_type = F64
    del g.value_info[:]                  # stale float types; onnxruntime infers them again
    return model.SerializeToString()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
