"""The LP (triangle) relaxation of a graph prefix as arrays, and sound bounds from LP duals.

``build_relaxation`` writes, for the ancestors of a target node, one column per neuron (bounded by
the current sound node bounds) and rows that every reachable state satisfies *exactly*, for the
exact and for the float64 network:

- Linear ``z - sum_k A_k x_k`` in ``[b - fwd, b + fwd]`` (``fwd``: float64 forward deviation),
- Relu: ``a - z = 0`` (stable active), ``a - z >= 0`` and ``a - s z <= t`` (unstable; ``s, t``
  from ``core.relu_upper_line``); stable inactive is ``a`` in ``[0, 0]`` by its column bounds,
- MaxPool: ``y - x_j >= 0`` for every window entry, ``y - x_sel <= 0`` where dominated, else
  ``y - sum_W x_j <= max_W l - sum_W l`` (rounded up): ``y = x_k`` for some ``k`` and the other
  terms ``x_j - l_j`` are nonnegative.

``dual_bound`` turns any row-dual vector into a lower bound on the LP minimum (weak duality), in
float64 with outward rounding; it never trusts the solver's objective value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..graph import Linear, MaxPool, Relu
from ._fp import TINY, absmax, down, gamma, up
from .core import Context, maxpool_relax, relu_masks, relu_upper_line


@dataclass
class LPArrays:
    """``min c x`` s.t. ``row_lo <= A x <= row_hi``, ``col_lo <= x <= col_hi``.  ``cols[n]`` maps
    the neurons of node ``n`` to columns (``-1``: not in the model, see ``build_relaxation``);
    ``binaries`` (MILP only) lists the integer columns."""
    A: sp.csr_array
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    cols: dict
    binaries: np.ndarray

    @property
    def shape(self):
        return self.A.shape


class _Rows:
    """Row blocks in COO form, concatenated once at the end."""

    def __init__(self):
        self.r, self.c, self.v, self.lo, self.hi = [], [], [], [], []
        self.m = 0

    def block(self, rows, cols, vals, lo, hi):
        """Rows ``m + rows`` (``rows`` local, 0-based) with bounds ``lo``/``hi`` (one per local row)."""
        self.r.append(np.asarray(rows, np.int64) + self.m)
        self.c.append(np.asarray(cols, np.int64))
        self.v.append(np.asarray(vals, np.float64))
        self.lo.append(np.asarray(lo, np.float64))
        self.hi.append(np.asarray(hi, np.float64))
        self.m += len(lo)


def _coo(A):
    if sp.issparse(A):
        C = sp.coo_array(A)
        return C.row, C.col, C.data
    r, c = np.nonzero(A)
    return r, c, A[r, c]


def ancestors(graph, t: int) -> list[int]:
    """``t`` and every node it depends on, sorted (topological order)."""
    seen = {t}
    stack = [t]
    while stack:
        for j in graph.nodes[stack.pop()].inputs:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return sorted(seen)


def _nonzero_cols(A, rows: np.ndarray) -> np.ndarray:
    """Mask of the columns that rows ``rows`` (bool mask) of ``A`` touch."""
    if sp.issparse(A):
        sub = sp.csr_array(A)[np.flatnonzero(rows)]
        m = np.zeros(A.shape[1], bool)
        m[sub.indices[sub.data != 0]] = True
        return m
    return np.any(A[rows] != 0, axis=0)


def kept_neurons(ctx: Context, lower: list, upper: list, t: int, include_target: bool) -> dict:
    """Which neurons the relaxation for target ``t`` needs: everything ``t`` (or, without
    ``include_target``, ``t``'s inputs) depends on through nonzero coefficients, minus outputs of
    inactive ReLUs (exactly 0, so dropping their coefficients is exact).  Dropping neurons nothing
    kept depends on loses no constraint on the kept ones."""
    nodes = ctx.nodes
    keep = {}
    if include_target:
        keep[t] = np.ones(nodes[t].size, bool)
    else:
        for j in nodes[t].inputs:
            keep[j] = np.ones(nodes[j].size, bool)
    for i in range(t, -1, -1):
        K = keep.get(i)
        if K is None:
            continue
        nd = nodes[i]
        if isinstance(nd, Relu):
            j = nd.inputs[0]
            K &= ~relu_masks(lower[j], upper[j])[1]
            keep[j] = keep.get(j, np.zeros(nodes[j].size, bool)) | K
        elif isinstance(nd, Linear):
            if K.any():
                for k, j in enumerate(nd.inputs):
                    keep[j] = keep.get(j, np.zeros(nodes[j].size, bool)) | _nonzero_cols(nd.mats[k], K)
        elif isinstance(nd, MaxPool):
            j = nd.inputs[0]
            W = nd.windows[K]
            m = keep.get(j, np.zeros(nodes[j].size, bool))
            m[W[W >= 0]] = True
            keep[j] = m
    return {i: K for i, K in keep.items() if K.any()}


def build_relaxation(ctx: Context, lower: list, upper: list, t: int, milp: bool = False,
                     include_target: bool = True) -> LPArrays:
    """The relaxation of node ``t``'s ancestors (and ``t`` itself with ``include_target``), see the
    module docstring, restricted to ``kept_neurons``.  With ``milp``, each unstable ReLU also gets a
    binary ``d`` with ``a <= u d`` and ``a <= z - l (1 - d)``."""
    nodes = ctx.nodes
    keep = kept_neurons(ctx, lower, upper, t, include_target)
    order = sorted(keep)
    cols, n = {}, 0
    for i in order:
        c = np.full(nodes[i].size, -1, np.int64)
        idx = np.flatnonzero(keep[i])
        c[idx] = n + np.arange(idx.size)
        cols[i] = c
        n += idx.size
    col_lo = np.concatenate([lower[i][keep[i]] for i in order])
    col_hi = np.concatenate([upper[i][keep[i]] for i in order])
    extra_lo, extra_hi, binaries = [], [], []
    R = _Rows()
    for i in order:
        nd = nodes[i]
        ci = cols[i]
        own = np.flatnonzero(keep[i])
        if isinstance(nd, Linear):
            rows, cc, vals = [np.arange(own.size)], [ci[own]], [np.ones(own.size)]
            local = np.full(nd.size, -1, np.int64)
            local[own] = np.arange(own.size)
            for k, j in enumerate(nd.inputs):
                A = nd.mats[k]
                r, c, v = _coo(A[own] if not sp.issparse(A) else sp.csr_array(A)[own])
                cj = cols.get(j)
                col = cj[c] if cj is not None else np.full(c.size, -1)
                ok = col >= 0                  # dropped columns are inactive ReLUs: exactly 0
                rows.append(r[ok]); cc.append(col[ok]); vals.append(-v[ok])
            fwd = ctx.fwd[i][own]
            if len(set(nd.inputs)) < len(nd.inputs):
                # the same input twice: the CSR sums the coefficients, rounding by <= U |A1 + A2|
                fwd = fwd + gamma(2) * ctx.absimg[i][own]
            b = nd.bias[own]
            R.block(np.concatenate(rows), np.concatenate(cc), np.concatenate(vals),
                    down(b - fwd), up(b + fwd))
        elif isinstance(nd, Relu):
            j = nd.inputs[0]
            cj = cols[j]
            act, _, uns = relu_masks(lower[j], upper[j])
            ia, iu = np.flatnonzero(act & keep[i]), np.flatnonzero(uns & keep[i])
            na, nu = ia.size, iu.size
            if na:                                        # a - z = 0
                R.block(np.repeat(np.arange(na), 2), np.column_stack([ci[ia], cj[ia]]).ravel(),
                        np.tile([1.0, -1.0], na), np.zeros(na), np.zeros(na))
            if nu:
                l, u = lower[j][iu], upper[j][iu]
                s, tt = relu_upper_line(l, u)
                rr = np.repeat(np.arange(nu), 2)
                cc = np.column_stack([ci[iu], cj[iu]]).ravel()
                R.block(rr, cc, np.tile([1.0, -1.0], nu), np.zeros(nu), np.full(nu, np.inf))
                R.block(rr, cc, np.column_stack([np.ones(nu), -s]).ravel(), np.full(nu, -np.inf), tt)
                if milp:
                    dcol = n + sum(map(len, binaries)) + np.arange(nu)
                    binaries.append(dcol)
                    extra_lo.append(np.zeros(nu)); extra_hi.append(np.ones(nu))
                    # a - u d <= 0
                    R.block(rr, np.column_stack([ci[iu], dcol]).ravel(),
                            np.column_stack([np.ones(nu), -u]).ravel(), np.full(nu, -np.inf),
                            np.zeros(nu))
                    # a - z - l d <= -l
                    R.block(np.repeat(np.arange(nu), 3),
                            np.column_stack([ci[iu], cj[iu], dcol]).ravel(),
                            np.column_stack([np.ones(nu), -np.ones(nu), -l]).ravel(),
                            np.full(nu, -np.inf), -l)
        elif isinstance(nd, MaxPool):
            j = nd.inputs[0]
            cj = cols[j]
            pr = maxpool_relax(nd, lower[j], upper[j])
            W = nd.windows
            # y - x_w >= 0 for every entry (a dropped x_w is an inactive ReLU: the row is y >= 0)
            wr, wc = np.nonzero((W >= 0) & keep[i][:, None])
            ne = wr.size
            xc = cj[W[wr, wc]]
            R.block(np.concatenate([np.arange(ne), np.flatnonzero(xc >= 0)]),
                    np.concatenate([ci[wr], xc[xc >= 0]]),
                    np.concatenate([np.ones(ne), -np.ones(int((xc >= 0).sum()))]),
                    np.zeros(ne), np.full(ne, np.inf))
            dom = np.flatnonzero(pr.dominated & keep[i])
            if dom.size:                                   # y - x_sel <= 0
                xs = cj[pr.sel[dom]]
                R.block(np.concatenate([np.arange(dom.size), np.flatnonzero(xs >= 0)]),
                        np.concatenate([ci[dom], xs[xs >= 0]]),
                        np.concatenate([np.ones(dom.size), -np.ones(int((xs >= 0).sum()))]),
                        np.full(dom.size, -np.inf), np.zeros(dom.size))
            nd_ = np.flatnonzero(~pr.dominated & keep[i])
            if nd_.size:                                   # y - sum_W x <= max_W l - sum_W l
                sub = W[nd_]
                valid = sub >= 0
                lw = np.where(valid, lower[j][np.where(valid, sub, 0)], 0.0)
                rhs = pr.lower[nd_] - lw.sum(axis=1)
                err = gamma(W.shape[1]) * (np.abs(pr.lower[nd_]) + np.abs(lw).sum(axis=1))
                vr, vc = np.nonzero(valid)
                xc = cj[sub[vr, vc]]
                ok = xc >= 0
                R.block(np.concatenate([np.arange(nd_.size), vr[ok]]),
                        np.concatenate([ci[nd_], xc[ok]]),
                        np.concatenate([np.ones(nd_.size), -np.ones(int(ok.sum()))]),
                        np.full(nd_.size, -np.inf), up(rhs + err))
    n_total = n + sum(map(len, binaries))
    if R.m == 0:
        R.block(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    A = sp.csr_array((np.concatenate(R.v), (np.concatenate(R.r), np.concatenate(R.c))),
                     shape=(R.m, n_total))
    A.sum_duplicates()
    return LPArrays(A, np.concatenate(R.lo), np.concatenate(R.hi),
                    np.concatenate([col_lo] + extra_lo), np.concatenate([col_hi] + extra_hi),
                    cols, np.concatenate(binaries) if binaries else np.zeros(0, np.int64))


class DualBounder:
    """Sound lower bounds on ``min c x`` over an ``LPArrays`` polytope from any row duals ``y``.

    Weak duality, for every feasible ``x`` and every ``y``: ``c x = y (A x) + r x`` with
    ``r = c - A^T y``; ``y_i (A x)_i >= y_i lo_i`` if ``y_i >= 0`` else ``y_i hi_i``, and
    ``r_j x_j >= min(r_j l_j, r_j u_j)``.  Multipliers pointing at an infinite row bound are zeroed
    first (still a valid ``y``).  ``r`` is computed in float: its error, at most
    ``gamma(nnz_col + 1) (|c| + |A|^T |y|)`` per column, is charged against ``|x_j| <= max(|l_j|,
    |u_j|)``; the two sums get a ``gamma(m + n)`` relative error term; the result is rounded down.
    Finite column bounds (always the case here) make the bound finite for every ``y``."""

    def __init__(self, lp: LPArrays):
        self.lp = lp
        self.AT = sp.csr_array(lp.A.T)
        self.absAT = abs(self.AT)
        self.g_col = gamma(int(np.diff(self.AT.indptr).max(initial=0)) + 1)
        self.g_sum = gamma(lp.A.shape[0] + lp.A.shape[1])
        self.colmag = absmax(lp.col_lo, lp.col_hi)

    def bound(self, c: np.ndarray, y: np.ndarray) -> float:
        lp = self.lp
        y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        y = np.where((y > 0) & np.isneginf(lp.row_lo), 0.0, y)
        y = np.where((y < 0) & np.isposinf(lp.row_hi), 0.0, y)
        r = c - self.AT @ y
        row_term = np.where(y > 0, y * np.where(y > 0, lp.row_lo, 0.0),
                            np.where(y < 0, y * np.where(y < 0, lp.row_hi, 0.0), 0.0))
        col_term = np.where(r > 0, r * lp.col_lo, np.where(r < 0, r * lp.col_hi, 0.0))
        if not (np.all(np.isfinite(row_term)) and np.all(np.isfinite(col_term))):
            return -np.inf
        total = row_term.sum() + col_term.sum()
        err = (self.g_col * (np.abs(c) + self.absAT @ np.abs(y))) @ self.colmag \
            + self.g_sum * (np.abs(row_term).sum() + np.abs(col_term).sum()) \
            + (lp.A.shape[0] + lp.A.shape[1]) * TINY
        return float(down(total - err))
