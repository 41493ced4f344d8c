"""Branch and bound over domains: one driver, two branching rules (ReLU phases, the input box).

A pool holds the open domains of one case (``bounds.engine.Domains``: a box, a phase per ReLU
entry, bounds of every node) with a sound lower bound on the case margin for each.  Each round the
``batch`` open domains with the lowest bounds are split in two by the rule, the children are
bounded together by the engine, children whose margin lower bound is > 0 (or that are empty: an
impossible combination of phases) are closed, the rest go back to the pool.  The case is verified
when the pool is empty: the children of a domain cover it, so the smallest bound of the closed
leaves bounds the whole case.

- ReLU rule (``relu``): split the unstable ReLU whose relaxation costs the bound most (a
  BaBSR-style score from the coefficients reaching it); children inherit the parent's bounds (sound
  for a subset) with the split neuron's input clamped to ``>= 0`` / ``<= 0``, then optimised slopes
  and split multipliers (beta-CROWN, ``bounds.alpha``) bound the margins.  Without the multipliers a
  split only fixes that neuron's relaxation; with them the constraint itself enters the bound.
- Input rule (``input``): halve the input with the largest |slope of the deciding row| x width
  (smart branching); the children's bounds are recomputed from their boxes (``input_split``).

Counterexamples: the input that minimises each child's linear bound is evaluated; a violating
point goes to the onnxruntime replay, and only a replayed point ends the search with
``falsified``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bounds import alpha as alpha_opt
from .bounds.engine import Domains, Engine
from .exact import solve_domain
from .graph import Graph, Relu
from .ops.relu import upper_line
from .replay import replay
from .spec import Case, Property, conjunction_max


@dataclass
class BabResult:
    status: str                   # verified | falsified | unknown | timeout
    margin_lower: float | None    # sound, when verified: the smallest bound of the closed leaves
    margin_upper: float | None    # the best margin seen at a point (not a proof)
    x32: np.ndarray | None = None
    y32: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


def concat(doms: list) -> Domains:
    """One batch holding the domains of several (with the same nodes), in order."""
    cat = lambda vs: None if vs[0] is None else np.concatenate(vs)
    phases: dict = {}
    for i in {i for d in doms for i in d.phase}:        # a ReLU node's phases: (B, its size)
        phases[i] = np.concatenate([d.phase.get(i, np.zeros((d.B, d.lower[i].shape[1]), np.int8))
                                    for d in doms])
    return Domains([cat([d.lower[i] for d in doms]) for i in range(len(doms[0].lower))],
                   [cat([d.upper[i] for d in doms]) for i in range(len(doms[0].upper))],
                   phases,
                   [cat([d.fwd[i] for d in doms]) for i in range(len(doms[0].fwd))],
                   [cat([d.absimg[i] for d in doms]) for i in range(len(doms[0].absimg))])


class _Rows:
    """The margin rows of one case: rows of ``C y - d``; a conjunction's margin is the max of its
    rows, the case margin the min over conjunctions."""

    def __init__(self, case: Case):
        self.C, self.d, self.owner = case.stacked()
        self.n_conj = len(case.unsafe)

    def margin(self, rows: np.ndarray) -> np.ndarray:
        """``(B, k)`` row bounds (or values) -> ``(B,)`` case margins."""
        return conjunction_max(rows, self.owner, self.n_conj).min(axis=1)

    def deciding(self, rows: np.ndarray) -> np.ndarray:
        """Per domain, the row to improve: the best row of the worst conjunction."""
        conj = conjunction_max(rows, self.owner, self.n_conj)
        worst = conj.argmin(axis=1)
        mine = self.owner[None, :] == worst[:, None]
        return np.where(mine, rows, -np.inf).argmax(axis=1)


class ReluRule:
    """Split the most costly unstable ReLU; bound children with slopes and split multipliers."""

    name = "relu"

    def __init__(self, eng: Engine, rows: _Rows, steps: int = 20, refine: bool = False,
                 fsb: int = 0):
        self.eng, self.rows, self.steps, self.refine, self.fsb = eng, rows, steps, refine, fsb
        self.relus = [i for i, n in enumerate(eng.nodes) if isinstance(n, Relu)]

    def scores(self, dom: Domains, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BaBSR estimates of the bound's gain for every free (unstable, not split) ReLU entry of
        every domain, flattened over the Relu nodes: ``(score (B, n), node of each column, entry of
        each column)``; not free: -inf.  The estimate is ``-min(L, 0) t`` (the upper line's
        intercept the split removes) plus a quarter of ``max(L, 0) min(u, -l)`` (the lower
        line's gap), ``L`` the coefficient of the deciding row reaching the ReLU."""
        eng, rows = self.eng, self.rows
        coef = eng.coefficients(dom, eng.graph.output, rows.C)
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

    def score(self, dom: Domains, row: np.ndarray, rows_lb: np.ndarray | None = None,
              params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per domain, the (Relu node, entry) to split, or node -1 when none is left: the best
        BaBSR estimate, or with filtered strong branching (``self.fsb`` candidates) the candidate
        whose worse child has the best bound (children bounded once, with the parent's slopes)."""
        s, nodes, entries = self.scores(dom, row)
        if not self.fsb or self.fsb <= 1 or nodes[0] < 0:
            best = s.argmax(axis=1)
            node = np.where(np.isfinite(s.max(axis=1)), nodes[best], -1)
            return node, entries[best]
        k = min(self.fsb, s.shape[1])
        cand = np.argsort(-s, axis=1)[:, :k]                       # (B, k) columns
        ok = np.isfinite(np.take_along_axis(s, cand, axis=1))
        B = dom.B
        rep = np.repeat(np.arange(B), k)
        trial = self.children(dom.take(rep), nodes[cand].ravel(), entries[cand].ravel(),
                              refine=False)
        start = self.inherit(params, np.repeat(rep, 2)) if params is not None else None
        alpha = None if start is None else {i: v for i, v in start.items() if not isinstance(i, tuple)}
        beta = None if start is None else ({i[1]: v for i, v in start.items()
                                            if isinstance(i, tuple)} or None)
        lb, _ = self.eng.objective(trial, self.eng.graph.output, self.rows.C, -self.rows.d,
                                   alpha=alpha, beta=beta)
        if rows_lb is not None:
            lb = np.maximum(lb, np.repeat(rows_lb, 2 * k, axis=0))
        m = self.rows.margin(lb).reshape(B, k, 2)
        worse = np.where(ok, m.min(axis=2) + 1e-6 * m.max(axis=2), -np.inf)
        pick = cand[np.arange(B), worse.argmax(axis=1)]
        node = np.where(ok.any(axis=1), nodes[pick], -1)
        return node, entries[pick]

    def children(self, dom: Domains, node: np.ndarray, entry: np.ndarray,
                 refine: bool | None = None) -> Domains:
        """Two children per domain: the chosen ReLU active (first) and inactive (second)."""
        eng = self.eng
        two = dom.take(np.repeat(np.arange(dom.B), 2))
        sign = np.tile(np.array([1, -1], np.int8), dom.B)
        node2, entry2 = np.repeat(node, 2), np.repeat(entry, 2)
        for r in set(node.tolist()) - {-1}:
            sel = np.flatnonzero(node2 == r)
            ph = two.phase.setdefault(r, np.zeros((two.B, eng.nodes[r].size), np.int8))
            ph[sel, entry2[sel]] = sign[sel]
            j = eng.nodes[r].inputs[0]
            eng._set(two, j, two.lower[j], two.upper[j])        # clamps the new phases
            eng._set(two, r, *eng.interval_node(two, r))
        two.relax = {}
        if self.refine if refine is None else refine:
            first = min((r for r in set(node.tolist()) if r >= 0), default=None)
            if first is not None:
                eng.bound(two, start=first + 1)
        return two

    def bound(self, dom: Domains, deadline: float, start: dict | None = None):
        """Row lower bounds ``(B, k)``, the input coefficients of each row's bound (for points to
        try) and the slopes and multipliers found (float32, to warm-start the children)."""
        r = alpha_opt.optimise(self.eng, dom, self.rows.C, self.rows.d, steps=self.steps,
                               beta=True, deadline=deadline, start=start,
                               done=lambda lb: bool((self.rows.margin(lb) > 0).all()))
        alpha = {i: v for i, v in r.alpha.items() if not isinstance(i, tuple)}
        beta = {i[1]: v for i, v in r.alpha.items() if isinstance(i, tuple)} or None
        lb, coef = self.eng.objective(dom, self.eng.graph.output, self.rows.C, -self.rows.d,
                                      alpha=alpha, beta=beta)
        return np.maximum(r.lower, lb), coef, {i: v.astype(np.float32) for i, v in r.alpha.items()}

    @staticmethod
    def inherit(params: dict, idx: np.ndarray) -> dict:
        """The slopes and multipliers of domains ``idx`` (a parent's go to both children; a new
        split's multiplier starts at 0, which ``optimise`` fills in)."""
        return {i: v[idx].astype(np.float64) for i, v in params.items()}


def branch_and_bound(graph: Graph, prop: Property, k: int, root: Domains, eng: Engine,
                     deadline: float, *, rule: str = "relu", batch: int = 64, steps: int = 20,
                     refine: bool = False, fsb: int = 0, max_domains: int = 200_000,
                     leaf_relus: int = 4, leaf_time: float = 2.0, start: dict | None = None,
                     root_lower: np.ndarray | None = None) -> BabResult:
    """Decide case ``k`` of ``prop`` from ``root`` (one domain whose bounds ``eng`` computed,
    e.g. a ``bounds.Ladder``'s) by branch and bound until ``deadline`` (``perf_counter`` time).
    ``rule``: "relu".  ``batch``: domains split per round; ``steps``: slope/multiplier steps per
    round; ``refine``: recompute the children's intermediate bounds after the split (CROWN);
    ``max_domains``: open domains kept at most (memory), beyond which the answer is ``unknown``;
    ``start``: the root's slopes (e.g. ``Ladder.slopes``); ``root_lower``: known row bounds of the
    root (e.g. the ladder's margins).  ``leaf_relus``: a domain with at most this many free
    ReLUs left goes to the exact MILP (``exact.solve_domain``, at most ``leaf_time`` seconds),
    whose answer closes it, or ends the search with a replayed counterexample."""
    t0 = time.perf_counter()
    case = prop.cases[k]
    one = Property((case,), prop.n_inputs, prop.n_outputs)
    rows = _Rows(case)
    if rule != "relu":
        raise ValueError(f"unknown branching rule {rule!r}")
    br = ReluRule(eng, rows, steps, refine, fsb)
    stats = {"rule": br.name, "domains": 0, "rounds": 0, "max_depth": 0, "time_bound": 0.0,
             "time_branch": 0.0, "closed_empty": 0}
    lb, coef, params = br.bound(root, deadline, start)
    if root_lower is not None:
        lb = np.maximum(lb, root_lower)
    pool, prow, depth, tried = root, lb, np.zeros(1, np.int64), np.zeros(1, bool)
    plb = rows.margin(prow)
    proven = np.inf
    best_upper = np.inf
    def result(status, r=None):
        stats["time_s"] = round(time.perf_counter() - t0, 4)
        low = proven if status == "verified" else (float(min(plb.min(initial=np.inf), proven))
                                                   if status != "falsified" else None)
        up = r.margin if r is not None else (best_upper if np.isfinite(best_upper) else None)
        return BabResult(status, low, up, None if r is None else r.x32,
                         None if r is None else r.y32, stats)

    while True:
        done = plb > 0
        if done.any():
            proven = min(proven, float(plb[done].min()))
            keep = np.flatnonzero(~done)
            pool, prow, plb, depth = pool.take(keep), prow[keep], plb[keep], depth[keep]
            tried = tried[keep]
            params = {i: v[keep] for i, v in params.items()}
        if pool.B == 0:
            return result("verified")
        if time.perf_counter() > deadline:
            return result("timeout")
        if pool.B > max_domains:
            stats["message"] = f"more than {max_domains} open domains"
            return result("unknown")
        stats["rounds"] += 1
        # the domains with the lowest bounds first: they decide the answer
        order = np.argsort(plb, kind="stable")
        pick, rest = order[:batch], order[batch:]
        # small leaves go to the exact MILP (once each): its answer closes them, or is a
        # counterexample; an undecided one is split like the others
        free = _free_relus(eng, pool, br.relus)
        leaves = pick[(free[pick] <= leaf_relus) & ~tried[pick]]
        if leaves.size:
            t1 = time.perf_counter()
            solved = np.zeros(pool.B, bool)
            for b in leaves:
                if time.perf_counter() > deadline:
                    return result("timeout")
                ex = solve_domain(eng, pool.take([b]), case, prop.n_inputs, prop.n_outputs,
                                  min(leaf_time, deadline - time.perf_counter()))
                stats["leaf_milps"] = stats.get("leaf_milps", 0) + 1
                tried[b] = True
                if ex.status == "falsified":
                    return result("falsified", _Found(ex.upper, ex.x32, ex.y32))
                if ex.status == "verified":
                    solved[b] = True
                    proven = min(proven, ex.lower)
                elif free[b] == 0:                # no split left and the MILP did not decide
                    stats["message"] = "a domain with every ReLU phase fixed is not decided"
                    return result("unknown")
            stats["time_leaf"] = stats.get("time_leaf", 0.0) + time.perf_counter() - t1
            pick = pick[~solved[pick]]            # closed: they get no children
            if pick.size == 0:
                pool, prow, plb, depth, tried = (pool.take(rest), prow[rest], plb[rest],
                                                 depth[rest], tried[rest])
                params = {i: v[rest] for i, v in params.items()}
                continue
        cur = pool.take(pick)
        t1 = time.perf_counter()
        node, entry = br.score(cur, rows.deciding(prow[pick]), prow[pick],
                               br.inherit(params, pick))
        kids = br.children(cur, node, entry)
        stats["time_branch"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        klb, kcoef, kparams = br.bound(kids, deadline, br.inherit(params, np.repeat(pick, 2)))
        # a child is a part of its parent: the parent's bounds hold there too (without the
        # split's multiplier a child's own bound can be looser than its parent's)
        klb = np.maximum(klb, np.repeat(prow[pick], 2, axis=0))
        stats["time_bound"] += time.perf_counter() - t2
        stats["domains"] += kids.B
        kdepth = np.repeat(depth[pick] + 1, 2)
        stats["max_depth"] = max(stats["max_depth"], int(kdepth.max(initial=0)))
        hit, upper = _try_points(graph, one, rows, kids, klb, kcoef)
        best_upper = min(best_upper, upper)
        if hit is not None:
            return result("falsified", hit)
        m = rows.margin(klb)
        stats["closed_empty"] += int(np.isposinf(m).sum())
        pool = concat([pool.take(rest), kids]) if rest.size else kids
        params = _merge_params({i: v[rest] for i, v in params.items()}, kparams, rest.size,
                               kids.B)
        prow = np.concatenate([prow[rest], klb])
        plb = np.concatenate([plb[rest], m])
        depth = np.concatenate([depth[rest], kdepth])
        tried = np.concatenate([tried[rest], np.zeros(kids.B, bool)])


@dataclass
class _Found:
    """A replayed counterexample (what ``result`` needs of a replay result)."""
    margin: float
    x32: np.ndarray
    y32: np.ndarray


def _free_relus(eng: Engine, dom: Domains, relus: list) -> np.ndarray:
    """Per domain, the unstable ReLU entries whose phase is not fixed."""
    n = np.zeros(dom.B, np.int64)
    for r in relus:
        j = eng.nodes[r].inputs[0]
        free = (dom.lower[j] < 0) & (dom.upper[j] > 0)
        if r in dom.phase:
            free &= dom.phase[r] == 0
        n += free.sum(axis=1)
    return n


def _merge_params(a: dict, b: dict, na: int, nb: int) -> dict:
    """Stack two domains' parameter dicts; a key one side lacks (a multiplier of a node no domain
    there has split) is zero there."""
    out = {}
    for i in a.keys() | b.keys():
        ref = a.get(i, b.get(i))
        pa = a.get(i, np.zeros((na,) + ref.shape[1:], np.float32))
        pb = b.get(i, np.zeros((nb,) + ref.shape[1:], np.float32))
        out[i] = np.concatenate([pa, pb])
    return out


def _try_points(graph, prop, rows, dom, lb, coef):
    """Evaluate, per domain, the box corner minimising its deciding row's linear bound; replay the
    worst violation.  Returns (replay result or None, best margin seen)."""
    r = rows.deciding(lb)
    c = coef[np.arange(dom.B), r, :]
    lo, hi = dom.box
    pts = np.where(c > 0, lo, hi)
    y = graph.forward(pts).reshape(pts.shape[0], -1)
    margin = rows.margin(y @ rows.C.T - rows.d)
    i = int(margin.argmin())
    if margin[i] <= 0:
        res = replay(graph.model_bytes, pts[i], prop)
        if res.ok:
            return res, float(margin[i])
    return None, float(margin[i])
