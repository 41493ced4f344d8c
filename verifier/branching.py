"""Branching rules of the branch-and-bound driver (``bab``): how a domain is split in two, and how
a batch of children is bounded.

- ``ReluRule``: split the unstable ReLU whose relaxation costs the bound most (a BaBSR-style
  score from the coefficients reaching it, optionally filtered strong branching); children inherit
  the parent's bounds (sound for a subset) with the split neuron's input clamped to ``>= 0`` /
  ``<= 0``, then slopes and split multipliers (beta-CROWN) bound the margins.  Without the
  multipliers a split only fixes that neuron's relaxation; with them the constraint enters the
  bound.
- ``InputRule``: halve the input box along the input whose |slope of the deciding row| x width is
  largest (smart branching), or, with ``top > 1``, estimate the bounds of the halves along the
  ``top`` most promising inputs (CROWN in float32) and keep the best (look-ahead); children's
  bounds are computed afresh (CROWN).

Both bound the rows of ``C y - d`` of one case (``Rows``); a conjunction's margin is the max of its
rows, the case margin the min over conjunctions.
"""
from __future__ import annotations

import numpy as np

from .bounds import alpha as alpha_opt
from .bounds.engine import Domains, Engine, domains
from .graph import Relu
from .ops.relu import upper_line
from .spec import Case, conjunction_max


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


class Rows:
    """The rows bounded for one case, with (``sums``) the exact sums of each conjunction's rows."""

    def __init__(self, case: Case, sums: bool = False):
        parts = [_with_sums(c.C, c.d) if sums else (np.atleast_2d(c.C), np.ravel(c.d),
                                                    np.ones(np.atleast_2d(c.C).shape[0]))
                 for c in case.unsafe]
        self.C = np.vstack([C for C, _, _ in parts]) if parts else np.zeros((0, 0))
        self.d = np.concatenate([d for _, d, _ in parts]) if parts else np.zeros(0)
        self.scale = np.concatenate([w for _, _, w in parts]) if parts else np.zeros(0)
        self.owner = np.repeat(np.arange(len(case.unsafe)), [C.shape[0] for C, _, _ in parts])
        self.n_conj = len(case.unsafe)

    def conj(self, rows: np.ndarray) -> np.ndarray:
        """``(B, k)`` row bounds (or values) -> ``(B, conjunctions)``: a conjunction's margin is the
        max of its rows, and at least the mean of any of them (a sum row counts divided by its
        number of rows, rounded down so a lower bound stays one)."""
        mean = np.where(self.scale < 1, np.nextafter(rows * self.scale, -np.inf), rows)
        return conjunction_max(mean, self.owner, self.n_conj)

    def margin(self, rows: np.ndarray) -> np.ndarray:
        """``(B, k)`` -> ``(B,)`` case margins."""
        return self.conj(rows).min(axis=1)

    def deciding(self, rows: np.ndarray) -> np.ndarray:
        """Per domain, the row to improve: the best row of the worst conjunction."""
        worst = self.conj(rows).argmin(axis=1)
        mine = self.owner[None, :] == worst[:, None]
        return np.where(mine, rows * self.scale, -np.inf).argmax(axis=1)


def _params_split(params: dict | None):
    if params is None:
        return None, None
    alpha = {i: v for i, v in params.items() if not isinstance(i, tuple)}
    beta = {i[1]: v for i, v in params.items() if isinstance(i, tuple)} or None
    return alpha, beta


