"""Linear: ``y = sum_k A_k @ x_k + b`` over one or more earlier nodes.

Every affine or index-moving ONNX op (Gemm, MatMul, Conv, BatchNorm, AveragePool, Add/Sub/Mul/Div by
constants, Transpose, Pad, Slice, Concat, residual Add …) becomes one of these.  Each ``A_k`` is a
dense ``np.ndarray`` or a ``scipy.sparse.csr_array`` (convolutions, permutations, diagonals); the
products below work for both, and the derived matrices (|A|, A+, A-) are cached on the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .base import Node


def rows_times(L: np.ndarray, A) -> np.ndarray:
    """``L @ A`` for a dense ``L`` (``(..., s)``, rows = objectives) and a dense or sparse ``A``
    ``(s, p)``; dense ``(..., p)``."""
    lead = L.shape[:-1]
    L2 = L.reshape(-1, L.shape[-1])
    out = np.asarray((A.T @ L2.T).T) if sp.issparse(A) else L2 @ A
    return out.reshape(lead + (A.shape[1],))


def times(A, x: np.ndarray) -> np.ndarray:
    """``x @ A.T`` for ``x`` of shape ``(..., p)``: the map applied to every row."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = np.asarray((A @ x2.T).T) if sp.issparse(A) else x2 @ A.T
    return out.reshape(lead + (A.shape[0],))


def triplets(A):
    """Nonzero ``(row, col, value)`` of a dense or sparse matrix."""
    if sp.issparse(A):
        C = sp.coo_array(A)
        return C.row.astype(np.int64), C.col.astype(np.int64), C.data.astype(np.float64)
    r, c = np.nonzero(A)
    return r.astype(np.int64), c.astype(np.int64), np.asarray(A[r, c], np.float64)


