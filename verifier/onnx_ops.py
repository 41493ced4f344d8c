"""One converter per ONNX op type, for nodes with at least one computed input: the ops that move
values (run on an index tensor) and the elementwise affine ops.  Matrix products, convolution,
pooling and batch normalisation are in ``onnx_layers.py``.

Each converter gets the loader (``cv``), the ONNX node, its argument values (``np.ndarray`` for
constants, ``Tensor`` for computed tensors, ``None`` for omitted optional inputs) and its
attributes, and returns the output value(s).  It raises ``Unsupported`` for a usage the layer graph
cannot represent (e.g. the product of two computed tensors); a converter never returns a node that
computes something other than the ONNX op on every input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from onnx import TensorProto

from .ops import Sigmoid, Tanh


@dataclass(frozen=True)
class Tensor:
    """A computed tensor: the value of graph node ``node`` viewed with ONNX shape ``shape``."""
    node: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class Unsupported(Exception):
    """Raised by a converter for an op (or op usage) the graph cannot represent."""


def _name(node):
    return node.name or node.output[0]


def _index(t: Tensor) -> np.ndarray:
    return np.arange(t.size, dtype=np.int64).reshape(t.shape)


def _params(*arrays) -> int:
    return int(sum(np.asarray(a).size for a in arrays if isinstance(a, np.ndarray)))


def _only_data_computed(args):
    if not isinstance(args[0], Tensor) or any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("only the data input may be computed")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------------------------
# ops that only move values: run them on an index tensor
# --------------------------------------------------------------------------------------------
def _run_on_index(cv, node, args):
    """Evaluate ``node`` with its computed argument replaced by an index tensor; returns the
    moved index tensor(s) for one-source ops."""
    (src,) = [a for a in args if isinstance(a, Tensor)]
    feeds = [(_index(src) if isinstance(a, Tensor) else a) for a in args]
    return src, cv._fold(node, feeds)


def index_op(cv, node, args, attrs):
    _only_data_computed(args)
    src, outs = _run_on_index(cv, node, args)
    return [cv._select(o.astype(np.int64), 0.0, [src], node.op_type, _name(node)) for o in outs]


# value-preserving element types a Cast may go to (a cast to an integer or a narrower float
# rounds, which the float64 graph cannot represent)
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}


def alias(cv, node, args, attrs):
    """Ops that keep the values and change at most the shape (Reshape, Flatten, …)."""
    _only_data_computed(args)
    x = args[0]
    if node.op_type == "Cast" and attrs.get("to") not in _FLOAT_TYPES:
        raise Unsupported(f"cast to {TensorProto.DataType.Name(attrs.get('to', 0))}")
    if node.op_type == "CastLike" and args[1].dtype not in (np.float32, np.float64):
        raise Unsupported(f"cast to {args[1].dtype}")
    if node.op_type == "Dropout":
        if len(args) > 2 and args[2] is not None and bool(np.asarray(args[2]).reshape(-1)[0]):
            raise Unsupported("training mode")
        return [Tensor(x.node, x.shape), np.ones(x.shape, bool)]
    if node.op_type in ("Identity", "Cast", "CastLike"):
        return Tensor(x.node, x.shape)
    _, (out,) = _run_on_index(cv, node, [x] + args[1:])
    if out.size != x.size:
        raise Unsupported(f"reshape of {x.size} values into {out.size}")
    return Tensor(x.node, tuple(out.shape))


def shape_of(cv, node, args, attrs):
    """Shape and Size of a computed tensor are constants (batch dimension 1)."""
    x = args[0]
    return cv._fold(node, [np.broadcast_to(np.float32(0), x.shape)])


_PAD_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect", "wrap": "wrap"}


def pad(cv, node, args, attrs):
    _only_data_computed(args)
    x = args[0]
    mode = _text(attrs.get("mode", "constant"))
    if mode not in _PAD_MODES:
        raise Unsupported(f"mode {mode!r}")
    if cv.opset < 11:
        pads, value, axes = list(attrs["pads"]), float(attrs.get("value", 0.0)), None
    else:
        pads = [int(p) for p in args[1]]
        value = float(args[2].reshape(-1)[0]) if len(args) > 2 and args[2] is not None and \
            args[2].size else 0.0
        axes = [int(a) for a in args[3]] if len(args) > 3 and args[3] is not None else None
    rank = len(x.shape)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"{len(pads)} pads for {len(axes)} axes")
    widths = [(0, 0)] * rank
    for k, a in enumerate(axes):
        widths[a] = (pads[k], pads[k + len(axes)])
    index = _index(x)
    if any(lo < 0 or hi < 0 for lo, hi in widths):      # negative pads crop
        if mode != "constant":
            raise Unsupported(f"negative pads in mode {mode!r}")
        index = index[tuple(slice(max(-lo, 0), n - max(-hi, 0))
                            for (lo, hi), n in zip(widths, x.shape))]
        widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if mode == "constant":
        index = np.pad(index, widths, constant_values=-1)
    else:
        index = np.pad(index, widths, mode=_PAD_MODES[mode])
    return cv._select(index, value, [x], "Pad", _name(node))


def concat(cv, node, args, attrs):
    axis = attrs["axis"]
    sources = [a for a in args if isinstance(a, Tensor)]
    offsets = np.cumsum([0] + [s.size for s in sources])
    parts, fills, k = [], [], 0
    for a in args:
        if isinstance(a, Tensor):
            parts.append(_index(a) + offsets[k])
            fills.append(np.zeros(a.shape))
            k += 1
        else:
            parts.append(np.full(a.shape, -1, np.int64))
            fills.append(a.astype(np.float64))
    index = np.concatenate(parts, axis=axis)
    fill = np.concatenate(fills, axis=axis)
    return cv._select(index, fill, sources, "Concat", _name(node))


# --------------------------------------------------------------------------------------------
# elementwise affine ops
# --------------------------------------------------------------------------------------------
def _shape(v):
    return v.shape if isinstance(v, (Tensor, np.ndarray)) else np.shape(v)


def _broadcast_select(x: Tensor, shape) -> sp.csr_array:
    """Matrix taking ``x`` to its broadcast to ``shape``."""
    idx = np.broadcast_to(_index(x), shape).reshape(-1)
    return sp.csr_array((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, x.size))


def _combine(cv, node, args, coefs):
    """``sum_k coefs[k] * args[k]`` with numpy broadcasting, computed and constant arguments."""
    shape = tuple(np.broadcast_shapes(*(_shape(a) for a in args)))
    terms, bias = [], np.zeros(shape)
    for a, c in zip(args, coefs):
        if isinstance(a, Tensor):
            terms.append((a, c * _broadcast_select(a, shape)))
        else:
            bias = bias + c * np.asarray(a, np.float64)
    return cv._linear(terms, bias.reshape(-1), shape, node.op_type, _name(node),
                      params=_params(*args))


def arith(cv, node, args, attrs):
    op = node.op_type
    a, b = args
    if op in ("Add", "Sub"):
        return _combine(cv, node, args, [1.0, 1.0 if op == "Add" else -1.0])
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        raise Unsupported("product or quotient of two computed tensors")
    if op == "Div" and isinstance(b, Tensor):
        raise Unsupported("division by a computed tensor")
    x, c = (a, b) if isinstance(a, Tensor) else (b, a)
    shape = tuple(np.broadcast_shapes(_shape(a), _shape(b)))
    c = np.broadcast_to(np.asarray(c, np.float64), shape).reshape(-1)
    scale = c if op == "Mul" else 1.0 / c
    return cv._linear([(x, sp.diags_array(scale) @ _broadcast_select(x, shape))], np.zeros(c.size),
                      shape, op, _name(node), params=_params(*args))


def sum_mean(cv, node, args, attrs):
    coef = 1.0 if node.op_type == "Sum" else 1.0 / len(args)
    return _combine(cv, node, args, [coef] * len(args))


def neg(cv, node, args, attrs):
    (x,) = args
    return cv._linear([(x, -sp.identity(x.size, format="csr"))], np.zeros(x.size), x.shape,
                      "Neg", _name(node))


def relu(cv, node, args, attrs):
    return cv._relu(args[0], _name(node))


# --------------------------------------------------------------------------------------------
# piecewise-linear activations, exactly in terms of Relu and affine maps
# --------------------------------------------------------------------------------------------
def _eye(x: Tensor, scale=1.0):
    return sp.diags_array(np.broadcast_to(np.asarray(scale, np.float64), (x.size,)).copy(),
                          format="csr")


def _leaky(cv, node, x: Tensor, slope: np.ndarray, params: int):
    """``s*x + (1 - s)*relu(x)`` (= x where x >= 0, s*x below): one ReLU per value, not the two of
    ``relu(x) - s*relu(-x)``, so one binary per unstable unit in the MILP."""
    r = cv._relu(x, _name(node), origin=node.op_type)
    return cv._linear([(x, _eye(x, slope)), (r, _eye(x, 1.0 - slope))], np.zeros(x.size), x.shape,
                      node.op_type, _name(node), params=params)


def leaky_relu(cv, node, args, attrs):
    x = args[0]
    alpha = attrs.get("alpha", float(np.float32(0.01)))   # float attributes are float32
    return _leaky(cv, node, x, np.full(x.size, float(alpha)), 0)


def prelu(cv, node, args, attrs):
    x, slope = args
    if not isinstance(x, Tensor) or isinstance(slope, Tensor):
        raise Unsupported("computed slope")
    slope = np.asarray(slope, np.float64)
    cv._check_finite("PRelu", _name(node), slope)
    return _leaky(cv, node, x, np.broadcast_to(slope, x.shape).reshape(-1), slope.size)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _clip_bound(value):
    """A Clip bound as a float, ``None`` when it clips nothing a float32 can hold (absent, ±inf, or
    opset 6's default ±FLT_MAX)."""
    if value is None or np.size(value) == 0:
        return None
    v = float(np.asarray(value, np.float64).reshape(-1)[0])
    return None if abs(v) >= FLOAT32_MAX else v


def clip(cv, node, args, attrs):
    x = args[0]
    if any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("computed min or max")
    if cv.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo = args[1] if len(args) > 1 else None
        hi = args[2] if len(args) > 2 else None
    lo, hi = _clip_bound(lo), _clip_bound(hi)
    if lo is not None and hi is not None and lo > hi:
        raise Unsupported("min > max")
    return _clamp(cv, x, lo, hi, "Clip", _name(node))


def _clamp(cv, x: Tensor, lo, hi, op: str, name: str) -> Tensor:
    """``min(max(x, lo), hi)`` as ``lo + relu(x - lo)`` then ``hi - relu(hi - that)``: two ReLU
    layers in sequence, so the bounds of the second already know the first clipped (interval
    bounds of the clip come out exact, unlike ``lo + relu(x - lo) - relu(x - hi)``)."""
    n = x.size
    if lo is not None:                                   # x <- lo + relu(x - lo)
        t = cv._linear([(x, _eye(x))], np.full(n, -lo), x.shape, op, name)
        r = cv._relu(t, name, origin=op)
        x = cv._linear([(r, _eye(x))], np.full(n, lo), x.shape, op, name)
    if hi is not None:                                   # x <- hi - relu(hi - x)
        t = cv._linear([(x, _eye(x, -1.0))], np.full(n, hi), x.shape, op, name)
        r = cv._relu(t, name, origin=op)
        x = cv._linear([(r, _eye(x, -1.0))], np.full(n, hi), x.shape, op, name)
    return x


def hard_sigmoid(cv, node, args, attrs):
    """``clip(alpha x + beta, 0, 1)``: exact with two ReLUs per value."""
    x = args[0]
    alpha = float(attrs.get("alpha", float(np.float32(0.2))))    # float attributes are float32
    beta = float(attrs.get("beta", float(np.float32(0.5))))
    name = _name(node)
    t = cv._linear([(x, _eye(x, alpha))], np.full(x.size, beta), x.shape, "HardSigmoid", name)
    return _clamp(cv, t, 0.0, 1.0, "HardSigmoid", name)


# --------------------------------------------------------------------------------------------
# S-shaped activations: relaxed, not exact (see ops.sshape)
# --------------------------------------------------------------------------------------------
def s_shaped(cv, node, args, attrs):
    return cv._unary(S_SHAPED[node.op_type], args[0], _name(node), node.op_type)


S_SHAPED = {"Sigmoid": Sigmoid, "Tanh": Tanh}


# --------------------------------------------------------------------------------------------
# an output Softmax: dropped, the graph returns its logits
# --------------------------------------------------------------------------------------------
def softmax_groups(shape: tuple[int, ...], axis: int, opset: int) -> np.ndarray:
    """For each flat value of a Softmax over ``shape``, the id of the set of values normalised
    together: the values that differ only along ``axis`` (opset >= 13), or, before opset 13, the
    rows of the input coerced to 2-D at ``axis``."""
    rank = len(shape)
    axis = axis % rank if rank else 0
    idx = np.indices(shape).reshape(rank, -1)
    if opset >= 13:
        rest = [d for k, d in enumerate(shape) if k != axis]
        coords = np.delete(idx, axis, axis=0)
        return np.ravel_multi_index(tuple(coords), rest) if rest else np.zeros(idx.shape[1], int)
    return np.arange(int(np.prod(shape, dtype=np.int64))) // int(np.prod(shape[axis:],
                                                                         dtype=np.int64))