class ReluRule:
    """Split the most costly unstable ReLU; bound children with slopes and split multipliers."""

    name = "relu"
    needs_coef = False

    def __init__(self, eng: Engine, rows: Rows, steps: int = 20, refine: bool = False,
                 fsb: int = 0, beta: bool = True):
        self.eng, self.rows, self.steps, self.refine, self.fsb = eng, rows, steps, refine, fsb
        self.beta = beta
        self.relus = [i for i, n in enumerate(eng.nodes) if isinstance(n, Relu)]

    def free(self, dom: Domains) -> np.ndarray:
        """Per domain, the unstable ReLU entries whose phase is not fixed."""
        n = np.zeros(dom.B, np.int64)
        for r in self.relus:
            j = self.eng.nodes[r].inputs[0]
            f = (dom.lower[j] < 0) & (dom.upper[j] > 0)
            if r in dom.phase:
                f &= dom.phase[r] == 0
            n += f.sum(axis=1)
        return n

    def _scores(self, dom: Domains, row: np.ndarray):
        """BaBSR estimates of the bound's gain for every free ReLU entry, flattened over the Relu
        nodes: ``(score (B, n), node of each column, entry of each column)`` (not free: -inf).
        The estimate is ``-min(L, 0) t`` (the upper line's intercept the split removes) plus a
        quarter of ``max(L, 0) min(u, -l)`` (the lower line's gap), ``L`` the coefficient of the
        deciding row reaching the ReLU."""
        eng = self.eng
        coef = eng.coefficients(dom, eng.graph.output, self.rows.C, estimate=True)
        b = np.arange(dom.B)
        parts, nodes, entries = [], [], []
        for r in self.relus:
            j = eng.nodes[r].inputs[0]
            l, u = dom.lower[j], dom.upper[j]
            free = (l < 0) & (u > 0)
            if r in dom.phase:
                free &= dom.phase[r] == 0
            if r not in coef or not free.any():
                continue
            lam = coef[r][b, row, :]
            _, t = upper_line(l, u)
            with np.errstate(invalid="ignore"):
                s = -np.minimum(lam, 0.0) * t + 0.25 * np.maximum(lam, 0.0) * np.minimum(u, -l)
            parts.append(np.where(free, np.nan_to_num(s, nan=0.0) + 1e-12, -np.inf))
            nodes.append(np.full(l.shape[1], r))
            entries.append(np.arange(l.shape[1]))
        if not parts:
            return np.full((dom.B, 1), -np.inf), np.full(1, -1), np.zeros(1, np.int64)
        return np.hstack(parts), np.concatenate(nodes), np.concatenate(entries)

    def _choose(self, dom: Domains, prow: np.ndarray, params: dict | None):
        """Per domain the (Relu node, entry) to split (node -1: none left): the best BaBSR
        estimate, or with filtered strong branching (``fsb`` candidates) the candidate whose worse
        child has the best bound (children bounded once, with the parent's slopes)."""
        s, nodes, entries = self._scores(dom, self.rows.deciding(prow))
        if self.fsb <= 1 or nodes[0] < 0:
            best = s.argmax(axis=1)
            return np.where(np.isfinite(s.max(axis=1)), nodes[best], -1), entries[best]
        k = min(self.fsb, s.shape[1])
        cand = np.argsort(-s, axis=1)[:, :k]                       # (B, k) columns
        ok = np.isfinite(np.take_along_axis(s, cand, axis=1))
        rep = np.repeat(np.arange(dom.B), k)
        trial = self._split(dom, nodes[cand].ravel(), entries[cand].ravel(), False, of=rep,
                            slack=False)
        alpha, beta = _params_split(None if params is None else
                                    self.inherit(params, np.repeat(rep, 2)))
        lb, _ = self.eng.objective(trial, self.eng.graph.output, self.rows.C, -self.rows.d,
                                   alpha=alpha, beta=beta, estimate=True)
        # (an estimate that overflowed float32 says nothing)
        lb = np.maximum(np.nan_to_num(lb, nan=-np.inf), np.repeat(prow, 2 * k, axis=0))
        m = self.rows.margin(lb).reshape(dom.B, k, 2)
        # an infinite child estimate (a closed child, or a float32 overflow) is the largest float
        # here, so its tie-break term outweighs any bound: such a split is taken first.  The sum
        # then overflows to inf, which is meant
        with np.errstate(over="ignore"):
            worse = np.where(ok, m.min(axis=2) + 1e-6 * m.max(axis=2), -np.inf)
        pick = cand[np.arange(dom.B), worse.argmax(axis=1)]
        return np.where(ok.any(axis=1), nodes[pick], -1), entries[pick]

    def _split(self, dom: Domains, node: np.ndarray, entry: np.ndarray, refine: bool,
               of: np.ndarray | None = None, slack: bool = True) -> Domains:
        """Two children per domain (or per domain ``of[c]`` for split ``c``): the chosen ReLU
        active (first) and inactive (second); ``slack=False``: for estimates only (see
        ``Domains.take``)."""
        eng = self.eng
        two = dom.take(np.repeat(np.arange(dom.B) if of is None else of, 2), slack,
                       None if slack else eng.estimate_nodes, relax=True)
        sign = np.tile(np.array([1, -1], np.int8), node.size)
        node2, entry2 = np.repeat(node, 2), np.repeat(entry, 2)
        for r in set(node.tolist()) - {-1}:
            sel = np.flatnonzero(node2 == r)
            eng.fix_phases(two, r, sel, entry2[sel], sign[sel])     # (drops cached relaxations)
        if refine:
            first = min((r for r in set(node.tolist()) if r >= 0), default=None)
            if first is not None:
                eng.bound(two, start=first + 1)
        return two

    def branch(self, dom: Domains, prow: np.ndarray, pcoef, params: dict | None):
        """Children of every domain (two each, in order), or None where a domain has no free
        ReLU left (``stuck``: a mask)."""
        node, entry = self._choose(dom, prow, params)
        stuck = node < 0
        return self._split(dom, node, entry, self.refine), stuck

    def bound(self, dom: Domains, deadline: float, start: dict | None = None):
        """Row lower bounds ``(B, k)``, the input coefficients of each row's bound (for points to
        try) and the slopes and multipliers found (float32, to warm-start the children)."""
        r = alpha_opt.optimise(self.eng, dom, self.rows.C, self.rows.d, steps=self.steps,
                               beta=self.beta, deadline=deadline, start=start,
                               settled=lambda lb: self.rows.margin(lb) > 0, coef=True,
                               estimate=True)
        return r.lower, r.coef, {i: v.astype(np.float32, copy=False) for i, v in r.alpha.items()}

    @staticmethod
    def inherit(params: dict, idx: np.ndarray) -> dict:
        """The slopes and multipliers of domains ``idx`` (a parent's go to both children; a new
        split's multiplier starts at 0, which ``optimise`` fills in)."""
        return {i: v[idx] for i, v in params.items()}