@dataclass(eq=False)
class Linear(Node):
    mats: tuple = ()                    # one matrix per input, shape (size, inputs[k].size)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # How the ONNX ops this node stands for round when onnxruntime runs them one after another in
    # float32 (see ``chain_absimg``): magnitude matrices and bias magnitudes of the op chain (None:
    # the node is one op, |A_k| and |b|), and the number of rounded terms along the chain (None:
    # ``row_terms``).  Kept up to date when nodes are merged (``passes``).
    abs_mats: tuple | None = None
    abs_bias: np.ndarray | None = None
    chain_terms: int | None = None
    # a ``ConvMatrix`` per input whose matrix is a convolution (None elsewhere, or None for all):
    # the fast form of the products with coefficient blocks (``ops.conv``); set with ``set_convs``
    convs: tuple | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    kind = "linear"
    affine = True

    # -- structure ------------------------------------------------------------------------------
    def check(self, sizes: list[int]) -> None:
        if len(self.mats) != len(self.inputs) or self.bias.shape != (self.size,):
            raise ValueError("matrices do not match inputs")
        for A, s in zip(self.mats, sizes):
            if A.shape != (self.size, s):
                raise ValueError(f"matrix {A.shape} does not map {s} values to {self.size}")

    @property
    def row_terms(self) -> int:
        """The most nonzero terms summed for one output (over every input, plus the bias): a sum
        of that many products rounds by at most ``gamma(row_terms)`` of its magnitude in any order
        (zero terms add exactly 0)."""
        if "row_terms" not in self._cache:
            nnz = np.zeros(self.size, np.int64)
            for A in self.mats:
                nnz += np.diff(sp.csr_array(A).indptr) if sp.issparse(A) else \
                    np.count_nonzero(A, axis=1)
            self._cache["row_terms"] = int(nnz.max(initial=0)) + 1
        return self._cache["row_terms"]

    @property
    def terms32(self) -> int:
        """Rounded terms per output of the op chain as onnxruntime runs it (each op of a chain
        rounds its own sums; two more terms cover an op's own scaling and bias add, as Gemm's alpha and
        beta, or constant folding by the runtime)."""
        return self.chain_terms if self.chain_terms is not None else self.row_terms + 2

    def _derived(self, what: str, k: int):
        key = (what, k)
        if key not in self._cache:
            A = self.mats[k]
            if what == "abs":
                v = abs(A)
            elif what == "pos":
                v = A.maximum(0) if sp.issparse(A) else np.maximum(A, 0)
            elif what == "neg":
                v = A.minimum(0) if sp.issparse(A) else np.minimum(A, 0)
            elif what == "f32":
                v = A.astype(np.float32)
            else:                                          # "conv32"
                v = None if self.conv(k) is None else self.conv(k).astype(np.float32)
            self._cache[key] = v
        return self._cache[key]

    def abs_mat(self, k: int):
        return self._derived("abs", k)

    def pos_mat(self, k: int):
        return self._derived("pos", k)

    def neg_mat(self, k: int):
        return self._derived("neg", k)

    def row_block(self, k: int, rows: np.ndarray) -> np.ndarray:
        """Dense rows ``A_k[rows]`` (an exact selection)."""
        A = self.mats[k]
        return A[rows].toarray() if sp.issparse(A) else A[rows]

    def set_convs(self, convs) -> None:
        """Pair input ``k``'s matrix with ``convs[k]`` (a ``ConvMatrix`` or None); one that does
        not reproduce the matrix on a random probe is left out (``ConvMatrix.matches``)."""
        convs = tuple(c if c is not None and c.matches(A) else None
                      for c, A in zip(convs, self.mats))
        self.convs = convs if any(c is not None for c in convs) else None

    def conv(self, k: int):
        return None if self.convs is None else self.convs[k]

    def _use_conv(self, k: int, structured: str, dtype=np.float64):
        """The ConvMatrix to multiply by: ``structured`` is ``auto`` (where it pays, see
        ``ConvMatrix.pays``), ``always`` or ``never``."""
        c = self.conv(k)
        if c is None or structured == "never" or (structured == "auto" and not c.pays):
            return None
        return self._derived("conv32", k) if dtype == np.float32 else c

    def _mat(self, k: int, dtype):
        """``A_k``, or its float32 copy for float32 operands (estimates, see ``bounds.engine``:
        their products run in float32, about twice as fast; float64 stays for every bound)."""
        return self._derived("f32", k) if dtype == np.float32 else self.mats[k]

    def rows_times_k(self, L: np.ndarray, k: int, structured: str = "auto") -> np.ndarray:
        """``L @ A_k``: the transposed convolution where input ``k`` is a convolution (see
        ``_use_conv``), else the matrix product; in ``L``'s precision (float32 or float64)."""
        c = self._use_conv(k, structured, L.dtype)
        return rows_times(L, self._mat(k, L.dtype)) if c is None else c.rows_times(L)

    def times_k(self, k: int, x: np.ndarray, structured: str = "auto") -> np.ndarray:
        """``x @ A_k.T`` (the convolution where input ``k`` is one, see ``_use_conv``), in
        ``x``'s precision."""
        c = self._use_conv(k, structured, x.dtype)
        return times(self._mat(k, x.dtype), x) if c is None else c.times(x)

    # -- evaluation -----------------------------------------------------------------------------
    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        out = np.broadcast_to(self.bias, (xs[0].shape[0], self.size)).copy()
        for A, x in zip(self.mats, xs):
            out += times(A, x)
        return out

    def vjp(self, xs, cot: np.ndarray, leak=0.0) -> list[np.ndarray]:
        return [rows_times(cot, A) for A in self.mats]

    def absimg(self, mags: list[np.ndarray]) -> np.ndarray:
        """``sum_k |A_k| m_k + |b|`` for magnitudes ``m_k >= |x_k|`` (``(..., size_k)``): every float
        evaluation of ``A x + b`` errs by at most ``gamma(row_terms)`` times this."""
        s = np.abs(self.bias)
        for k, m in enumerate(mags):
            s = s + times(self.abs_mat(k), m)
        return s

    def chain_absimg(self, mags: list[np.ndarray]) -> np.ndarray:
        """The magnitude the op chain's float32 rounding is relative to: for ops ``W_1 .. W_q``
        run in turn, the error of op ``i`` (``gamma(n_i)`` of its own ``|W_i| |in| + |b_i|``)
        reaches the output through ``|W_q| .. |W_i+1|``, so in total it is at most
        ``gamma(terms32)`` times ``|W_q| .. |W_1| m + (the same for the biases)`` -- which
        ``abs_mats``/``abs_bias`` hold (``|A_k|``, ``|b|`` for a single op).  Cancellation in a
        product of ops can make ``|A|`` much smaller than this, so ``absimg`` would not do."""
        if self.abs_mats is None and self.abs_bias is None:
            return self.absimg(mags)
        s = np.abs(self.bias) if self.abs_bias is None else self.abs_bias
        for k, m in enumerate(mags):
            M = self.abs_mat(k) if self.abs_mats is None else self.abs_mats[k]
            s = s + times(M, m)
        return s

    # -- MILP / LP rows -------------------------------------------------------------------------
    def support(self, keep: np.ndarray, lo_in: list, hi_in: list) -> list[np.ndarray]:
        out = []
        for A in self.mats:
            if sp.issparse(A):
                sub = sp.csr_array(A)[np.flatnonzero(keep)]
                m = np.zeros(A.shape[1], bool)
                m[sub.indices[sub.data != 0]] = True
            else:
                m = np.any(A[keep] != 0, axis=0)
            out.append(m)
        return out

    def encode(self, b, xs, lo, up, own: np.ndarray, slack: np.ndarray | None = None):
        """Columns ``y[own]`` with bounds ``[lo, up]`` and the rows ``y - sum_k A_k x_k`` in
        ``[b - slack, b + slack]`` (``slack``: the float error allowance of the evaluation, or
        None for the exact equality).  ``xs[k]`` are the input's ``(cols, const)``.
        Returns ``((cols, const), None)``."""
        cols = np.full(self.size, -1, np.int64)
        y = b.cols(lo[own], up[own])
        cols[own] = y
        local = np.full(self.size, -1, np.int64)
        local[own] = np.arange(own.size)
        terms = [(np.arange(own.size), y, 0.0, 1.0)]
        for A, (xc, xk) in zip(self.mats, xs):
            r, c, v = triplets(A[own] if not sp.issparse(A) else sp.csr_array(A)[own])
            terms.append((r, xc[c], xk[c], -v))
        bias = self.bias[own]
        s = 0.0 if slack is None else slack[own]
        rl, ru = (bias, bias) if slack is None else (np.nextafter(bias - s, -np.inf),
                                                     np.nextafter(bias + s, np.inf))
        b.rows(own.size, terms, rl, ru)
        const = np.where(cols >= 0, 0.0, np.nan)        # entries not encoded must not be read
        return (cols, const), None

    def onnx_nodes(self, ins: list[str], out: str, const) -> list:
        from onnx import helper
        nodes, terms = [], []
        for k, (A, x) in enumerate(zip(self.mats, ins)):
            dense = A.toarray() if sp.issparse(A) else np.asarray(A)
            w = const(f"{out}_W{k}", dense.T.astype(np.float32))
            nodes.append(helper.make_node("MatMul", [x, w], [f"{out}_t{k}"]))
            terms.append(f"{out}_t{k}")
        bias = const(f"{out}_b", self.bias.astype(np.float32).reshape(1, -1))
        nodes.append(helper.make_node("Sum", terms + [bias], [out]))
        return nodes