def softmax(cv, node, args, attrs):
    """A Softmax whose values are the model's output is dropped: within one group (the values
    normalised together) softmax is strictly increasing in each logit with the others fixed and
    ``s_i <= s_j  <=>  y_i <= y_j`` exactly, so a property made only of such comparisons holds on
    the model iff it holds on the logits.  ``api`` refuses every other property for such a graph
    (``Graph.output_groups``).  A Softmax anywhere else is unsupported."""
    if node is not cv.output_softmax:
        raise Unsupported("only a Softmax whose values are the model's output is supported")
    x = args[0]
    default = -1 if cv.opset >= 13 else 1
    cv.output_groups = softmax_groups(x.shape, int(attrs.get("axis", default)), cv.opset)
    cv.notes.append(f"Softmax ({_name(node)}) at the output is dropped: the graph returns its "
                    f"logits, and only properties comparing two outputs of one softmax "
                    f"(Y_i <= Y_j) are accepted")
    return Tensor(x.node, x.shape)


CONVERTERS = {
    "Relu": relu, "LeakyRelu": leaky_relu, "PRelu": prelu, "Clip": clip, "Softmax": softmax,
    "HardSigmoid": hard_sigmoid, "Sigmoid": s_shaped, "Tanh": s_shaped,
    "Add": arith, "Sub": arith, "Mul": arith, "Div": arith, "Neg": neg,
    "Sum": sum_mean, "Mean": sum_mean,
    "Reshape": alias, "Flatten": alias, "Squeeze": alias, "Unsqueeze": alias,
    "Identity": alias, "Dropout": alias, "Cast": alias, "CastLike": alias,
    "Shape": shape_of, "Size": shape_of,
    "Transpose": index_op, "Slice": index_op, "Gather": index_op, "Split": index_op,
    "Expand": index_op, "Tile": index_op, "DepthToSpace": index_op, "SpaceToDepth": index_op,
    "Pad": pad, "Concat": concat,
}
