"""Per-neuron LP tightening (MIPVerify's ``lp`` level), the ``milp`` level, and margin LPs.

For each node whose bounds matter (input of a relaxed node, and the output), in topological order:
first its CROWN bounds are recomputed from the (already tightened) earlier layers — cheap, and
often enough to decide neurons — then every still-undecided neuron is minimised and maximised over
the LP relaxation of everything before it.  The model comes from the one builder
(``encode.encode_network`` with ``binaries=False`` and the float slack of every Linear row, so it
holds the float64 network too) restricted to what the node reads (``encode.support``); one HiGHS
``Session`` per node: only the objective changes between solves.

- ``max z`` first; if it is ``<= 0`` the neuron is inactive and ``min z`` is skipped.  ``max z`` is
  solved as ``min -z`` with HiGHS's ``objective_bound`` cutoff: dual simplex stops as soon as its
  dual objective proves ``-z > 0``; ``min z`` likewise stops once ``z > 0`` is proved.
- Every LP result is turned into a bound by ``solvers.DualBound`` from the row duals (weak duality,
  float error charged, rounded outward); a failed or timed-out solve still yields a valid (weaker)
  bound, and the result is intersected with the previous one, so nothing ever gets looser.
- A time budget per node; neurons not reached keep their previous bounds.

The ``milp`` level solves the same problems with binaries for the unstable ReLUs before the node and
a time cap per neuron.  HiGHS's MIP dual bound is not rebuilt from duals: the bound taken is
``mip_dual_bound`` minus ``solvers.mip_tolerance`` (the one rule for trusting a MIP dual bound).
"""
from __future__ import annotations

import time

import numpy as np

from ..encode import encode_network, support
from ..graph import MaxPool
from ..ops.sshape import SShaped
from ..solvers import DualBound, mip_tolerance
from ..solvers.case import encoding_deviation, unsafe_numbers
from ..solvers.highs import Session
from ..fp import absmax, down, gamma, up
from .engine import Domains, Engine

CUTOFF = 1e-6        # stop once the sign is proved with this much room (cleared after rounding)


def _flat(dom: Domains):
    """Domain 0's bounds as flat per-node arrays (the LP level bounds one domain)."""
    return [v[0] for v in dom.lower], [v[0] for v in dom.upper]


def _slack(eng: Engine, dom: Domains) -> list:
    """Float allowance of each Linear row: the float64 network's deviation, plus the rounding of
    coefficients the builder sums when a node reads the same input twice."""
    out = []
    for i, n in enumerate(eng.nodes):
        if not n.affine or dom.fwd[i] is None:
            out.append(None)
            continue
        f = dom.fwd[i][0]
        if len(set(n.inputs)) < len(n.inputs):
            f = f + gamma(2) * dom.absimg[i][0]
        out.append(f)
    return out


