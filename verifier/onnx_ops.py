"""One converter per ONNX op type, for nodes with at least one computed input.

Each converter gets the loader (``cv``), the ONNX node, its argument values (``np.ndarray`` for
constants, ``Tensor`` for computed tensors, ``None`` for omitted optional inputs) and its
attributes, and returns the output value(s).  It raises ``Unsupported`` for a usage the layer graph
cannot represent (e.g. the product of two computed tensors).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .graph import MaxPool


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
    if sum(isinstance(a, Tensor) for a in args) != 1 or not isinstance(args[0], Tensor):
        raise Unsupported("only the data input may be computed")
    src, outs = _run_on_index(cv, node, args)
    return [cv._select(o.astype(np.int64), 0.0, [src], node.op_type, _name(node)) for o in outs]


def alias(cv, node, args, attrs):
    """Ops that keep the values and change at most the shape (Reshape, Flatten, …)."""
    if not isinstance(args[0], Tensor) or any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("only the data input may be computed")
    x = args[0]
    if node.op_type in ("Identity", "Dropout", "Cast", "CastLike"):
        return Tensor(x.node, x.shape) if node.op_type != "Dropout" else \
            [Tensor(x.node, x.shape), np.ones(x.shape, bool)]
    _, (out,) = _run_on_index(cv, node, [x] + args[1:])
    if out.size != x.size:
        raise Unsupported(f"reshape of {x.size} values into {out.size}")
    return Tensor(x.node, tuple(out.shape))


def pad(cv, node, args, attrs):
    x = args[0]
    if not isinstance(x, Tensor) or any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("only the data input may be computed")
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
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
    widths = [(0, 0)] * rank
    for k, a in enumerate(axes):
        widths[a] = (pads[k], pads[k + len(axes)])
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        raise Unsupported("negative pads")
    index = np.pad(_index(x), widths, constant_values=-1)
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
def _broadcast_select(x: Tensor, shape) -> sp.csr_array:
    """Matrix taking ``x`` to its broadcast to ``shape``."""
    idx = np.broadcast_to(_index(x), shape).reshape(-1)
    return sp.csr_array((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, x.size))


def arith(cv, node, args, attrs):
    op = node.op_type
    a, b = args
    shape = tuple(np.broadcast_shapes(_shape(a), _shape(b)))
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if op not in ("Add", "Sub"):
            raise Unsupported("product or quotient of two computed tensors")
        sign = 1.0 if op == "Add" else -1.0
        return cv._linear([(a, _broadcast_select(a, shape)), (b, sign * _broadcast_select(b, shape))],
                          np.zeros(int(np.prod(shape))), shape, op, _name(node))
    x, c, x_first = (a, b, True) if isinstance(a, Tensor) else (b, a, False)
    c = np.broadcast_to(np.asarray(c, np.float64), shape).reshape(-1)
    S = _broadcast_select(x, shape)
    zero = np.zeros(c.size)
    if op == "Add":
        terms, bias = [(x, S)], c
    elif op == "Sub":
        terms, bias = ([(x, S)], -c) if x_first else ([(x, -S)], c)
    elif op == "Mul":
        terms, bias = [(x, sp.diags_array(c) @ S)], zero
    elif op == "Div":
        if not x_first:
            raise Unsupported("division by a computed tensor")
        terms, bias = [(x, sp.diags_array(1.0 / c) @ S)], zero
    return cv._linear(terms, bias, shape, op, _name(node), params=_params(args[0 if not x_first else 1]))


def _shape(v):
    return v.shape if isinstance(v, (Tensor, np.ndarray)) else np.shape(v)


def neg(cv, node, args, attrs):
    (x,) = args
    return cv._linear([(x, -sp.identity(x.size, format="csr"))], np.zeros(x.size), x.shape,
                      "Neg", _name(node))


def batchnorm(cv, node, args, attrs):
    x, scale, bias, mean, var = args[:5]
    if any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("computed statistics")
    if attrs.get("training_mode", 0):
        raise Unsupported("training mode")
    eps = attrs.get("epsilon", 1e-5)
    g = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    per_channel = (-1,) + (1,) * (len(x.shape) - 2)        # channels are axis 1
    a = np.broadcast_to(g.reshape(per_channel), x.shape[1:]).reshape(-1)
    b = np.broadcast_to((bias - mean * g).reshape(per_channel), x.shape[1:]).reshape(-1)
    n = x.shape[0]
    return cv._linear([(x, sp.diags_array(np.tile(a, n)))], np.tile(b, n), x.shape,
                      "BatchNormalization", _name(node), params=_params(*args[1:5]))


# --------------------------------------------------------------------------------------------
# matrix products
# --------------------------------------------------------------------------------------------
def _kron_eye(L: int, M):
    """``kron(I_L, M)``; dense ``M`` itself when ``L == 1``."""
    return M if L == 1 else sp.kron(sp.identity(L, format="csr"), sp.csr_array(M), format="csr")


def _matmul(cv, a, b, origin, name, params):
    """``a @ b`` with exactly one computed side, as a Linear node (no bias yet)."""
    if isinstance(a, Tensor) and not isinstance(b, Tensor):
        W = np.asarray(b, np.float64)
        if W.ndim > 2:
            raise Unsupported("product with a batched constant")
        n = a.shape[-1]
        lead = a.shape[:-1]
        Wm = W.reshape(n, -1)
        out_shape = lead + (W.shape[1],) if W.ndim == 2 else lead
        return out_shape, [(a, _kron_eye(int(np.prod(lead, dtype=np.int64)), Wm.T))]
    if isinstance(b, Tensor) and not isinstance(a, Tensor):
        W = np.asarray(a, np.float64)
        if W.ndim != 2:
            raise Unsupported("product with a batched constant")
        if len(b.shape) == 1:
            return (W.shape[0],), [(b, W)]
        lead, (n, k) = b.shape[:-2], b.shape[-2:]
        M = W if k == 1 else sp.kron(sp.csr_array(W), sp.identity(k, format="csr"), format="csr")
        return lead + (W.shape[0], k), [(b, _kron_eye(int(np.prod(lead, dtype=np.int64)), M))]
    raise Unsupported("product of two computed tensors")


def matmul(cv, node, args, attrs):
    shape, terms = _matmul(cv, args[0], args[1], "MatMul", _name(node), 0)
    return cv._linear(terms, np.zeros(int(np.prod(shape))), shape, "MatMul", _name(node),
                      params=_params(*args))


def gemm(cv, node, args, attrs):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if isinstance(c, Tensor):
        raise Unsupported("computed C input")
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)

    def transpose(v):
        return v.T if isinstance(v, np.ndarray) else \
            cv._select(_index(v).T, 0.0, [v], "Transpose", _name(node))
    if attrs.get("transA", 0):
        a = transpose(a)
    if attrs.get("transB", 0):
        b = transpose(b)
    shape, terms = _matmul(cv, a, b, "Gemm", _name(node), 0)
    bias = np.zeros(shape) if c is None else beta * np.broadcast_to(c.astype(np.float64), shape)
    terms = [(t, alpha * A) for t, A in terms]
    return cv._linear(terms, bias.reshape(-1), shape, "Gemm", _name(node), params=_params(*args))


# --------------------------------------------------------------------------------------------
# convolution and pooling: index arithmetic on (N=1, C, spatial...) tensors
# --------------------------------------------------------------------------------------------
def _spatial_geometry(in_sizes, kernel, attrs, ceil_mode=False):
    """Per spatial axis: output size and the input coordinate of every (output, tap) pair
    (out of range coordinates mark padding)."""
    nd = len(in_sizes)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    outs, coords = [], []
    for ax in range(nd):
        n, k, s, d = in_sizes[ax], kernel[ax], strides[ax], dil[ax]
        ext = d * (k - 1) + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-n // s)
            total = max((out - 1) * s + ext - n, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            hi = total - lo
        elif auto == "VALID":
            lo = hi = 0
            out = (n - ext) // s + 1
        else:
            lo, hi = pads[ax], pads[ax + nd]
            span = n + lo + hi - ext
            out = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (out - 1) * s >= n + lo:   # last window would start in the padding
                out -= 1
        if out <= 0:
            raise Unsupported(f"kernel larger than the padded input on axis {ax}")
        outs.append(out)
        coords.append(np.arange(out)[:, None] * s - lo + np.arange(k)[None, :] * d)
    return outs, coords


def _window_index(in_sizes, kernel, attrs, ceil_mode=False, pad_limit=None):
    """For one channel: ``(prod(out), prod(kernel))`` flat spatial input indices, ``-1`` where the
    tap falls outside the input."""
    outs, coords = _spatial_geometry(in_sizes, kernel, attrs, ceil_mode)
    nd = len(in_sizes)
    flat = np.zeros([1] * (2 * nd), np.int64)
    valid = np.ones([1] * (2 * nd), bool)
    for ax in range(nd):
        shape = [1] * (2 * nd)
        shape[ax], shape[nd + ax] = outs[ax], kernel[ax]
        c = coords[ax].reshape(shape)
        valid = valid & (c >= 0) & (c < in_sizes[ax])
        flat = flat * in_sizes[ax] + np.clip(c, 0, in_sizes[ax] - 1)
    flat = np.where(valid, flat, -1)
    return outs, flat.reshape(int(np.prod(outs)), int(np.prod(kernel)))


def conv(cv, node, args, attrs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if not isinstance(x, Tensor) or isinstance(w, Tensor) or isinstance(b, Tensor):
        raise Unsupported("computed weights")
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise Unsupported(f"input shape {list(x.shape)}")
    w = w.astype(np.float64)
    C, spatial = x.shape[1], x.shape[2:]
    M, Cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    groups = attrs.get("group", 1)
    if Cg * groups != C or M % groups:
        raise Unsupported("channels do not match the groups")
    outs, win = _window_index(spatial, kernel, attrs)
    P, K = win.shape                                  # output positions, taps per channel
    S = int(np.prod(spatial))
    m = np.arange(M)[:, None, None, None]             # (M, 1, 1, 1)
    c = np.arange(Cg)[None, None, :, None]            # (1, 1, Cg, 1)
    ch = (m // (M // groups)) * Cg + c                # input channel of (m, c)
    pos = np.arange(P)[None, :, None, None]
    cols_sp = win[None, :, None, :]                   # (1, P, 1, K)
    rows = np.broadcast_to(m * P + pos, (M, P, Cg, K))
    cols = np.broadcast_to(ch * S + cols_sp, (M, P, Cg, K))
    vals = np.broadcast_to(w.reshape(M, 1, Cg, K), (M, P, Cg, K))
    keep = np.broadcast_to(cols_sp >= 0, (M, P, Cg, K)) & (vals != 0)
    A = sp.csr_array((vals[keep], (rows[keep], cols[keep])), shape=(M * P, C * S))
    bias = np.zeros(M * P) if b is None else np.repeat(b.astype(np.float64), P)
    return cv._linear([(x, A)], bias, (1, M) + tuple(outs), "Conv", _name(node),
                      params=_params(w, b))


def _pool_windows(cv, node, x, attrs, global_pool):
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise Unsupported(f"input shape {list(x.shape)}")
    C, spatial = x.shape[1], x.shape[2:]
    kernel = list(spatial) if global_pool else list(attrs["kernel_shape"])
    if global_pool:
        attrs = {}
    outs, win = _window_index(spatial, kernel, attrs, bool(attrs.get("ceil_mode", 0)))
    S = int(np.prod(spatial))
    full = np.where(win[None] >= 0, win[None] + (np.arange(C) * S)[:, None, None], -1)
    return (1, C) + tuple(outs), full.reshape(-1, win.shape[1]), kernel


def maxpool(cv, node, args, attrs):
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("the Indices output")
    shape, windows, _ = _pool_windows(cv, node, args[0], attrs, node.op_type == "GlobalMaxPool")
    cv.nodes.append(MaxPool((args[0].node,), shape, name=_name(node), origin=node.op_type,
                            windows=windows))
    return Tensor(len(cv.nodes) - 1, shape)


def avgpool(cv, node, args, attrs):
    x = args[0]
    shape, windows, kernel = _pool_windows(cv, node, x, attrs, node.op_type == "GlobalAveragePool")
    valid = windows >= 0
    if attrs.get("count_include_pad", 0):
        # padded taps count in the divisor (taps beyond the padding, from ceil_mode, do not)
        outs, coords = _spatial_geometry(x.shape[2:], kernel, attrs, bool(attrs.get("ceil_mode", 0)))
        pads = list(attrs.get("pads", [0] * (2 * len(kernel))))
        counts = np.ones(1)
        for ax, c in enumerate(coords):
            n = x.shape[2 + ax]
            inside = ((c >= -pads[ax]) & (c < n + pads[ax + len(kernel)])).sum(axis=1)
            counts = np.multiply.outer(counts, inside)
        divisor = np.tile(counts.reshape(-1), x.shape[1])
    else:
        divisor = valid.sum(axis=1)
    rows = np.broadcast_to(np.arange(windows.shape[0])[:, None], windows.shape)
    vals = np.broadcast_to((1.0 / divisor)[:, None], windows.shape)
    A = sp.csr_array((vals[valid], (rows[valid], windows[valid])),
                     shape=(windows.shape[0], x.size))
    return cv._linear([(x, A)], np.zeros(windows.shape[0]), shape, node.op_type, _name(node))


def relu(cv, node, args, attrs):
    return cv._relu(args[0], _name(node))


CONVERTERS = {
    "Relu": relu,
    "Gemm": gemm, "MatMul": matmul,
    "Add": arith, "Sub": arith, "Mul": arith, "Div": arith, "Neg": neg,
    "BatchNormalization": batchnorm,
    "Conv": conv,
    "MaxPool": maxpool, "GlobalMaxPool": maxpool,
    "AveragePool": avgpool, "GlobalAveragePool": avgpool,
    "Reshape": alias, "Flatten": alias, "Squeeze": alias, "Unsqueeze": alias,
    "Identity": alias, "Dropout": alias, "Cast": alias, "CastLike": alias,
    "Transpose": index_op, "Slice": index_op, "Gather": index_op, "Split": index_op,
    "Expand": index_op, "Tile": index_op, "DepthToSpace": index_op, "SpaceToDepth": index_op,
    "Pad": pad, "Concat": concat,
}
