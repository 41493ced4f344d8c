"""Per-neuron LP tightening (MIPVerify's ``lp`` level) and the optional ``milp`` level.

For each node whose bounds matter (input of a Relu/MaxPool, and the output), in topological order:
first its symbolic bounds are recomputed from the (already tightened) earlier layers — cheap, and
often enough to decide neurons — then every still-undecided neuron is minimised and maximised over
the relaxation of everything before it (``lp_model.build_relaxation``).  One HiGHS object per node:
only the objective changes between solves, so dual simplex starts from the previous basis.

- ``max z`` first; if it is ``<= 0`` the neuron is inactive and ``min z`` is skipped.  ``max z`` is
  solved as ``min -z`` with HiGHS's ``objective_bound`` cutoff (presolve off): dual simplex stops as
  soon as its dual objective proves ``-z > 0``; ``min z`` likewise stops once ``z > 0`` is proved.
- Every LP result is turned into a bound by ``DualBounder`` from the row duals (weak duality, float
  error charged, rounded outward); a failed or timed-out solve still yields a valid (weaker) bound,
  and the result is intersected with the previous one, so nothing ever gets looser.
- A time budget per node; neurons not reached keep their previous bounds.

The ``milp`` level solves the same problems with binaries for the unstable ReLUs before the node and a
time cap per neuron.  HiGHS's MIP dual bound is not rebuilt from duals: the bound taken is
``mip_dual_bound`` minus a margin that clears the solver's tolerances (see ``_milp_margin``).
"""
from __future__ import annotations

import time

import numpy as np

from ..graph import Linear, MaxPool, Relu
from ._fp import absmax, down, gamma, up
from . import _highs
from .core import Context, intersect, maxpool_relax, relu_masks
from .interval import node_interval
from .lp_model import DualBounder, ancestors, build_relaxation
from .symbolic import node_symbolic

CUTOFF = 1e-6        # stop once the sign is proved with this much room (cleared after rounding)


