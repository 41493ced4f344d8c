"""Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

Boxes are bounded in batches by the bound engine (``bounds.engine``: CROWN for every box at once,
optionally optimised slopes).  A box whose margin lower bound is > 0 is done.  For an open box, the
network is evaluated at the corner minimising the linear lower bound and at the centre; a point
with margin <= 0 goes to onnxruntime replay.  Open boxes are split by look-ahead among their
``top`` most promising inputs (promise = |slope of the deciding row| x width, the smart-branching
score): both halves along each candidate are bounded in one batch and the input whose worse half
has the best bound wins (those halves, already bounded, become the new boxes).  ``top=1`` (plain
smart branching, two bounds per split) is the default: on ACAS Xu it decided 3_6 prop_3 with 21
boxes, 1_1 prop_5 with 7,811 and 3_3 prop_9 with 3,725, where look-ahead over all five inputs
timed out after 60 s (40,000-50,000 boxes); on 1_2 prop_1 both need about 350 boxes.
The case is verified when no box is left: each part of the box has a sound margin lower bound > 0,
so the smallest of them bounds the whole case.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .bounds import alpha as alpha_opt
from .bounds.engine import Engine, domains
from .graph import Graph
from .replay import replay
from .spec import Case, Property, conjunction_max

MAX_INPUTS = 32          # splitting pays off only in low dimension


def applicable(graph: Graph) -> bool:
    return graph.n_inputs <= MAX_INPUTS


@dataclass
class SplitResult:
    status: str                      # verified | falsified | unknown | timeout
    margin_lower: float | None
    margin_upper: float | None
    x32: np.ndarray | None = None
    y32: np.ndarray | None = None
    boxes: int = 0                   # boxes bounded
    rounds: int = 0


class _Bounder:
    """Margin lower bounds of one case on batches of boxes."""

    def __init__(self, graph: Graph, case: Case, alpha_steps: int = 0,
                 arithmetic: str = "float32"):
        self.graph = graph
        self.engine = Engine(graph, arithmetic=arithmetic)
        self.alpha_steps = alpha_steps
        rows = [_with_sums(c.C, c.d) for c in case.unsafe]
        self.C = np.vstack([C for C, _, _ in rows])
        self.d = np.concatenate([d for _, d, _ in rows])
        self.scale = np.concatenate([w for _, _, w in rows])     # 1 / (rows in the sum)
        self.owner = np.repeat(np.arange(len(case.unsafe)), [C.shape[0] for C, _, _ in rows])
        self.n_conj = len(case.unsafe)
        self.count = 0
        self.seconds_per_box = 0.0       # the slowest pace seen, for fitting batches to deadlines

    def conj_margins(self, rows: np.ndarray) -> np.ndarray:
        """(N, rows) → (N, conjunctions): a conjunction's margin is the max of its rows, and at
        least the mean of any of them: a sum row counts divided by its number of rows (rounded
        down, so a lower bound of the sum stays a lower bound of the margin)."""
        mean = np.where(self.scale < 1, np.nextafter(rows * self.scale, -np.inf), rows)
        return conjunction_max(mean, self.owner, self.n_conj)

    def __call__(self, lo, hi):
        """Lower bound of each box's case margin, and the input slopes of its deciding row."""
        self.count += lo.shape[0]
        t0 = time.perf_counter()
        dom = self.engine.bound(domains(self.graph, lo, hi))
        rows, coef = self.engine.margins(dom, self.C, self.d, coef=True)
        if self.alpha_steps:
            open_ = self.conj_margins(rows).min(axis=1) <= 0
            if open_.any():
                sub = dom.take(np.flatnonzero(open_))
                r = alpha_opt.optimise(self.engine, sub, self.C, self.d, steps=self.alpha_steps)
                rows[open_] = np.maximum(rows[open_], r.lower)
        self.seconds_per_box = max(self.seconds_per_box,
                                   (time.perf_counter() - t0) / lo.shape[0])
        conj = self.conj_margins(rows)
        worst = conj.argmin(axis=1)
        masked = np.where(self.owner[None, :] == worst[:, None], rows * self.scale, -np.inf)
        best_row = masked.argmax(axis=1)
        return conj.min(axis=1), coef[np.arange(lo.shape[0]), best_row, :]


