"""Symbolic linear bounds by back-substitution (CROWN / DeepPoly) on the layer graph.

To lower-bound ``L v_t + c`` (rows of ``L`` are independent objectives over node ``t``), the
coefficients are pushed backwards through the DAG, in reverse topological order, until only the
input remains, where the box gives the bound in closed form.  Each node kind has one rule:

- Linear ``z = sum_k A_k x_k + b``: coefficients ``L A_k`` are *added* to whatever input ``x_k``
  already holds (multi-input nodes and nodes with several consumers), ``L b`` goes to the constant.
- Relu ``a = relu(z)``: stable neurons are exact (``a = z`` or ``a = 0``); for unstable ones a
  positive coefficient uses CROWN's lower line ``a >= alpha z`` and a negative one the triangle's
  upper line ``a <= s z + t`` — every row picks per neuron, so upper bounds (rows of ``-L``) get the
  mirrored choice automatically.
- MaxPool ``y = max_W x``: a positive coefficient uses ``y >= x_sel`` (the input with the largest
  lower bound), a negative one ``y <= upper(y)``; windows where ``x_sel`` dominates are exact.

Floating point (see ``_fp``): the invariant carried is, for every reachable state (exact or float64
network), ``objective >= sum_n L_n v_n + const - slack`` *in exact arithmetic on the float arrays
L_n, const, slack*.  Each step computes new float coefficients; the difference to the exact product
times ``|v| <= m`` (magnitudes from sound bounds) is a nonnegative scalar added to ``slack``; the
float64 network's own deviation at a Linear node is at most ``ctx.fwd`` (``core.set_float_slack``),
also charged as ``|L| fwd``.  The final evaluation is rounded down with an explicit error bound.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..graph import Linear, MaxPool, Relu
from ._fp import TINY, absmax, down, gamma
from .core import (Context, intersect, matmul_rows, maxpool_relax, relu_lower_slope, relu_masks,
                   relu_upper_line)
from .interval import node_interval

# Largest number of float64 entries in one block of coefficient rows (rows are processed in chunks).
CHUNK_ENTRIES = 1 << 23


class _State:
    """The running back-substitution: coefficients per node, constant, slack, and the magnitude
    sum of everything added to the constant (for its accumulated rounding error)."""

    def __init__(self, ctx: Context, lower: list, upper: list, k: int):
        self.ctx, self.lower, self.upper = ctx, lower, upper
        self.lam: dict[int, np.ndarray] = {}
        self.const = np.zeros(k)
        self.slack = np.zeros(k)
        self.cmag = np.zeros(k)
        self.steps = 0
        self._mags: dict[int, np.ndarray] = {}

    def mag(self, j: int) -> np.ndarray:
        m = self._mags.get(j)
        if m is None:
            m = self._mags[j] = absmax(self.lower[j], self.upper[j])
        return m

    def add_const(self, inc: np.ndarray) -> None:
        self.const += inc
        self.cmag += np.abs(inc)
        self.steps += 1

    def add_coef(self, j: int, P: np.ndarray) -> None:
        old = self.lam.get(j)
        if old is None:
            self.lam[j] = P
        else:
            new = old + P      # |fl(a+b) - (a+b)| <= U |a+b|: charged against |v_j| <= m_j
            self.slack += gamma(1) * (np.abs(new) @ self.mag(j))
            self.lam[j] = new


def _step_linear(st: _State, i: int, L: np.ndarray) -> None:
    ctx, n = st.ctx, st.ctx.nodes[i]
    for k, j in enumerate(n.inputs):
        st.add_coef(j, matmul_rows(L, n.mats[k]))
    st.add_const(L @ n.bias)
    # rounding of L A_k (sums of size_i terms, times |x_k| <= m_k) and of L b: gamma |L| absimg;
    # the float64 network's deviation |e| <= fwd: |L| fwd
    st.slack += np.abs(L) @ (ctx.fwd[i] + gamma(n.size) * ctx.absimg[i] + n.size * TINY)


def _step_relu(st: _State, i: int, L: np.ndarray) -> None:
    j = st.ctx.nodes[i].inputs[0]
    l, u = st.lower[j], st.upper[j]
    active, inactive, unstable = relu_masks(l, u)
    # per-column slopes: positive coefficients use alpha z, negative ones s z + t; stable columns
    # are exact (a = z: alpha = s = 1, t = 0; a = 0: alpha = s = 0, t = 0)
    alpha = active.astype(np.float64)
    s = alpha.copy()
    t = np.zeros_like(alpha)
    if unstable.any():
        lu, uu = l[unstable], u[unstable]
        s[unstable], t[unstable] = relu_upper_line(lu, uu)
        alpha[unstable] = relu_lower_slope(lu, uu)
    P = np.where(L >= 0, L * alpha, L * s)     # only unstable columns round (alpha in {0, 1})
    if unstable.any():
        neg = np.minimum(L[:, unstable], 0.0)
        st.add_const(neg @ t[unstable])
        aneg = np.abs(neg)
        st.slack += gamma(1) * (aneg @ (s[unstable] * st.mag(j)[unstable])) \
            + gamma(int(unstable.sum())) * (aneg @ np.abs(t[unstable]))
    st.add_coef(j, P)


def _step_maxpool(st: _State, i: int, L: np.ndarray) -> None:
    n = st.ctx.nodes[i]
    j = n.inputs[0]
    r = maxpool_relax(n, st.lower[j], st.upper[j])
    dom = r.dominated[None, :]
    Lsel = np.where(dom, L, np.maximum(L, 0.0))
    Lup = np.where(dom, 0.0, np.minimum(L, 0.0))
    st.add_coef(j, matmul_rows(Lsel, r.select))   # several windows may select the same input
    st.slack += gamma(n.size) * (np.abs(Lsel) @ st.mag(j)[r.sel])
    ub = st.upper[i]
    st.add_const(Lup @ ub)
    st.slack += gamma(n.size) * (np.abs(Lup) @ np.abs(ub))


def backsub_lower(ctx: Context, lower: list, upper: list, start: int, st: _State) -> np.ndarray:
    """Finish a back-substitution whose coefficients sit on nodes ``<= start``; returns sound lower
    bounds of the objectives (one per row)."""
    for i in range(start, 0, -1):
        L = st.lam.pop(i, None)
        if L is None:
            continue
        n = ctx.nodes[i]
        if isinstance(n, Linear):
            _step_linear(st, i, L)
        elif isinstance(n, Relu):
            _step_relu(st, i, L)
        elif isinstance(n, MaxPool):
            _step_maxpool(st, i, L)
        else:  # pragma: no cover - the graph checks node kinds
            raise TypeError(type(n).__name__)
    L = st.lam.pop(0, None)
    k = st.const.size
    if L is None:                                   # objective does not depend on the input
        L = np.zeros((k, ctx.graph.n_inputs))
    conc = np.maximum(L, 0.0) @ ctx.box_lower + np.minimum(L, 0.0) @ ctx.box_upper
    total = conc + st.const - st.slack
    n0 = ctx.graph.n_inputs
    err = gamma(n0 + st.steps + 4) * (np.abs(L) @ st.mag(0) + st.cmag + st.slack
                                      + np.abs(conc) + np.abs(st.const)) + (n0 + st.steps) * TINY
    return down(total - err)


def objective_lower(ctx: Context, lower: list, upper: list, node: int, L: np.ndarray,
                    c: np.ndarray | None = None) -> np.ndarray:
    """Sound lower bounds of ``L @ v_node + c`` (row by row) over every input in the box, given
    sound ``lower``/``upper`` for all nodes before ``node`` (and the float slack in ``ctx``)."""
    L = np.asarray(L, dtype=np.float64)
    st = _State(ctx, lower, upper, L.shape[0])
    if c is not None:
        st.add_const(np.asarray(c, dtype=np.float64))
    st.lam[node] = L
    return backsub_lower(ctx, lower, upper, node, st)


def _rows_bounds(ctx: Context, lower: list, upper: list, t: int, rows: np.ndarray):
    """Lower and upper bounds of ``v_t[rows]``: one back-substitution for the rows of ``[I; -I]``,
    whose first step through a Linear ``t`` is a row selection of its matrices (no product)."""
    n = ctx.nodes[t]
    k = rows.size
    if not isinstance(n, Linear):
        E = np.zeros((k, n.size))
        E[np.arange(k), rows] = 1.0
        res = objective_lower(ctx, lower, upper, t, np.vstack([E, -E]))
        return res[:k], -res[k:]
    st = _State(ctx, lower, upper, 2 * k)
    for kk, j in enumerate(n.inputs):
        A = n.mats[kk]
        M = A[rows].toarray() if sp.issparse(A) else A[rows]
        st.add_coef(j, np.vstack([M, -M]))          # exact: selection and negation
    b = n.bias[rows]
    st.add_const(np.concatenate([b, -b]))
    d = ctx.fwd[t][rows]                            # the selection itself is exact
    st.slack += np.concatenate([d, d])
    res = backsub_lower(ctx, lower, upper, t - 1, st)
    return res[:k], -res[k:]


def node_symbolic(ctx: Context, lower: list, upper: list, t: int, rows: np.ndarray):
    """Symbolic bounds of ``v_t[rows]``, in row chunks that keep memory bounded."""
    width = max(ctx.nodes[j].size for j in range(t + 1))
    step = max(1, CHUNK_ENTRIES // (2 * width))
    lo = np.empty(rows.size)
    hi = np.empty(rows.size)
    for s in range(0, rows.size, step):
        lo[s:s + step], hi[s:s + step] = _rows_bounds(ctx, lower, upper, t, rows[s:s + step])
    return lo, hi


def symbolic_bounds(ctx: Context, lower: list, upper: list):
    """Tighten sound bounds ``lower``/``upper`` (e.g. from ``interval_bounds``) node by node, in
    topological order: each node first gets the interval image of its inputs' (already tightened)
    bounds, then, if it is needed (input of a Relu/MaxPool, or the output), back-substituted bounds
    for its undecided neurons (all neurons for MaxPool inputs and the output).  Every result is
    intersected with the previous bounds, so it is never looser.  Returns new lists."""
    N = len(ctx.nodes)
    lo_out, hi_out = list(lower), list(upper)
    mags = [absmax(lo_out[i], hi_out[i]) for i in range(N)]
    needed = set(ctx.needed)
    for i in range(1, N):
        lo, hi = node_interval(ctx, i, lo_out, hi_out, mags)
        lo, hi = intersect(lo_out[i], hi_out[i], lo, hi)
        if i in needed:
            if i in ctx.full_rows:
                rows = np.arange(ctx.nodes[i].size)
            else:
                rows = np.flatnonzero((lo < 0) & (hi > 0))
            if rows.size:
                slo, shi = node_symbolic(ctx, lo_out, hi_out, i, rows)
                lo[rows], hi[rows] = intersect(lo[rows], hi[rows], slo, shi)
        lo_out[i], hi_out[i] = lo, hi
        mags[i] = absmax(lo, hi)
    return lo_out, hi_out


def margin_bounds(ctx: Context, lower: list, upper: list, C: np.ndarray, d: np.ndarray):
    """Sound bounds on ``C @ y - d`` for the output ``y``, back-substituted from ``C`` directly
    (tighter than bounding ``y`` first).  Returns ``(lower, upper)``, one entry per row of ``C``."""
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64).ravel()
    k = C.shape[0]
    res = objective_lower(ctx, lower, upper, ctx.graph.output, np.vstack([C, -C]),
                          np.concatenate([-d, d]))
    return res[:k], -res[k:]
