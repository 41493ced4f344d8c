"""Shared pieces of the bound ladder: the per-graph cache, the result types, and the relaxations of
the two nonlinear node kinds (one rule per node kind, used by the symbolic and the LP levels).

Conventions: ``lower[i]``/``upper[i]`` are flat float64 arrays with one entry per value of node
``i``; a bound is *sound* when every value node ``i`` takes, for any input in the box, both in exact
arithmetic and in ``Graph.forward`` (float64), lies inside it.  See ``_fp`` for the error model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..graph import Graph, MaxPool, Relu
from ._fp import TINY, U, gamma, up


# ------------------------------------------------------------------------------------------------
# result types
# ------------------------------------------------------------------------------------------------
@dataclass
class LevelStats:
    """What one level achieved: per ReLU node ``i`` (keyed by its index), the counts of its neurons
    proved active (input lower >= 0), proved inactive (input upper <= 0) and still unstable; the
    wall time of the level; and level-specific counters (LP solves, timeouts …)."""
    level: str
    time_s: float = 0.0
    relu: dict = field(default_factory=dict)      # node index -> {"active", "inactive", "unstable"}
    extra: dict = field(default_factory=dict)
    margin_lower: np.ndarray | None = None        # margin bounds after this level (if C given)
    margin_upper: np.ndarray | None = None

    @property
    def unstable(self) -> int:
        return sum(v["unstable"] for v in self.relu.values())

    def to_dict(self) -> dict:
        out = {"level": self.level, "time_s": round(self.time_s, 6), "unstable": self.unstable,
               "relu": {str(k): dict(v) for k, v in self.relu.items()}, **self.extra}
        if self.margin_lower is not None:
            out["margin_lower"] = [float(v) for v in self.margin_lower]
            out["margin_upper"] = [float(v) for v in self.margin_upper]
        return out


@dataclass
class BoundsReport:
    """One ``LevelStats`` per level run (in order) plus the margin bounds if a ``C`` was given."""
    levels: list = field(default_factory=list)
    margin_lower: np.ndarray | None = None
    margin_upper: np.ndarray | None = None

    def to_dict(self) -> dict:
        out = {"levels": [s.to_dict() for s in self.levels]}
        if self.margin_lower is not None:
            out["margin_lower"] = [float(v) for v in self.margin_lower]
            out["margin_upper"] = [float(v) for v in self.margin_upper]
        return out

    def table(self) -> str:
        """A few lines for the CLI summary."""
        lines = []
        for s in self.levels:
            per = " ".join(f"n{k}:{v['active']}/{v['inactive']}/{v['unstable']}"
                           for k, v in s.relu.items())
            m = "" if s.margin_lower is None else f"  min margin >= {np.min(s.margin_lower):.6g}"
            lines.append(f"{s.level:<9} {s.time_s:8.3f}s  unstable {s.unstable:>6}{m}   "
                         f"(active/inactive/unstable) {per}")
        return "\n".join(lines)


@dataclass
class Bounds:
    """Sound per-node bounds: ``lower[i] <= value of node i <= upper[i]`` for every input in the box
    (exact arithmetic and float64 ``Graph.forward``).  ``margin_lower/upper`` (when ``C``, ``d`` were
    given) bound ``C @ y - d`` for the output ``y``, row by row."""
    lower: list
    upper: list
    level: str
    report: BoundsReport
    margin_lower: np.ndarray | None = None
    margin_upper: np.ndarray | None = None

    @property
    def stats(self) -> dict:
        return self.report.to_dict()

    def relu_masks(self, i: int, graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(active, inactive, unstable) masks of ReLU node ``i``, from its input's bounds."""
        j = graph.nodes[i].inputs[0]
        return relu_masks(self.lower[j], self.upper[j])