def _exact_sum(rows: np.ndarray):
    """The sum of ``rows`` if every float addition is exact (checked by TwoSum), else None."""
    acc = rows[0].copy()
    for r in rows[1:]:
        s = acc + r
        bb = s - acc
        if np.any((acc - (s - bb)) + (r - bb) != 0):     # TwoSum's error term
            return None
        acc = s
    return acc


def _with_sums(C, d, max_rows: int = 5):
    """A conjunction's rows plus the sum of every subset of two or more of them.

    The conjunction's margin is ``max_i (C_i y - d_i)``; a sum of rows can be positive over a box
    where no single row is (ACAS Xu prop_3: "COC is not the minimal score" holds through different
    outputs in different parts of the box), and the max is at least the sum's mean.  Only sums
    that float computes exactly are kept (true for ±1/0 rows), so the bound proved is for the exact
    sum.  Returns the rows, offsets, and per row 1 / (number of rows summed)."""
    k = C.shape[0]
    if k < 2 or k > max_rows:
        return C, d, np.ones(k)
    extra_C, extra_d, scale = [C], [d], [np.ones(k)]
    for m in range(1, 2 ** k):
        pick = [i for i in range(k) if (m >> i) & 1]
        if len(pick) < 2:
            continue
        cs, ds = _exact_sum(C[pick]), _exact_sum(d[pick])
        if cs is not None and ds is not None:
            extra_C.append(cs[None, :])
            extra_d.append(np.atleast_1d(ds))
            scale.append(np.array([1.0 / len(pick)]))
    return np.vstack(extra_C), np.concatenate(extra_d), np.concatenate(scale)


