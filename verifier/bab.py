"""Branch and bound over domains: one driver, the branching rules in ``branching``.

A pool (``pool.Pool``) holds the open domains of one case (``bounds.engine.Domains``: a box, a
phase per ReLU entry, bounds of every node) with a sound lower bound on the case margin for each.
Each round the ``batch`` open domains with the lowest bounds are split in two by the rule (ReLU
phases, or the input box), the children are bounded together by the engine, and children whose
margin lower bound is > 0 (or that are empty: an impossible combination of phases) are closed; the
rest go back to the pool.  A child is a part of its parent, so the parent's bounds hold for it too: a child is never
looser than its parent.  The case is verified when the pool is empty: the children of a domain
cover it, so the smallest bound of the closed leaves bounds the whole case.

Small leaves (at most ``leaf_relus`` free unstable ReLUs) go to the exact MILP once
(``exact.solve_domain``): its answer closes them, or is a counterexample.  Counterexamples: the
input that minimises each child's linear bound is evaluated (and each box's centre); a violating
point goes to the onnxruntime replay, and only a replayed point ends the search with
``falsified``.  Every ``attack_every`` seconds a short PGD runs inside the boxes of the
``attack_domains`` open domains with the lowest bounds (input rule: their own boxes, where a
counterexample hides if there is one; ReLU rule: the case box, from fresh starts, at gaps growing
by half each time), its points replayed the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .attack import falsify
from .bounds.engine import Domains, Engine
from .branching import InputRule, ReluRule, Rows
from .exact import solve_domain
from .graph import Graph
from .pool import Pool
from .replay import replay
from .spec import Box, Case, Property, conjunction_max


@dataclass
class BabResult:
    status: str                   # verified | falsified | unknown | timeout
    margin_lower: float | None    # sound, when verified: the smallest bound of the closed leaves
    margin_upper: float | None    # the best margin seen at a point (not a proof)
    x32: np.ndarray | None = None
    y32: np.ndarray | None = None
    stats: dict = field(default_factory=dict)
    pool: object = None           # the open domains when undecided (to resume the search)
    proven: float = np.inf        # the smallest bound of the leaves closed so far
    parts: dict | None = None     # per_conjunction: conjunction -> its own search's result


def branch_and_bound(graph: Graph, prop: Property, k: int, root: Domains, eng: Engine,
                     deadline: float, *, rule: str = "relu", batch: int | None = None,
                     steps: int = 20, refine: bool = False, fsb: int = 0, top: int = 1,
                     max_domains: int = 200_000, pool_bytes: float = np.inf,
                     leaf_relus: int = 4, leaf_time: float = 2.0,
                     start: dict | None = None, root_lower: np.ndarray | None = None,
                     alpha_steps: int = 0, beta: bool = True, attack_every: float = 1.0,
                     attack_domains: int = 8, attack_time: float = 0.1,
                     resume: BabResult | None = None) -> BabResult:
    """Decide case ``k`` of ``prop`` from ``root`` (one domain whose bounds ``eng`` computed,
    e.g. a ``bounds.Ladder``'s) by branch and bound until ``deadline`` (``perf_counter`` time).

    ``rule``: "relu" (ReLU phases; ``steps`` slope/multiplier steps per round, ``refine``
    recompute the children's intermediate bounds, ``fsb`` filtered strong branching among that
    many candidates, ``beta=False`` no split multipliers) or "input" (the input box; ``top``
    inputs looked ahead, ``alpha_steps`` slope steps for the open children's intermediate
    bounds and rows).  ``batch``: domains split per round (default 64 for relu, 512 for
    input).  ``max_domains``: open domains kept at most (memory), beyond which the answer is
    ``unknown``; ``pool_bytes``: while the open domains hold more bytes than this, each round
    splits the open domains with the highest bounds (closest to closing: the pool shrinks) instead
    of the lowest.  How a domain is split and bounded does not depend on when (up to the rounding
    of batched products), so the tree searched and the answer are the same; the order, and with it
    the memory, differ.  ``start``: the root's slopes (e.g. ``Ladder.slopes``); ``root_lower``:
    known row bounds of the root (e.g. the ladder's margins).  ``leaf_relus``, ``leaf_time``:
    leaves for the exact MILP; ``attack_every``, ``attack_domains``, ``attack_time``: PGD in the worst open
    domains (see the module docstring; ``attack_every=inf`` turns it off).  ``resume``: an
    undecided result of an earlier search of the same case and rule, whose open domains go on
    from where they were, their node bounds intersected with ``root``'s (which may have been
    tightened since: they hold in every part of the root)."""
    t0 = time.perf_counter()
    case = prop.cases[k]
    one = Property((case,), prop.n_inputs, prop.n_outputs)
    if rule == "relu":
        rows = Rows(case)
        br = ReluRule(eng, rows, steps, refine, fsb, beta)
        batch = 64 if batch is None else batch
    elif rule == "input":
        rows = Rows(case, sums=True)
        br = InputRule(eng, rows, case.box.upper - case.box.lower, top, alpha_steps)
        batch = 512 if batch is None else batch
    else:
        raise ValueError(f"unknown branching rule {rule!r}")
    # domains bounded by this call: a resumed search does not bound its root again
    resuming = resume is not None and resume.pool is not None
    stats = {"rule": br.name, "domains": 0 if resuming else 1, "rounds": 0, "max_depth": 0,
             "time_bound": 0.0, "time_branch": 0.0}
    if rule == "relu":
        stats["steps"] = steps
    proven = np.inf
    best_upper = np.inf

    def result(status, r=None):
        stats["time_s"] = round(time.perf_counter() - t0, 4)
        low = proven if status == "verified" else (float(min(open_margins()[1].min(initial=np.inf),
                                                             proven))
                                                   if status != "falsified" else None)
        up = r.margin if r is not None else (best_upper if np.isfinite(best_upper) else None)
        return BabResult(status, low, up, None if r is None else r.x32,
                         None if r is None else r.y32, stats,
                         pool if status in ("timeout", "unknown") else None, proven)

    def open_margins():
        ids = pool.ids()
        return ids, rows.margin(pool.rows[ids])

    if resuming:
        pool, proven = resume.pool, resume.proven
        best_upper = resume.margin_upper if resume.margin_upper is not None else np.inf
        _tighten(eng, pool.dom, root)
    else:
        lb, coef, params = br.bound(root, deadline, start if rule == "relu" else None)
        if root_lower is not None and root_lower.shape[-1] == lb.shape[1]:
            lb = np.maximum(lb, root_lower)
        # ReLU splits keep the root's float slack (only ``refine`` recomputes it); ReLU outputs
        # that only interval arithmetic bounds are made from their inputs when taken out
        derived = {r: eng.nodes[r] for r in br.relus if r not in eng.needed}
        pool = Pool(root, lb, coef[np.arange(1), rows.deciding(lb)] if br.needs_coef else None,
                    params, capacity=4 * batch, shared_slack=rule == "relu" and not refine,
                    derived=derived)
        hit, upper = _try_points(graph, one, rows, root, lb, coef)
        best_upper = min(best_upper, upper)
        if hit is not None:
            return result("falsified", hit)
    # the ReLU rule's PGD restarts from fresh points of the same case box each time, so the gaps
    # between its runs grow by half (12 runs in the first 100 s instead of 250: ~8 of 120 s on
    # oval21 went to them); the input rule's go into the boxes left open, which change
    gap, grow = attack_every, (1.5 if rule == "relu" else 1.0)
    next_attack = time.perf_counter() + gap
    while True:
        ids, m = open_margins()
        done = m > 0
        if done.any():
            proven = min(proven, float(m[done].min()))
            pool.remove(ids[done])
            ids, m = ids[~done], m[~done]
        if ids.size == 0:
            return result("verified")
        if time.perf_counter() > deadline:
            return result("timeout")
        if ids.size > max_domains:
            stats["message"] = f"more than {max_domains} open domains"
            return result("unknown")
        stats["rounds"] += 1
        # the domains with the lowest bounds first: they decide the answer (and the worst open
        # bound at a timeout); over the memory cap the highest first, whose children close
        order = ids[np.argsort(m, kind="stable")]
        held = pool.nbytes()
        stats["pool_peak_bytes"] = max(stats.get("pool_peak_bytes", 0), held)
        if held > pool_bytes:
            pick = order[-batch:]
            stats["rounds_over_memory"] = stats.get("rounds_over_memory", 0) + 1
        else:
            pick = order[:batch]
        if time.perf_counter() >= next_attack:
            t1 = time.perf_counter()
            worst = order[:attack_domains]
            lo, hi = pool.dom.box
            boxes = list(zip(lo[worst], hi[worst])) if rule == "input" else None
            hit, upper = _attack_domains(graph, one, boxes, stats["rounds"],
                                         min(attack_time, deadline - t1))
            best_upper = min(best_upper, upper)
            stats["attacks"] = stats.get("attacks", 0) + 1
            stats["time_attack"] = stats.get("time_attack", 0.0) + time.perf_counter() - t1
            if hit is not None:
                stats["found_by"] = "attack"
                return result("falsified", hit)
            gap *= grow
            next_attack = time.perf_counter() + gap
        t1 = time.perf_counter()
        cur = pool.take(pick)
        stats["time_pool"] = stats.get("time_pool", 0.0) + time.perf_counter() - t1
        # small leaves go to the exact MILP (once each): its answer closes them, or is a
        # counterexample; an undecided one is split like the others
        leaf = (br.free(cur) <= leaf_relus) & ~pool.tried[pick]
        if leaf.any():
            t1 = time.perf_counter()
            solved = []
            for b in np.flatnonzero(leaf):
                if time.perf_counter() > deadline:
                    return result("timeout")
                ex = solve_domain(eng, cur.take([b]), case, prop.n_inputs, prop.n_outputs,
                                  min(leaf_time, deadline - time.perf_counter()))
                stats["leaf_milps"] = stats.get("leaf_milps", 0) + 1
                pool.tried[pick[b]] = True
                if ex.status == "falsified":
                    return result("falsified", _Found(ex.upper, ex.x32, ex.y32))
                if ex.status == "verified":
                    stats["leaf_closed"] = stats.get("leaf_closed", 0) + 1
                    solved.append(pick[b])
                    proven = min(proven, ex.lower)
            stats["time_leaf"] = stats.get("time_leaf", 0.0) + time.perf_counter() - t1
            if solved:
                pool.remove(solved)
                continue
        t1 = time.perf_counter()
        kids, stuck = br.branch(cur, pool.rows[pick], None if pool.coef is None else
                                pool.coef[pick], br.inherit(pool.params, pick) or None)
        if stuck.any():
            stats["message"] = ("a domain with every ReLU phase fixed is not decided"
                                if rule == "relu" else "a box too small to halve is not decided")
            return result("unknown")
        stats["time_branch"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        parents = np.repeat(pick, 2)
        klb, kcoef, kparams = br.bound(kids, deadline, br.inherit(pool.params, parents) or None)
        # a child is a part of its parent: the parent's bounds hold there too (without the
        # split's multiplier a ReLU child's own bound can be looser than its parent's)
        if rule == "relu":
            klb = np.maximum(klb, pool.rows[parents])
        stats["time_bound"] += time.perf_counter() - t2
        stats["domains"] += kids.B
        kdepth = pool.depth[parents] + 1
        stats["max_depth"] = max(stats["max_depth"], int(kdepth.max(initial=0)))
        hit, upper = _try_points(graph, one, rows, kids, klb, kcoef)
        best_upper = min(best_upper, upper)
        if hit is not None:
            return result("falsified", hit)
        kc = kcoef[np.arange(kids.B), rows.deciding(klb)] if br.needs_coef else None
        t1 = time.perf_counter()
        pool.remove(pick)
        pool.add(kids, klb, kc, kparams, kdepth)
        stats["time_pool"] += time.perf_counter() - t1


def per_conjunction(graph: Graph, prop: Property, k: int, root: Domains, eng: Engine,
                    deadline: float, *, start: dict | None = None,
                    root_lower: np.ndarray | None = None, resume: BabResult | None = None,
                    **kw) -> BabResult:
    """ReLU branch and bound on case ``k`` as one search per conjunction of its unsafe region
    that ``root_lower`` (the root's ``(1, rows)`` bounds) does not prove, as alpha,beta-CROWN
    searches per property row.  A domain of one conjunction's search bounds that conjunction's
    rows only, so it costs a fraction of a domain bounding all of them, and its splits serve that
    conjunction alone (mnist_fc 256x4 prop_11 at eps 0.05, 9 one-row conjunctions: 39 s for all
    nine searches, against a timeout at 60 s for one search of the whole case).  The case is
    verified when every conjunction is; a counterexample of one conjunction is one of the case.
    Conjunctions go closest to a proof first (the quick ones do not wait behind a hard one), each
    until ``deadline``.  ``start``: the root's slopes for all rows of the case (sliced per
    conjunction); ``resume``: an undecided result of this function, whose unfinished searches go
    on (their open domains intersected with ``root``'s bounds) and whose finished ones stand.
    Other keywords go to ``branch_and_bound``."""
    t0 = time.perf_counter()
    case = prop.cases[k]
    _, _, owner = case.stacked()
    n = len(case.unsafe)
    lower = (np.full(n, -np.inf) if root_lower is None
             else conjunction_max(root_lower, owner, n).reshape(-1))
    done = dict(resume.parts) if resume is not None and resume.parts is not None else {}
    order = [j for j in np.argsort(-lower, kind="stable").tolist() if lower[j] <= 0]
    stats: dict = {"rule": "relu", "conjunctions": []}
    best_upper, hit, ran = np.inf, None, []
    if resume is not None and resume.margin_upper is not None:
        best_upper = resume.margin_upper
    for j in order:
        prev = done.get(j)
        if prev is not None and prev.status == "verified":
            continue
        if prev is None and time.perf_counter() > deadline:
            break
        rows = owner == j
        one = Property((Case(case.box, (case.unsafe[j],)),), prop.n_inputs, prop.n_outputs)
        r = branch_and_bound(graph, one, 0, root, eng, deadline, rule="relu",
                             start=None if start is None else {i: v[:, rows]
                                                               for i, v in start.items()},
                             root_lower=None if root_lower is None else root_lower[:, rows],
                             resume=prev, **kw)
        done[j] = r
        ran.append((j, r))
        if r.margin_upper is not None:
            best_upper = min(best_upper, r.margin_upper)
        if r.status == "falsified":
            hit = r
            break
        if r.status != "verified":
            break                     # its deadline has passed, or it cannot be decided
    for j, r in ran:                  # totals over the searches run here (depth, steps: the max)
        stats["conjunctions"].append({"conjunction": j, "status": r.status,
                                      **{key: r.stats.get(key) for key in
                                         ("domains", "rounds", "max_depth", "time_s")}})
        for key, v in r.stats.items():
            if key in ("max_depth", "steps", "pool_peak_bytes"):
                stats[key] = max(stats.get(key, 0), v)
            elif isinstance(v, (int, float)) and key != "time_s":
                stats[key] = stats.get(key, 0) + v
            elif isinstance(v, str) and key != "rule":
                stats[key] = v
    stats["time_s"] = round(time.perf_counter() - t0, 4)
    up = None if not np.isfinite(best_upper) else float(best_upper)
    if hit is not None:
        return BabResult("falsified", None, hit.margin_upper, hit.x32, hit.y32, stats)
    # per conjunction: its proof, or the smallest bound of its search's open leaves, or the root
    low = lower.copy()
    for j, r in done.items():
        if r.margin_lower is not None:
            low[j] = max(low[j], r.margin_lower)
    if all(j in done and done[j].status == "verified" for j in order):
        return BabResult("verified", float(low.min()), up, stats=stats, parts=done)
    open_ = [done[j] for j in order if j in done and done[j].status != "verified"]
    status = open_[0].status if open_ and open_[0].status == "unknown" else "timeout"
    return BabResult(status, float(low.min()), up, stats=stats, parts=done)


def _tighten(eng: Engine, dom: Domains, root: Domains) -> None:
    """Intersect every domain's node bounds with the root's (one domain, valid in all of them)."""
    for i in range(1, len(root.lower)):
        if root.lower[i] is not None and dom.lower[i] is not None:
            eng._set(dom, i, np.broadcast_to(root.lower[i], dom.lower[i].shape),
                     np.broadcast_to(root.upper[i], dom.upper[i].shape))
    dom.relax = {}


@dataclass
class _Found:
    """A replayed counterexample (what ``result`` needs of a replay result)."""
    margin: float
    x32: np.ndarray
    y32: np.ndarray


def _attack_domains(graph, prop, boxes, seed, budget):
    """Short PGD in ``boxes`` (``(lower, upper)`` pairs: the input rule's open boxes), or in the
    case box (``None``: ReLU domains, whose phases PGD cannot keep): (replay result or None, best
    float64 margin seen)."""
    case = prop.cases[0]
    cases = (case,) if boxes is None else tuple(Case(Box(lo, hi), case.unsafe)
                                                for lo, hi in boxes)
    found = falsify(graph, graph.model_bytes, Property(cases, prop.n_inputs, prop.n_outputs),
                    time_budget=max(budget, 0.0), seed=seed, restarts=8, steps=30,
                    use_fgsm=False)
    if found.found:
        m = float(case.margin(found.y32))
        return _Found(m, found.x32, found.y32), m
    return None, float(found.attack.margin_best)


def _try_points(graph, prop, rows, dom, lb, coef):
    """Evaluate, per domain, the box corner minimising its deciding row's linear bound, and the
    box centre; replay the worst violation.  Returns (replay result or None, best margin seen)."""
    r = rows.deciding(lb)
    c = coef[np.arange(dom.B), r, :]
    lo, hi = dom.box
    centre = 0.5 * (lo + hi)
    if (lo == lo[:1]).all() and (hi == hi[:1]).all():
        centre = centre[:1]           # ReLU domains share the case box: one centre for all
    pts = np.concatenate([np.where(c > 0, lo, hi), centre])
    y = graph.forward(pts).reshape(pts.shape[0], -1)
    margin = rows.margin(y @ rows.C.T - rows.d)
    i = int(margin.argmin())
    if margin[i] <= 0:
        res = replay(graph.model_bytes, pts[i], prop)
        if res.ok:
            return res, float(margin[i])
    return None, float(margin[i])