# ------------------------------------------------------------------------------------------------
# per-graph cache
# ------------------------------------------------------------------------------------------------
class Context:
    """The graph, the input box, derived matrices that every level reuses (|A|, A+, A-)
    and the per-Linear-node float slack (see ``set_float_slack``)."""

    def __init__(self, graph: Graph, box_lower, box_upper):
        self.graph = graph
        self.nodes = graph.nodes
        lo = np.asarray(box_lower, dtype=np.float64).ravel()
        hi = np.asarray(box_upper, dtype=np.float64).ravel()
        if lo.shape != (graph.n_inputs,) or hi.shape != (graph.n_inputs,):
            raise ValueError(f"box has {lo.size}/{hi.size} values, the model takes {graph.n_inputs}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError("the input box must be bounded (finite lower and upper)")
        if np.any(lo > hi):
            raise ValueError("the input box is empty (some lower > upper)")
        self.box_lower, self.box_upper = lo, hi
        self._cache: dict = {}
        # float slack of each Linear node, filled by ``set_float_slack`` in the interval pass
        self.absimg: list = [None] * len(self.nodes)
        self.fwd: list = [None] * len(self.nodes)
        users = graph.consumers()
        self.needed = needed_nodes(graph)
        # nodes whose bounds are used beyond ReLU phase decisions: all their neurons are tightened
        self.full_rows = {graph.output} | {i for i in self.needed
                                          if any(isinstance(self.nodes[c], MaxPool) for c in users[i])}

    def _get(self, key, make):
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = make()
        return v

    def mat(self, i: int, k: int):
        return self.nodes[i].mats[k]

    def abs(self, i: int, k: int):
        return self._get(("abs", i, k), lambda: abs(self.mat(i, k)))

    def pos(self, i: int, k: int):
        A = self.mat(i, k)
        return self._get(("pos", i, k), lambda: A.maximum(0) if sp.issparse(A) else np.maximum(A, 0))

    def neg(self, i: int, k: int):
        A = self.mat(i, k)
        return self._get(("neg", i, k), lambda: A.minimum(0) if sp.issparse(A) else np.minimum(A, 0))

    def n_terms(self, i: int) -> int:
        """Terms summed per output of Linear node ``i`` (all inputs, plus the bias)."""
        n = self.nodes[i]
        return sum(self.nodes[j].size for j in n.inputs) + len(n.inputs) + 1


def needed_nodes(graph: Graph) -> list[int]:
    """Nodes whose bounds the relaxations depend on: inputs of ReLU and MaxPool nodes, and the
    output (the Input node excluded: its bounds are the box, already exact)."""
    need = {graph.output}
    for n in graph.nodes:
        if isinstance(n, (Relu, MaxPool)):
            need.add(n.inputs[0])
    need.discard(0)
    return sorted(need)


def matmul_rows(L: np.ndarray, A) -> np.ndarray:
    """``L @ A`` for a dense ``L`` (rows = bound rows) and a dense or sparse ``A``; dense result."""
    if sp.issparse(A):
        return np.asarray((A.T @ L.T).T)
    return L @ A


def matvec(A, x: np.ndarray) -> np.ndarray:
    return np.asarray(A @ x)


def linear_absimg(ctx: Context, i: int, mags: list) -> np.ndarray:
    """``sum_k |A_k| m_k + |b|`` for Linear node ``i``, where ``m_k`` bounds ``|x_k|``: every float
    evaluation of a sum over these terms errs by at most ``gamma(#terms)`` times this."""
    n = ctx.nodes[i]
    s = np.abs(n.bias).astype(np.float64)
    for k, j in enumerate(n.inputs):
        s = s + matvec(ctx.abs(i, k), mags[j])
    return s


def set_float_slack(ctx: Context, i: int, mags: list) -> None:
    """Fill ``ctx.absimg[i]`` and ``ctx.fwd[i]``: the float64 forward pass computes Linear node
    ``i`` as ``A x + b + e`` with ``|e| <= fwd[i] = gamma(n) absimg + n TINY`` (``n`` terms per
    output, any summation order), so every level models the float network by widening the node's
    linear relation by ``fwd[i]``.  Computed once from the first (interval) magnitudes: any sound
    magnitudes give a valid slack."""
    if ctx.fwd[i] is None:
        a = linear_absimg(ctx, i, mags)
        nt = ctx.n_terms(i)
        ctx.absimg[i] = a
        ctx.fwd[i] = gamma(nt) * a + nt * TINY


# ------------------------------------------------------------------------------------------------
# relaxations of the nonlinear node kinds
# ------------------------------------------------------------------------------------------------
def relu_masks(l: np.ndarray, u: np.ndarray):
    active = l >= 0
    inactive = (u <= 0) & ~active
    return active, inactive, ~(active | inactive)


def relu_upper_line(l: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``l < 0 < u`` (arrays): float ``s, t`` with ``relu(z) <= s z + t`` for all real ``z`` in
    ``[l, u]``, in exact arithmetic on the floats.  The line lies above the convex ``relu`` on the
    interval iff it does at both ends: at ``l`` it needs ``t >= -s l`` (``t`` is ``-s l`` rounded
    up), at ``u`` it needs ``s (u - l) >= u``, i.e. ``s >= u/(u - l)``: the computed quotient has
    relative error below ``2U``, so scaling it by ``1 + 4U`` and one ulp up clears it."""
    q = u / (u - l)
    s = up(q * (1.0 + 4.0 * U))
    t = up(-(s * l))
    return s, t


def relu_lower_slope(l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """CROWN's adaptive lower line ``relu(z) >= alpha z`` with ``alpha = 1 if u >= -l else 0``
    (exact: both lines are valid everywhere)."""
    return (u >= -l).astype(np.float64)


@dataclass
class PoolRelax:
    """MaxPool ``y_i = max_{j in W_i} x_j`` relaxed: ``y_i >= x[sel[i]]`` (sel = argmax of the lower
    bounds), ``y_i <= upper_i`` (= max of the window's upper bounds), and ``y_i = x[sel[i]]``
    exactly where ``dominated`` (the selected input's lower bound reaches every other upper bound)."""
    sel: np.ndarray
    dominated: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    select: sp.csr_array           # (size_y, size_x), one 1 per row at sel[i]


def maxpool_relax(node: MaxPool, lx: np.ndarray, ux: np.ndarray) -> PoolRelax:
    W = node.windows
    lp = np.concatenate([lx, [-np.inf]])[W]          # padding (-1) reads -inf
    upd = np.concatenate([ux, [-np.inf]])[W]
    r = np.arange(W.shape[0])
    arg = np.argmax(lp, axis=1)
    sel = W[r, arg]
    lmax = lp[r, arg]
    other = upd.copy()
    other[r, arg] = -np.inf
    dominated = lmax >= other.max(axis=1)
    S = sp.csr_array((np.ones(len(sel)), (r, sel)), shape=(W.shape[0], lx.size))
    return PoolRelax(sel, dominated, lmax, upd.max(axis=1), S)


def nonlinear_bounds(node, lx: np.ndarray, ux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of a Relu/MaxPool node from its input's bounds (exact in float: only max is used)."""
    if isinstance(node, Relu):
        return np.maximum(lx, 0.0), np.maximum(ux, 0.0)
    W = node.windows
    lp = np.concatenate([lx, [-np.inf]])[W]
    upd = np.concatenate([ux, [-np.inf]])[W]
    return lp.max(axis=1), upd.max(axis=1)


def relu_stats(graph: Graph, lower: list, upper: list) -> dict:
    out = {}
    for i, n in enumerate(graph.nodes):
        if isinstance(n, Relu):
            a, z, u = relu_masks(lower[n.inputs[0]], upper[n.inputs[0]])
            out[i] = {"active": int(a.sum()), "inactive": int(z.sum()), "unstable": int(u.sum())}
    return out


def intersect(lo_old, hi_old, lo_new, hi_new):
    """Both pairs sound, so their intersection is; a crossing (lo > hi) can only come from an empty
    reachable set or a bug, and is kept as is so the caller can notice."""
    return np.maximum(lo_old, lo_new), np.minimum(hi_old, hi_new)