def split_case(graph: Graph, prop: Property, k: int, deadline: float,
               max_children: int = 1024, alpha_steps: int = 0,
               top: int | None = 1, arithmetic: str = "float32") -> SplitResult:
    """Decide case ``k`` of ``prop`` by input splitting until ``deadline`` (perf_counter time)."""
    case = prop.cases[k]
    one = Property((case,), prop.n_inputs, prop.n_outputs)
    bound = _Bounder(graph, case, alpha_steps, arithmetic)
    lo, hi = case.box.lower[None, :], case.box.upper[None, :]
    lb, slope = bound(lo, hi)
    proven_min, best_upper, rounds = np.inf, np.inf, 0
    axes = np.nonzero(case.box.upper > case.box.lower)[0]
    full_width = (case.box.upper - case.box.lower)[axes]
    queue = [(lo, hi, lb, slope)]

    def result(status, r=None):
        upper = r.margin if r is not None else (best_upper if np.isfinite(best_upper) else None)
        lower = proven_min if status == "verified" else None
        return SplitResult(status, lower, upper, None if r is None else r.x32,
                           None if r is None else r.y32, bound.count, rounds)

    while queue:
        lo, hi, lb, slope = queue.pop()
        done = lb > 0
        if done.any():
            proven_min = min(proven_min, float(lb[done].min()))
        lo, hi, lb, slope = lo[~done], hi[~done], lb[~done], slope[~done]
        if lo.shape[0] == 0:
            continue
        if time.perf_counter() > deadline:
            return result("timeout")
        rounds += 1
        hit, upper = _try_points(graph, one, bound, lo, hi, slope)
        if hit is not None:
            return result("falsified", hit)
        best_upper = min(best_upper, upper)
        if axes.size == 0:
            return result("unknown")
        # look-ahead split of at most max_children / (2 * axes) boxes per batch, fewer when the
        # time left would not cover a full batch at the pace measured so far
        fits = (deadline - time.perf_counter()) / max(bound.seconds_per_box, 1e-6)
        per = max(1, min(max_children, int(fits)) // (2 * min(top or axes.size, axes.size)))
        if lo.shape[0] > per:
            queue.append((lo[per:], hi[per:], lb[per:], slope[per:]))
            lo, hi, lb, slope = lo[:per], hi[:per], lb[:per], slope[:per]
        children = _look_ahead(bound, lo, hi, lb, slope, axes, full_width, top)
        if children is None:
            return result("unknown")          # a box too small to halve in float64
        queue.append(children)
    return result("verified")


def _look_ahead(bound, lo, hi, parent_lb, slope, axes, full_width, top: int | None = None):
    """Bound both halves of every box along its ``top`` most promising axes (all by default;
    promise = |slope| x width, the smart-branching score); keep the best axis per box.  Where no
    axis improves the box's bound (the gain may need two splits), halve the relatively widest."""
    m = lo.shape[0]
    n = lo.shape[1]
    width = hi[:, axes] - lo[:, axes]
    mid_all = 0.5 * (lo[:, axes] + hi[:, axes])
    ok_all = (mid_all > lo[:, axes]) & (mid_all < hi[:, axes])
    if not ok_all.any(axis=1).all():
        return None
    a = axes.size if top is None else min(top, axes.size)
    if a < axes.size:
        promise = np.where(ok_all, np.abs(slope[:, axes]) * width, -np.inf)
        cand = np.argsort(-promise, axis=1, kind="stable")[:, :a]   # (m, a) positions in axes
    else:
        cand = np.broadcast_to(np.arange(a), (m, a))
    ax = axes[cand]                                                  # (m, a) input coordinates
    rm = np.arange(m)[:, None]
    mid = mid_all[rm, cand]
    splittable = ok_all[rm, cand]
    L1 = np.repeat(lo[:, None, :], a, axis=1)                        # (m, a, n)
    H1 = np.repeat(hi[:, None, :], a, axis=1)
    L2, H2 = L1.copy(), H1.copy()
    ar = np.arange(a)[None, :]
    H1[rm, ar, ax] = mid
    L2[rm, ar, ax] = mid
    cand_lo = np.concatenate([L1.reshape(-1, n), L2.reshape(-1, n)])
    cand_hi = np.concatenate([H1.reshape(-1, n), H2.reshape(-1, n)])
    lb, sl = bound(cand_lo, cand_hi)
    lb1, lb2 = lb[:m * a].reshape(m, a), lb[m * a:].reshape(m, a)
    score = np.where(splittable, np.minimum(lb1, lb2) + 1e-6 * np.maximum(lb1, lb2), -np.inf)
    pick = score.argmax(axis=1)                                      # (m,) in 0..a-1
    stalled = score.max(axis=1) <= parent_lb + 1e-9 * (1 + np.abs(parent_lb))
    rel = np.where(splittable, width[rm, cand] / full_width[cand], -1.0)
    pick = np.where(stalled, rel.argmax(axis=1), pick)
    i1 = np.arange(m) * a + pick
    i2 = m * a + i1
    idx = np.concatenate([i1, i2])
    return cand_lo[idx], cand_hi[idx], lb[idx], sl[idx]


def _try_points(graph, prop, bound, lo, hi, slope):
    """Evaluate each open box's bound-minimising corner and centre; replay the best violation."""
    corner = np.where(slope > 0, lo, hi)
    pts = np.concatenate([corner, 0.5 * (lo + hi)])
    y = graph.forward(pts).reshape(pts.shape[0], -1)
    margin = bound.conj_margins(y @ bound.C.T - bound.d).min(axis=1)
    i = int(margin.argmin())
    if margin[i] <= 0:
        r = replay(graph.model_bytes, pts[i], prop)
        if r.ok:
            return r, float(margin[i])
    return None, float(margin[i])