def _targets(ctx: Context, t: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Neurons of node ``t`` whose bounds are worth an LP: undecided ReLU inputs; for MaxPool
    inputs, entries of windows not yet decided by dominance; every output neuron."""
    if t == ctx.graph.output:
        return np.arange(lo.size)
    users = ctx.graph.consumers()[t]
    rows = (lo < 0) & (hi > 0)
    for c in users:
        n = ctx.nodes[c]
        if isinstance(n, MaxPool):
            pr = maxpool_relax(n, lo, hi)
            W = n.windows[~pr.dominated]
            m = np.zeros(lo.size, bool)
            m[W[W >= 0]] = True
            rows |= m
    return np.flatnonzero(rows)


def _exact_prefix(ctx: Context, lower: list, upper: list, t: int) -> bool:
    """True if no unstable ReLU and no undecided MaxPool lies before ``t``: the network up to ``t``
    is then affine on the box, symbolic bounds are already exact and an LP cannot improve them."""
    for i in ancestors(ctx.graph, t):
        n = ctx.nodes[i]
        if i == t:
            continue
        if isinstance(n, Relu) and relu_masks(lower[n.inputs[0]], upper[n.inputs[0]])[2].any():
            return False
        if isinstance(n, MaxPool):
            j = n.inputs[0]
            if not maxpool_relax(n, lower[j], upper[j]).dominated.all():
                return False
    return True


def _milp_margin(lp, bound: float) -> float:
    """Tolerance margin for a HiGHS MIP dual bound (not a rigorous float proof): node LPs are
    solved to dual feasibility 1e-7, which can overstate an LP objective by up to 1e-7 times the
    sum of the column ranges; plus a relative 1e-6 for the rest."""
    ranges = float(np.sum(lp.col_hi - lp.col_lo))
    return 1e-7 * ranges + 1e-6 * (1.0 + abs(bound))


def _objective(ctx: Context, lp, t: int, j: int):
    """Columns and coefficients of ``sum_k A_k[j] x_k`` (Linear node ``t`` without its bias) in
    ``lp``; inputs missing from the model are inactive ReLUs (exactly 0)."""
    n = ctx.nodes[t]
    idx, val = [], []
    for k, i in enumerate(n.inputs):
        A = n.mats[k]
        row = A[[j]].toarray().ravel() if hasattr(A, "toarray") else A[j]
        ci = lp.cols[i] if i in lp.cols else np.full(row.size, -1)
        ok = (ci >= 0) & (row != 0)
        idx.append(ci[ok]); val.append(row[ok])
    return np.concatenate(idx), np.concatenate(val)


def tighten_node(ctx: Context, lower: list, upper: list, t: int, deadline: float,
                 milp: bool = False, neuron_time: float | None = None, counters: dict | None = None):
    """LP (or MILP) bounds for the undecided neurons of Linear node ``t``; returns new ``(lo, hi)``.

    The model holds ``t``'s ancestors only; neuron ``j`` is optimised as ``A[j] x`` (the exact
    float coefficients), and ``z_j = A[j] x + b_j + e`` with ``|e| <= fwd_j`` (float64 network)
    turns a sound bound on ``A[j] x`` into one on ``z_j``."""
    lo, hi = lower[t].copy(), upper[t].copy()
    cnt = counters if counters is not None else {}
    n = ctx.nodes[t]
    if not isinstance(n, Linear) or len(set(n.inputs)) < len(n.inputs):
        return lo, hi        # (a node reading the same input twice would need summed coefficients)
    rows = _targets(ctx, t, lo, hi)
    if rows.size == 0 or time.perf_counter() >= deadline or _exact_prefix(ctx, lower, upper, t):
        return lo, hi
    # neurons closest to a decided sign first: under a time budget they are the likeliest wins
    span = np.maximum(hi[rows] - lo[rows], np.finfo(float).tiny)
    rows = rows[np.argsort(np.minimum(-lo[rows], hi[rows]) / span, kind="stable")]
    lp = build_relaxation(ctx, lower, upper, t, milp=milp, include_target=False)
    milp = milp and lp.binaries.size > 0        # no binaries: an LP, bounded from its duals
    db = None if milp else DualBounder(lp)
    h = _highs.make_solver(lp, milp=milp)
    cnt["lp_rows_max"] = max(cnt.get("lp_rows_max", 0), lp.shape[0])
    cnt["lp_cols_max"] = max(cnt.get("lp_cols_max", 0), lp.shape[1])
    prev = None
    n_col = lp.shape[1]
    bias, fwd = ctx.nodes[t].bias, ctx.fwd[t]

    def run(idx, val, cutoff: float | None) -> float:
        """A sound lower bound of ``val . x[idx]`` over the relaxation (or -inf)."""
        nonlocal prev
        left = deadline - time.perf_counter()
        if left <= 0:
            return -np.inf
        if neuron_time is not None:
            left = min(left, neuron_time)
        prev = _highs.set_objective(h, prev, idx, val)
        status, y, info = _highs.solve(h, left, cutoff=None if milp else cutoff)
        cnt["solves"] = cnt.get("solves", 0) + 1
        cnt["iterations"] = cnt.get("iterations", 0) + info["iterations"]
        if status == "Bound on objective reached":
            cnt["cutoff_stops"] = cnt.get("cutoff_stops", 0) + 1
        elif status != "Optimal":
            cnt["not_optimal"] = cnt.get("not_optimal", 0) + 1
        if milp:
            # HiGHS's global dual bound (valid at optimality and at the time limit); anything
            # else (infeasible, error) gives no information.  Never above a found solution.
            b = info["mip_dual_bound"]
            if status not in ("Optimal", "Time limit reached") or not np.isfinite(b):
                return -np.inf
            if np.isfinite(info["objective"]):
                b = min(b, info["objective"])
            return float(down(b - _milp_margin(lp, b)))
        if y is None:
            return -np.inf
        c = np.zeros(n_col)
        c[idx] = val
        return db.bound(c, y)

    # bounds of nodes in full_rows (MaxPool inputs, output) matter beyond the sign: no cutoff there
    relu_only = t not in ctx.full_rows
    for j in rows:
        if time.perf_counter() >= deadline:
            cnt["skipped"] = cnt.get("skipped", 0) + 1
            continue
        idx, val = _objective(ctx, lp, t, j)
        b, f = bias[j], fwd[j]
        err = gamma(3) * (abs(b) + f)
        # max z_j: z_j <= -min(-A x) + b + f.  Cutoff: stop once min(-A x) > b + f (z_j < 0 proved)
        m = run(idx, -val, b + f + CUTOFF if relu_only else None)
        hi[j] = min(hi[j], up(-m + b + f + err + gamma(3) * abs(m)))
        if relu_only and hi[j] <= 0:
            continue                                    # inactive: the lower bound is not needed
        # min z_j: z_j >= min(A x) + b - f.  Cutoff: stop once min(A x) > f - b (z_j > 0 proved)
        m = run(idx, val, f - b + CUTOFF if relu_only else None)
        lo[j] = max(lo[j], down(m + b - f - err - gamma(3) * abs(m)))
    return lo, hi


def lp_bounds(ctx: Context, lower: list, upper: list, end: float | None = None,
              milp: bool = False, neuron_time: float | None = None, extra_slots: int = 0):
    """Tighten sound ``lower``/``upper`` (from the symbolic level) node by node with per-neuron LPs
    (MILPs if ``milp``).  ``end``: a ``time.perf_counter()`` deadline for the pass (``None``: no
    limit); the time left is shared equally among the nodes still to do plus ``extra_slots`` (time
    kept for the caller, e.g. margin LPs), so a node that finishes early leaves its time to the
    next.  Returns ``(lower, upper, counters)``."""
    N = len(ctx.nodes)
    lo_out, hi_out = list(lower), list(upper)
    mags = [absmax(lo_out[i], hi_out[i]) for i in range(N)]
    needed = list(ctx.needed)
    counters: dict = {}
    done = 0
    for i in range(1, N):
        lo, hi = node_interval(ctx, i, lo_out, hi_out, mags)
        lo, hi = intersect(lo_out[i], hi_out[i], lo, hi)
        if i in needed:
            rows = np.arange(lo.size) if i in ctx.full_rows else np.flatnonzero((lo < 0) & (hi > 0))
            if rows.size and i > needed[0]:             # earlier layers changed: redo symbolic
                slo, shi = node_symbolic(ctx, lo_out, hi_out, i, rows)
                lo[rows], hi[rows] = intersect(lo[rows], hi[rows], slo, shi)
            lo_out[i], hi_out[i] = lo, hi
            now = time.perf_counter()
            slots = len(needed) - done + extra_slots
            deadline = np.inf if end is None else now + max(0.0, end - now) / max(slots, 1)
            lo, hi = tighten_node(ctx, lo_out, hi_out, i, deadline, milp, neuron_time, counters)
            lo, hi = intersect(lo_out[i], hi_out[i], lo, hi)
            done += 1
        lo_out[i], hi_out[i] = lo, hi
        mags[i] = absmax(lo, hi)
    return lo_out, hi_out, counters


def lp_margin_bounds(ctx: Context, lower: list, upper: list, C: np.ndarray, d: np.ndarray,
                     end: float | None = None, upper_too: bool = True):
    """Sound bounds on ``C @ y - d`` (row by row) from the LP relaxation of the whole graph: one LP
    per row and direction (all lower bounds first, then, if ``upper_too``, the upper ones), bounds
    rebuilt from duals.  Rows not reached before ``end`` (a ``perf_counter`` deadline) come back as
    ``-inf``/``+inf``: the caller intersects with the symbolic margins."""
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64).ravel()
    t = ctx.graph.output
    out_lo = np.full(C.shape[0], -np.inf)
    out_hi = np.full(C.shape[0], np.inf)
    end = np.inf if end is None else end
    if time.perf_counter() >= end:
        return out_lo, out_hi
    lp = build_relaxation(ctx, lower, upper, t, include_target=True)
    db = DualBounder(lp)
    h = _highs.make_solver(lp)
    cols = lp.cols[t]
    prev = None
    n_col = lp.shape[1]
    for sign in ((1.0, -1.0) if upper_too else (1.0,)):
        for r in range(C.shape[0]):
            left = end - time.perf_counter()
            if left <= 0:
                break
            prev = _highs.set_objective(h, prev, cols, sign * C[r])
            _, y, _ = _highs.solve(h, min(left, 1e9))
            if y is None:
                continue
            c = np.zeros(n_col)
            c[cols] = sign * C[r]
            b = db.bound(c, y)                      # lower bound of sign * C_r y
            if sign > 0:
                out_lo[r] = down(b - d[r])
            else:
                out_hi[r] = up(-b - d[r])
    return out_lo, out_hi
