"""Converters for the weight-carrying ONNX ops: matrix products (Gemm, MatMul), batch
normalisation, convolution and pooling.  Same contract as ``onnx_ops.py``: each converter turns one
ONNX node with a computed input into graph nodes that compute exactly that op (up to float64
rounding), or raises ``Unsupported``.

Convolution and pooling are index arithmetic on ``(N=1, C, spatial…)`` tensors: every (output,
tap) pair gets the flat input index it reads, ``-1`` where the tap falls into the padding; the
matrix (or the MaxPool windows) is built from those arrays in one go.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .graph import MaxPool
from .ops.conv import ConvMatrix
from .onnx_ops import Tensor, Unsupported, _index, _name, _params, _text


# --------------------------------------------------------------------------------------------
# matrix products
# --------------------------------------------------------------------------------------------
def _kron_eye(L: int, M):
    """``kron(I_L, M)``; ``M`` itself (dense stays dense) when ``L == 1``."""
    return M if L == 1 else sp.kron(sp.identity(L, format="csr"), sp.csr_array(M), format="csr")


def _matmul(a, b):
    """``a @ b`` (numpy semantics) with exactly one computed side: ``(shape, [(Tensor, A)])``."""
    if isinstance(a, Tensor) and not isinstance(b, Tensor):
        W = np.asarray(b, np.float64)
        if W.ndim > 2:
            raise Unsupported("product with a batched constant")
        n, lead = a.shape[-1], a.shape[:-1]
        if W.shape[0] != n:
            raise ValueError(f"cannot multiply {list(a.shape)} by {list(W.shape)}")
        out_shape = lead + (W.shape[1],) if W.ndim == 2 else lead
        return out_shape, [(a, _kron_eye(int(np.prod(lead, dtype=np.int64)), W.reshape(n, -1).T))]
    if isinstance(b, Tensor) and not isinstance(a, Tensor):
        W = np.asarray(a, np.float64)
        if W.ndim > 2:
            raise Unsupported("product with a batched constant")
        if W.shape[-1] != (b.shape[-1] if len(b.shape) == 1 else b.shape[-2]):
            raise ValueError(f"cannot multiply {list(W.shape)} by {list(b.shape)}")
        if len(b.shape) == 1:
            return W.shape[:-1], [(b, W.reshape(-1, b.shape[0]))]
        lead, k = b.shape[:-2], b.shape[-1]
        Wm = W.reshape(-1, W.shape[-1])
        M = Wm if k == 1 else sp.kron(sp.csr_array(Wm), sp.identity(k, format="csr"), format="csr")
        out_shape = lead + W.shape[:-1] + (k,)       # a 1-D W drops the row axis
        return out_shape, [(b, _kron_eye(int(np.prod(lead, dtype=np.int64)), M))]
    raise Unsupported("product of two computed tensors")


def matmul(cv, node, args, attrs):
    shape, terms = _matmul(args[0], args[1])
    return cv._linear(terms, np.zeros(int(np.prod(shape, dtype=np.int64))), shape, "MatMul",
                      _name(node), params=_params(*args))


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
    shape, terms = _matmul(a, b)
    bias = np.zeros(shape) if c is None else beta * np.broadcast_to(c.astype(np.float64), shape)
    terms = [(t, alpha * A) for t, A in terms]
    return cv._linear(terms, bias.reshape(-1), shape, "Gemm", _name(node), params=_params(*args))


def batchnorm(cv, node, args, attrs):
    x, scale, bias, mean, var = args[:5]
    if any(isinstance(a, Tensor) for a in args[1:]):
        raise Unsupported("computed statistics")
    if attrs.get("training_mode", 0):
        raise Unsupported("training mode")
    eps = attrs.get("epsilon", float(np.float32(1e-5)))   # float attributes are float32
    g = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    per_channel = (-1,) + (1,) * (len(x.shape) - 2)        # channels are axis 1
    shift = bias.astype(np.float64) - mean.astype(np.float64) * g
    a = np.broadcast_to(g.reshape(per_channel), x.shape[1:]).reshape(-1)
    b = np.broadcast_to(shift.reshape(per_channel), x.shape[1:]).reshape(-1)
    n = x.shape[0]
    out = cv._linear([(x, sp.diags_array(np.tile(a, n)))], np.tile(b, n), x.shape,
                     "BatchNormalization", _name(node), params=_params(*args[1:5]))
    # onnxruntime computes (x - mean) * a + bias in float32 (a itself from a square root and a
    # division): its rounding is relative to |x||a| + |mean||a| + |bias|, not to the folded |b|
    lin = cv.nodes[out.node]
    mag = np.abs(mean.astype(np.float64) * g) + np.abs(bias.astype(np.float64))
    lin.abs_bias = np.tile(np.broadcast_to(mag.reshape(per_channel), x.shape[1:]).reshape(-1), n)
    lin.chain_terms = lin.row_terms + 5
    return out


# --------------------------------------------------------------------------------------------
# convolution and pooling
# --------------------------------------------------------------------------------------------
def _spatial_geometry(in_sizes, kernel, attrs, ceil_mode=False):
    """Per spatial axis: output size, the input coordinate of every (output, tap) pair (out of
    range coordinates are padding) and the (begin, end) padding actually applied."""
    nd = len(in_sizes)
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    auto = _text(attrs.get("auto_pad", "NOTSET"))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    outs, coords, applied = [], [], []
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
        applied.append((lo, hi))
    return outs, coords, applied


def _window_index(in_sizes, kernel, attrs, ceil_mode=False):
    """For one channel: ``(prod(out), prod(kernel))`` flat spatial input indices, ``-1`` where the
    tap falls outside the input."""
    outs, coords, _ = _spatial_geometry(in_sizes, kernel, attrs, ceil_mode)
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


def _check_nc(x):
    if not isinstance(x, Tensor):
        raise Unsupported("computed weights")
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise Unsupported(f"input shape {list(x.shape)}")


def conv(cv, node, args, attrs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    _check_nc(x)
    if isinstance(w, Tensor) or isinstance(b, Tensor):
        raise Unsupported("computed weights")
    w = w.astype(np.float64)
    C, spatial = x.shape[1], x.shape[2:]
    M, Cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    groups = attrs.get("group", 1)
    if Cg * groups != C or M % groups or len(kernel) != len(spatial):
        raise ValueError(f"weights {list(w.shape)} do not fit input {list(x.shape)} "
                         f"with {groups} groups")
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
    cv._check_finite("Conv", _name(node), w)          # also taps that only meet the padding
    A = sp.csr_array((vals[keep], (rows[keep], cols[keep])), shape=(M * P, C * S))
    bias = np.zeros(M * P) if b is None else np.repeat(b.astype(np.float64), P)
    out = cv._linear([(x, A)], bias, (1, M) + tuple(outs), "Conv", _name(node),
                     params=_params(w, b))
    if len(spatial) in (1, 2):                        # the kernel form for back-substitution
        _, _, applied = _spatial_geometry(spatial, kernel, attrs)
        nd = len(spatial)
        grow = lambda v, one: (one,) * (2 - nd) + tuple(int(t) for t in v)
        cv.nodes[out.node].set_convs([ConvMatrix(
            w.reshape((M, Cg) + (1,) * (2 - nd) + tuple(kernel)), (C,) + grow(spatial, 1),
            grow(outs, 1), grow(attrs.get("strides", [1] * nd), 1),
            grow(attrs.get("dilations", [1] * nd), 1), grow([lo for lo, _ in applied], 0),
            groups)])
    return out


def _pool_windows(x, attrs, global_pool):
    """Output shape, ``(C * prod(out), prod(kernel))`` flat input indices (``-1`` = padding), the
    kernel, and the spatial geometry."""
    _check_nc(x)
    C, spatial = x.shape[1], x.shape[2:]
    kernel = list(spatial) if global_pool else list(attrs["kernel_shape"])
    if global_pool:
        attrs = {}
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    outs, win = _window_index(spatial, kernel, attrs, ceil_mode)
    S = int(np.prod(spatial))
    full = np.where(win[None] >= 0, win[None] + (np.arange(C) * S)[:, None, None], -1)
    geometry = _spatial_geometry(spatial, kernel, attrs, ceil_mode)
    return (1, C) + tuple(outs), full.reshape(-1, win.shape[1]), geometry


def maxpool(cv, node, args, attrs):
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("the Indices output")
    shape, windows, _ = _pool_windows(args[0], attrs, node.op_type == "GlobalMaxPool")
    cv.nodes.append(MaxPool((args[0].node,), shape, name=_name(node), origin=node.op_type,
                            windows=windows))
    return Tensor(len(cv.nodes) - 1, shape)


def avgpool(cv, node, args, attrs):
    x = args[0]
    shape, windows, (_, coords, applied) = _pool_windows(x, attrs,
                                                         node.op_type == "GlobalAveragePool")
    valid = windows >= 0
    if attrs.get("count_include_pad", 0):
        # taps in the padding count in the divisor (taps beyond it, from ceil_mode, do not)
        counts = np.ones(1)
        for ax, c in enumerate(coords):
            (lo, hi), n = applied[ax], x.shape[2 + ax]
            counts = np.multiply.outer(counts, ((c >= -lo) & (c < n + hi)).sum(axis=1))
        divisor = np.tile(counts.reshape(-1), x.shape[1])
    else:
        divisor = valid.sum(axis=1)
    rows = np.broadcast_to(np.arange(windows.shape[0])[:, None], windows.shape)
    vals = np.broadcast_to((1.0 / divisor)[:, None], windows.shape)
    A = sp.csr_array((vals[valid], (rows[valid], windows[valid])),
                     shape=(windows.shape[0], x.size))
    return cv._linear([(x, A)], np.zeros(windows.shape[0]), shape, node.op_type, _name(node))


CONVERTERS = {
    "Gemm": gemm, "MatMul": matmul,
    "BatchNormalization": batchnorm,
    "Conv": conv,
    "MaxPool": maxpool, "GlobalMaxPool": maxpool,
    "AveragePool": avgpool, "GlobalAveragePool": avgpool,
}
