"""CROWN bounds for a *batch* of input boxes at once — the workhorse of input splitting.

For graphs of Input / Linear / Relu nodes (the low-dimensional control nets input splitting is for,
like ACAS Xu), every box of the batch gets its own ReLU relaxations and back-substitution, done with
batched matrix products: ``(B, k, n)`` coefficient tensors instead of a Python loop over boxes.

Relaxation (Zhang et al. 2018, CROWN): an unstable ReLU with input in ``[l, u]`` lies below the
chord ``s x + b`` (``s = u / (u - l)``, ``b = -s l``) and above ``a x`` with ``a = 1`` if ``u > -l``
else ``0``.

Soundness in float64 (same error model as ``verifier.bounds._fp``): every back-substitution step
charges the rounding of the products it forms (``gamma(n) * |Λ| |A| |x|``), the float64 forward
pass's own error on each Linear node, and the rounding of the final dot product with the box; the
total is subtracted from the lower bound, which is then rounded down.  The chord's offset is raised
by a few ulps so that it stays above the ReLU at both ends despite the rounded slope.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .bounds._fp import TINY, U, gamma
from .bounds.core import matmul_rows
from .graph import Graph, Input, Linear, Relu


def supports(graph: Graph) -> bool:
    return all(isinstance(n, (Input, Linear, Relu)) for n in graph.nodes)


def _dot(L: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum_s L[b, k, s] v[b, s]`` as one batched matrix product."""
    return np.matmul(L, v[:, :, None])[:, :, 0]


def _rows_times(L: np.ndarray, A) -> np.ndarray:
    """``L @ A`` for ``L`` of shape (B, k, s) and a dense or sparse ``A`` (s, p)."""
    B, k, s = L.shape
    return matmul_rows(L.reshape(B * k, s), A).reshape(B, k, -1)


class _Net:
    """Per-batch state: interval magnitudes, forward-error slacks, ReLU relaxations."""

    def __init__(self, graph: Graph, lo: np.ndarray, hi: np.ndarray):
        self.g = graph
        self.lo, self.hi = lo, hi
        n = len(graph.nodes)
        self.lower: list = [None] * n
        self.upper: list = [None] * n
        self.mag: list = [None] * n          # bound on |value| per node (B, size)
        self.absimg: list = [None] * n       # sum |A||x| + |b| per Linear node
        self.fwd: list = [None] * n          # float64 forward-pass error bound per Linear node
        self.relax: dict = {}                # relu node -> (lower slope, upper slope, upper offset)
        self._abs = {}

    def abs_mat(self, i, k):
        key = (i, k)
        if key not in self._abs:
            A = self.g.nodes[i].mats[k]
            self._abs[key] = abs(A) if sp.issparse(A) else np.abs(A)
        return self._abs[key]

    def n_terms(self, i) -> int:
        node = self.g.nodes[i]
        return sum(self.g.nodes[j].size for j in node.inputs) + len(node.inputs) + 1

    # -- interval pass (magnitudes for the error terms, and a fallback bound) -------------------
    def interval(self, i):
        node = self.g.nodes[i]
        if isinstance(node, Input):
            self.lower[i], self.upper[i] = self.lo, self.hi
        elif isinstance(node, Relu):
            j = node.inputs[0]
            self.lower[i] = np.maximum(self.lower[j], 0.0)
            self.upper[i] = np.maximum(self.upper[j], 0.0)
        else:
            lo = np.broadcast_to(node.bias, (self.lo.shape[0], node.size)).copy()
            hi = lo.copy()
            absimg = np.abs(lo)
            for k, (A, j) in enumerate(zip(node.mats, node.inputs)):
                c = 0.5 * (self.lower[j] + self.upper[j])
                r = 0.5 * (self.upper[j] - self.lower[j])
                absA = self.abs_mat(i, k)
                mid, rad = matmul_rows(c, A.T), matmul_rows(r, absA.T)
                lo += mid - rad
                hi += mid + rad
                absimg += matmul_rows(self.mag[j], absA.T)
            nt = self.n_terms(i)
            self.absimg[i] = absimg
            self.fwd[i] = gamma(nt) * absimg + nt * TINY
            slack = gamma(2 * nt + 4) * absimg * 4 + self.fwd[i] + nt * TINY
            self.lower[i], self.upper[i] = np.nextafter(lo - slack, -np.inf), \
                np.nextafter(hi + slack, np.inf)
        self.mag[i] = np.maximum(np.abs(self.lower[i]), np.abs(self.upper[i]))

    def set_relu(self, i):
        """Relaxation of Relu node ``i`` from its input's (final) bounds."""
        j = self.g.nodes[i].inputs[0]
        l, u = self.lower[j], self.upper[j]
        active, inactive = l >= 0, u <= 0
        unstable = ~(active | inactive)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(unstable, u / (u - l), active.astype(np.float64))
        sl = np.where(unstable, -s * l, 0.0)
        b = np.where(unstable, sl + 4 * U * (np.abs(sl) + np.abs(u)) + TINY, 0.0)
        a = np.where(unstable, (u > -l).astype(np.float64), active.astype(np.float64))
        self.relax[i] = (a, s, b)
        self.lower[i] = np.maximum(l, 0.0)
        self.upper[i] = np.maximum(u, 0.0)
        self.mag[i] = self.upper[i]

    # -- back-substitution -------------------------------------------------------------------
    def lower_bound(self, t: int, Lam: np.ndarray, const: np.ndarray):
        """Sound lower bound of ``Lam @ x_t + const`` over the boxes, and the input coefficients
        of the linear lower bound (for choosing where to split)."""
        B, k = const.shape
        coef = {t: (Lam, np.abs(Lam))}
        err = np.zeros((B, k))
        const = const.copy()
        for j in range(t, -1, -1):
            if j not in coef:
                continue
            L, absL = coef.pop(j)
            node = self.g.nodes[j]
            if isinstance(node, Input):
                c, r = 0.5 * (self.lo + self.hi), 0.5 * (self.hi - self.lo)
                val = const + _dot(L, c) - _dot(absL, r)
                # c and r are rounded: |c| + r >= max|x| - ulps, covered by the factor 4
                err += gamma(node.size + 3) * (np.abs(const) + 4 * _dot(absL, self.mag[0]))
                out = np.nextafter(val - 1.01 * err - TINY, -np.inf)
                return out, L
            if isinstance(node, Linear):
                const += L @ node.bias
                err += _dot(absL, gamma(self.n_terms(j) + 1) * self.absimg[j] + self.fwd[j])
                for A, p in zip(node.mats, node.inputs):
                    new = _rows_times(L, A)
                    self._add(coef, p, new, np.abs(new), err)
            else:  # Relu, relaxed for a lower bound of L @ relu(x): slope a where L > 0, chord else
                a, s, b = self.relax[j]
                neg = L < 0
                sel = np.where(neg, s[:, None, :], a[:, None, :])
                Lneg = np.where(neg, L, 0.0)
                const += _dot(Lneg, b)
                p = node.inputs[0]
                absnew = absL * sel
                err += 2 * U * _dot(absnew, self.mag[p]) - gamma(node.size) * _dot(Lneg, b)
                self._add(coef, p, L * sel, absnew, err)
        raise AssertionError("back-substitution did not reach the input")

    def _add(self, coef, p, C, absC, err):
        if p in coef:       # two paths into one node (a DAG): the sum is rounded once more
            total = coef[p][0] + C
            coef[p] = (total, np.abs(total))
            err += U * _dot(coef[p][1], self.mag[p])
        else:
            coef[p] = (C, absC)