def _targets(eng: Engine, t: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Entries of node ``t`` whose bounds are worth an LP: undecided ReLU inputs; for max-pool
    inputs, entries of windows not yet decided by dominance; every entry of the output and of
    sigmoid / tanh inputs (their relaxations tighten with any entry's bounds)."""
    if t == eng.graph.output or any(isinstance(eng.nodes[c], SShaped) for c in eng.users[t]):
        return np.arange(lo.size)
    rows = (lo < 0) & (hi > 0)
    for c in eng.users[t]:
        n = eng.nodes[c]
        if isinstance(n, MaxPool):
            _, _, dominated, _ = n._selection(lo, hi)
            W = n.windows[~dominated]
            m = np.zeros(lo.size, bool)
            m[W[W >= 0]] = True
            rows |= m
    return np.flatnonzero(rows)


def _exact_prefix(eng: Engine, dom: Domains, t: int) -> bool:
    """True if every relaxed node before ``t`` that ``t`` depends on is exact on its bounds (its
    two lines coincide): the network up to ``t`` is then affine on the box, CROWN bounds are
    already exact and an LP cannot improve them."""
    seen, stack = {t}, [t]
    while stack:
        for j in eng.nodes[stack.pop()].inputs:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    for i in seen - {t}:
        if eng.nodes[i].affine or i == 0:
            continue
        R = eng.relaxation(dom, i)
        if not np.array_equal(R.lo_slope, R.up_slope):
            return False
        lo_off = 0.0 if R.lo_off is None else R.lo_off
        up_off = 0.0 if R.up_off is None else R.up_off
        if not np.array_equal(np.broadcast_to(lo_off, R.up_slope.shape),
                              np.broadcast_to(up_off, R.up_slope.shape)):
            return False
    return True


def _objective(node, model, j: int):
    """Columns, coefficients and constant of ``sum_k A_k[j] x_k`` (Linear ``node`` without its bias)
    in ``model``; entries the model holds as constants (inactive ReLUs) go to the constant."""
    idx, val, const = [], [], 0.0
    for k, i in enumerate(node.inputs):
        row = node.row_block(k, np.array([j]))[0]
        V = model.vars[i]
        nz = row != 0
        var = nz & (V.cols >= 0)
        idx.append(V.cols[var])
        val.append(row[var])
        const += float(row[nz & (V.cols < 0)] @ V.const[nz & (V.cols < 0)])
    idx, val = np.concatenate(idx), np.concatenate(val)
    if idx.size:                      # the same input twice: one column, summed coefficients
        idx, inv = np.unique(idx, return_inverse=True)
        val = np.bincount(inv, weights=val, minlength=idx.size)
    return idx, val, const


def mip_min(D: float, const: float, tau: float) -> float:
    """A sound lower bound of ``objective + const`` from HiGHS's MIP dual bound ``D`` on the
    objective: ``tau`` (``mip_tolerance`` plus the encoding's slack) and the sum's rounding off."""
    return float(down(D + const - tau - gamma(3) * (abs(D) + abs(const))))


def neuron_upper(m: float, b: float, f: float) -> float:
    """``z <= ...`` from ``m <= min(-A x)``, for ``z = A x + b + e``, ``|e| <= f``."""
    return up(-m + b + f + gamma(3) * (abs(b) + f) + gamma(3) * abs(m))


def neuron_lower(m: float, b: float, f: float) -> float:
    """``z >= ...`` from ``m <= min(A x)``, for ``z = A x + b + e``, ``|e| <= f``."""
    return down(m + b - f - gamma(3) * (abs(b) + f) - gamma(3) * abs(m))


def tighten_node(eng: Engine, dom: Domains, t: int, deadline: float, milp: bool = False,
                 neuron_time: float | None = None, counters: dict | None = None):
    """LP (or MILP) bounds for the undecided entries of Linear node ``t`` of domain 0; returns
    new flat ``(lo, hi)``.  Entry ``j`` is optimised as ``A[j] x`` (the exact float coefficients),
    and ``z_j = A[j] x + b_j + e`` with ``|e| <= fwd_j`` (float64 network) turns a sound bound on
    ``A[j] x`` into one on ``z_j``."""
    lower, upper = _flat(dom)
    lo, hi = lower[t].copy(), upper[t].copy()
    cnt = counters if counters is not None else {}
    node = eng.nodes[t]
    if not node.affine:
        return lo, hi
    rows = _targets(eng, t, lo, hi)
    if rows.size == 0 or time.perf_counter() >= deadline or _exact_prefix(eng, dom, t):
        return lo, hi
    # neurons closest to a decided sign first: under a time budget they are the likeliest wins
    span = np.maximum(hi[rows] - lo[rows], np.finfo(float).tiny)
    rows = rows[np.argsort(np.minimum(-lo[rows], hi[rows]) / span, kind="stable")]
    keep = support(eng.graph, lower, upper, {j: np.ones(eng.nodes[j].size, bool)
                                             for j in node.inputs})
    model = encode_network(eng.graph, (lower, upper), _Box(lower[0], upper[0]), keep=keep,
                           slack=_slack(eng, dom), binaries=milp)
    # no binaries, or numbers HiGHS's MIP answers cannot be trusted with: an LP, bounded from its
    # duals (weak duality holds whatever the solver's numerics)
    milp = milp and model.n_binaries > 0 and unsafe_numbers(model) is None
    if not milp and model.n_binaries:
        model = model.relaxed()
    db = None if milp else DualBound(model)
    try:
        sess = Session(model)
    except RuntimeError:                        # HiGHS refuses coefficients beyond 1e15
        cnt["rejected"] = cnt.get("rejected", 0) + 1
        return lo, hi
    cnt["lp_rows_max"] = max(cnt.get("lp_rows_max", 0), model.n_rows)
    cnt["lp_cols_max"] = max(cnt.get("lp_cols_max", 0), model.n_cols)
    colmag = absmax(model.lb, model.ub)
    bias, fwd = node.bias, dom.fwd[t][0]
    # a MILP optimum can sit below the network's by the tolerances HiGHS keeps to
    enc = encoding_deviation(eng.graph, lower, upper, t)[t] if milp else None

    def run(idx, val, const, cutoff: float | None, j: int) -> float:
        """A sound lower bound of ``val . x[idx] + const`` over the model (or -inf)."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return -np.inf
        if neuron_time is not None:
            left = min(left, neuron_time)
        status, y, info = sess.minimise(idx, val, left, None if milp else cutoff)
        cnt["solves"] = cnt.get("solves", 0) + 1
        cnt["iterations"] = cnt.get("iterations", 0) + info["iterations"]
        if status == "cutoff":
            cnt["cutoff_stops"] = cnt.get("cutoff_stops", 0) + 1
        elif status != "optimal":
            cnt["not_optimal"] = cnt.get("not_optimal", 0) + 1
        if milp:
            # HiGHS's global dual bound (valid at optimality and at the time limit); anything
            # else (infeasible, error) gives no information.  Never above a found solution.
            b = info["mip_dual_bound"]
            if status not in ("optimal", "time_limit") or not np.isfinite(b):
                return -np.inf
            if np.isfinite(info["objective"]):
                b = min(b, info["objective"])
            scale = float(np.abs(val) @ colmag[idx]) + abs(const)
            return mip_min(b, const, mip_tolerance(scale) + float(enc[j]))
        if y is None:
            return -np.inf
        c = np.zeros(model.n_cols)
        c[idx] = val
        return db.bound(y, c, const)

    # bounds of nodes in full_rows (max-pool inputs, output) matter beyond the sign: no cutoff
    relu_only = t not in eng.full_rows
    for j in rows:
        if time.perf_counter() >= deadline:
            cnt["skipped"] = cnt.get("skipped", 0) + 1
            continue
        idx, val, const = _objective(node, model, j)
        b, f = bias[j], fwd[j]
        # max z_j: z_j <= -min(-A x) + b + f.  Cutoff: stop once min(-A x) > b + f (z_j < 0)
        m = run(idx, -val, -const, b + f + const + CUTOFF if relu_only else None, j)
        hi[j] = min(hi[j], neuron_upper(m, b, f))
        if relu_only and hi[j] <= 0:
            continue                                    # inactive: the lower bound is not needed
        # min z_j: z_j >= min(A x) + b - f.  Cutoff: stop once min(A x) > f - b (z_j > 0)
        m = run(idx, val, const, f - b - const + CUTOFF if relu_only else None, j)
        lo[j] = max(lo[j], neuron_lower(m, b, f))
    return lo, hi


class _Box:
    def __init__(self, lower, upper):
        self.lower, self.upper = lower, upper


def lp_bounds(eng: Engine, dom: Domains, end: float | None = None, milp: bool = False,
              neuron_time: float | None = None, extra_slots: int = 0) -> dict:
    """Tighten the CROWN bounds of domain 0 (``dom``, B = 1) node by node with per-neuron LPs
    (MILPs if ``milp``), in place.  ``end``: a ``time.perf_counter()`` deadline for the pass
    (``None``: no limit); the time left is shared equally among the nodes still to do plus
    ``extra_slots`` (time kept for the caller, e.g. margin LPs), so a node that finishes early
    leaves its time to the next.  Returns the counters."""
    needed = list(eng.needed)
    counters: dict = {}
    done = 0
    for i in range(1, len(eng.nodes)):
        eng._set(dom, i, *eng.interval_node(dom, i))
        if i not in needed:
            continue
        lo, hi = dom.lower[i][0], dom.upper[i][0]
        rows = np.arange(lo.size) if i in eng.full_rows else np.flatnonzero((lo < 0) & (hi > 0))
        if rows.size and i > needed[0]:             # earlier layers changed: redo CROWN
            rlo, rhi = eng.node_rows(dom, i, rows)
            lo, hi = lo.copy(), hi.copy()
            lo[rows], hi[rows] = np.maximum(lo[rows], rlo[0]), np.minimum(hi[rows], rhi[0])
            eng._set(dom, i, lo[None], hi[None])
        now = time.perf_counter()
        slots = len(needed) - done + extra_slots
        deadline = np.inf if end is None else now + max(0.0, end - now) / max(slots, 1)
        lo, hi = tighten_node(eng, dom, i, deadline, milp, neuron_time, counters)
        eng._set(dom, i, lo[None], hi[None])
        done += 1
    return counters


def lp_margin_bounds(eng: Engine, dom: Domains, C: np.ndarray, d: np.ndarray,
                     end: float | None = None, upper_too: bool = True):
    """Sound bounds on ``C @ y - d`` (row by row) from the LP relaxation of the whole graph (domain
    0): one LP per row and direction (all lower bounds first, then, if ``upper_too``, the upper
    ones), bounds rebuilt from duals.  Rows not reached before ``end`` come back as ``-inf`` /
    ``+inf``: the caller intersects with the CROWN margins."""
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64).ravel()
    t = eng.graph.output
    out_lo = np.full(C.shape[0], -np.inf)
    out_hi = np.full(C.shape[0], np.inf)
    end = np.inf if end is None else end
    if time.perf_counter() >= end:
        return out_lo, out_hi
    lower, upper = _flat(dom)
    keep = support(eng.graph, lower, upper, {t: np.ones(eng.nodes[t].size, bool)})
    model = encode_network(eng.graph, (lower, upper), _Box(lower[0], upper[0]), keep=keep,
                           slack=_slack(eng, dom), binaries=False)
    db = DualBound(model)
    try:
        sess = Session(model)
    except RuntimeError:                        # HiGHS refuses coefficients beyond 1e15
        return out_lo, out_hi
    V = model.vars[t]
    for sign in ((1.0, -1.0) if upper_too else (1.0,)):
        for r in range(C.shape[0]):
            left = end - time.perf_counter()
            if left <= 0:
                break
            coef = sign * C[r]
            var = (V.cols >= 0) & (coef != 0)
            const = float(coef[(V.cols < 0) & (coef != 0)] @ V.const[(V.cols < 0) & (coef != 0)])
            idx, val = V.cols[var], coef[var]
            _, y, _ = sess.minimise(idx, val, min(left, 1e9))
            if y is None:
                continue
            c = np.zeros(model.n_cols)
            np.add.at(c, idx, val)
            b = db.bound(y, c, const)                 # lower bound of sign * C_r y
            if sign > 0:
                out_lo[r] = down(b - d[r])
            else:
                out_hi[r] = up(-b - d[r])
    return out_lo, out_hi