class InputRule:
    """Halve the input box (smart branching, or look-ahead among the ``top`` best inputs)."""

    name = "input"
    needs_coef = True

    def __init__(self, eng: Engine, rows: Rows, box_width: np.ndarray, top: int = 1,
                 alpha_steps: int = 0):
        self.eng, self.rows, self.top, self.alpha_steps = eng, rows, top, alpha_steps
        self.axes = np.flatnonzero(box_width > 0)
        self.full_width = box_width[self.axes]
        self.relus = ReluRule(eng, rows).relus

    def free(self, dom: Domains) -> np.ndarray:
        return ReluRule.free(self, dom)

    def bound(self, dom: Domains, deadline: float, start: dict | None = None):
        """CROWN bounds of the rows; with ``alpha_steps``, the open boxes' intermediate bounds
        and rows then get optimised slopes (``alpha.tighten_intermediate``, ``alpha.optimise``,
        that many steps each, on estimates; every bound kept is a charged pass's).  Near a
        decision the relaxation, not the box, is what stays loose: on the 1,000 worst open boxes
        of ACAS Xu 1_8 prop_2 after 40 s of splitting, CROWN's worst bound is -0.0045, optimised
        output slopes alone reach -0.0033, optimised intermediate bounds too close all 1,000."""
        eng = self.eng
        eng.bound(dom)
        lb, coef = eng.margins(dom, self.rows.C, self.rows.d, coef=True)
        if self.alpha_steps:
            open_ = np.flatnonzero(self.rows.margin(lb) <= 0)
            if open_.size:
                sub = dom.take(open_)
                alpha_opt.tighten_intermediate(eng, sub, steps=self.alpha_steps,
                                               deadline=deadline)
                r = alpha_opt.optimise(eng, sub, self.rows.C, self.rows.d, steps=self.alpha_steps,
                                       deadline=deadline, estimate=True, coef=True)
                better = r.lower > lb[open_]
                lb[open_] = np.maximum(lb[open_], r.lower)
                coef[open_] = np.where(better[:, :, None], r.coef, coef[open_])
        return lb, coef, {}

    @staticmethod
    def inherit(params: dict, idx: np.ndarray) -> dict:
        return {}

    def _look(self, kids: Domains) -> np.ndarray:
        """The look-ahead's row bounds of candidate children, only to choose a split by: CROWN
        in float32 with no rounding charged (``Engine.bound(estimate=True)``), 85 % of a
        look-ahead search's time went to these bounds in float64; the children chosen are then
        bounded in earnest (``bound``), with slope steps if the rule has them."""
        self.eng.bound(kids, estimate=True)
        return self.eng.margins(kids, self.rows.C, self.rows.d, estimate=True)

    def branch(self, dom: Domains, prow: np.ndarray, pcoef: np.ndarray, params):
        """Children of every domain, two each in order (halves along the chosen input); a box
        too small to halve in float64 is ``stuck``."""
        lo, hi = dom.box
        axes = self.axes
        m = lo.shape[0]
        width = hi[:, axes] - lo[:, axes]
        mid = 0.5 * (lo[:, axes] + hi[:, axes])
        ok = (mid > lo[:, axes]) & (mid < hi[:, axes])
        stuck = ~ok.any(axis=1)
        promise = np.where(ok, np.abs(pcoef[:, axes]) * width, -np.inf)
        a = min(self.top, axes.size)
        cand = np.argsort(-promise, axis=1, kind="stable")[:, :a]    # (m, a) positions in axes
        if a == 1:
            pick = cand[:, 0]
        else:                                                         # look-ahead: bound them all
            clo, chi = self._halves(lo, hi, axes[cand], np.take_along_axis(mid, cand, axis=1))
            mm = self.rows.margin(self._look(domains(self.eng.graph, clo, chi)))
            lb1, lb2 = mm[:m * a].reshape(m, a), mm[m * a:].reshape(m, a)
            okc = np.take_along_axis(ok, cand, axis=1)
            score = np.where(okc, np.minimum(lb1, lb2) + 1e-6 * np.maximum(lb1, lb2), -np.inf)
            pick = np.take_along_axis(cand, score.argmax(axis=1)[:, None], axis=1)[:, 0]
        # a box whose chosen input cannot be halved halves its relatively widest one instead
        wide = np.where(ok, width / self.full_width, -1.0).argmax(axis=1)
        pick = np.where(np.take_along_axis(ok, pick[:, None], axis=1)[:, 0], pick, wide)
        clo, chi = self._halves(lo, hi, axes[pick][:, None], mid[np.arange(m), pick][:, None])
        # order: both children of box 0, then of box 1, ... (as the driver expects)
        order = np.stack([np.arange(m), m + np.arange(m)], axis=1).ravel()
        return domains(self.eng.graph, clo[order], chi[order]), stuck

    @staticmethod
    def _halves(lo, hi, ax, mid):
        """Lower halves then upper halves of box ``b`` along ``ax[b, c]`` at ``mid[b, c]`` for every
        candidate ``c``: ``(lo, hi)`` each ``(2 m a, n)``."""
        m, a = ax.shape
        n = lo.shape[1]
        rm, ar = np.arange(m)[:, None], np.arange(a)[None, :]
        L1 = np.repeat(lo[:, None, :], a, axis=1)
        H1 = np.repeat(hi[:, None, :], a, axis=1)
        L2, H2 = L1.copy(), H1.copy()
        H1[rm, ar, ax] = mid
        L2[rm, ar, ax] = mid
        return (np.concatenate([L1.reshape(-1, n), L2.reshape(-1, n)]),
                np.concatenate([H1.reshape(-1, n), H2.reshape(-1, n)]))