def batch_bounds(graph: Graph, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray):
    """For B boxes (``lo``, ``hi`` of shape (B, n_in)): sound lower bounds ``(B, k)`` of the rows
    of ``C @ y - d``, and the input coefficients ``(B, k, n_in)`` of each row's linear lower bound."""
    net = _Net(graph, lo, hi)
    needed = {graph.nodes[i].inputs[0] for i, n in enumerate(graph.nodes) if isinstance(n, Relu)}
    B = lo.shape[0]
    for i, node in enumerate(graph.nodes):
        net.interval(i) if not isinstance(node, Relu) else net.set_relu(i)
        if i in needed and i != 0:
            # only neurons unstable in some box need the (costly) back-substitution: a ReLU
            # whose interval bounds already fix its phase is relaxed exactly either way
            idx = np.nonzero(((net.lower[i] < 0) & (net.upper[i] > 0)).any(axis=0))[0]
            if idx.size:
                m = idx.size
                Lam = np.zeros((B, 2 * m, node.size))
                Lam[:, np.arange(m), idx] = 1.0
                Lam[:, m + np.arange(m), idx] = -1.0
                lower, _ = net.lower_bound(i, Lam, np.zeros((B, 2 * m)))
                net.lower[i][:, idx] = np.maximum(net.lower[i][:, idx], lower[:, :m])
                net.upper[i][:, idx] = np.minimum(net.upper[i][:, idx], -lower[:, m:])
                net.mag[i] = np.maximum(np.abs(net.lower[i]), np.abs(net.upper[i]))
    Lam = np.broadcast_to(C, (B,) + C.shape).astype(np.float64)
    lower, coef = net.lower_bound(graph.output, Lam, np.broadcast_to(-d, (B, len(d))).copy())
    # ``-d`` is exact; the interval bound of the output is a second, independent sound bound
    out = graph.output
    ivl = net.lower[out] @ np.maximum(C, 0).T + net.upper[out] @ np.minimum(C, 0).T - d
    ivl_err = gamma(C.shape[1] + 1) * (net.mag[out] @ np.abs(C).T + np.abs(d))
    ivl = np.nextafter(ivl - ivl_err - TINY, -np.inf)
    return np.maximum(lower, ivl), coef
