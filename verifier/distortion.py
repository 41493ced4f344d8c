"""Minimal adversarial distortion (MIPVerify's ``closest``): the smallest L-inf or L1 distance from
``x`` to an input (inside the domain) whose output lies in the unsafe region.

Model: the exact network MILP over the box ``B = [x - max_eps, x + max_eps] ∩ domain`` (bounds for
the big-M constants come from that box; sound because every point we look for lies in it), the
margin expression of the unsafe region constrained to ``<= 0`` (a disjunction over conjunctions uses
selection binaries, see ``encode.disjunction_objective``), and the objective

- L-inf: a column ``e`` with ``x0_i - e <= x_i <= x0_i + e``; minimise ``e``;
- L1: columns ``d_i >= |x_i - x0_i|`` (two rows each); minimise ``sum d_i``.

Guarantees: ``distortion_lower`` = the MILP dual bound minus a tolerance margin (solver slack only
enlarges the feasible set, which lowers the dual bound, the safe side); no input closer than
``distortion_lower`` reaches the unsafe region, and "none" means no point of ``B`` does (up to the
solver's tolerances).  With ``method="bisect"`` (the default for L-inf) the MILP is replaced by a
bisection on eps, each ball decided by ``solvers.solve_case`` with bounds recomputed on that ball:
``distortion_lower`` is the largest verified radius.

``distortion_upper`` is the exact distance of ``x_adv`` (recomputed here), an input the solver (or
the attack) claims is unsafe; its float64 forward margin is ``margin_adv`` (it can be slightly
positive, within 1e-6, when the optimum sits on the decision boundary): replay it before calling
it a counterexample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .encode import _Builder, _extend, disjunction_objective, encode_network, start_vector
from .solvers import solve_model


@dataclass
class DistortionResult:
    """``status``: "found" (gap target met), "found_gap" (stopped above the gap target, not by
    time), "timeout", "none" (nothing unsafe within ``max_eps``: ``distortion_lower = max_eps``),
    "unknown" / "error" (nothing proved beyond ``distortion_lower``)."""
    status: str
    distortion_lower: float     # sound
    distortion_upper: float     # distance of x_adv, or inf
    x_adv: np.ndarray | None
    norm: str
    margin_adv: float | None = None
    stats: dict = field(default_factory=dict)


def _constrain_margin(model):
    """Turn the model's objective (a margin expression) into the row ``margin <= 0``."""
    b = _Builder(model.n_cols)
    nz = np.flatnonzero(model.c)
    b.rows(1, [(np.zeros(nz.size, np.int64), nz, 0, model.c[nz])], -np.inf, -model.offset)
    return b


def _distortion_model(graph, bounds, box, conjs, x0, norm):
    net = encode_network(graph, bounds, box)
    lo, up = (bounds.lower, bounds.upper) if hasattr(bounds, "lower") else bounds
    out = graph.output
    m = disjunction_objective(net, conjs, lo[out], up[out], node=out)
    b = _constrain_margin(m)
    ic = m.vars[0].cols
    n = ic.size
    r = np.arange(n)
    reach = np.maximum(x0 - m.lb[ic], m.ub[ic] - x0)            # largest |x_i - x0_i| in B
    if norm == "inf":
        e = b.cols([0.0], [float(reach.max(initial=0.0))])[0]
        # x_i + e >= x0_i ; x_i - e <= x0_i
        b.rows(2 * n, [(r, ic, 0, 1.0), (r, e, 0, 1.0), (r + n, ic, 0, 1.0), (r + n, e, 0, -1.0)],
               np.concatenate([x0, np.full(n, -np.inf)]), np.concatenate([np.full(n, np.inf), x0]))
        obj_cols = np.array([e])
    elif norm == "1":
        dcol = b.cols(np.zeros(n), reach)
        # d_i - x_i >= -x0_i ; d_i + x_i >= x0_i
        b.rows(2 * n, [(r, dcol, 0, 1.0), (r, ic, 0, -1.0), (r + n, dcol, 0, 1.0),
                       (r + n, ic, 0, 1.0)], np.concatenate([-x0, x0]), np.inf)
        obj_cols = dcol
    else:
        raise ValueError(f"norm must be 'inf' or '1' (L2 needs MIQP, which HiGHS lacks), "
                         f"not {norm!r}")
    c = np.zeros(b.n_cols)
    c[obj_cols] = 1.0
    model = _extend(m, b, c, 0.0, scale=1.0, extra={"distortion": obj_cols})
    return model


def _distance(x, x0, norm):
    d = np.abs(np.asarray(x, np.float64) - x0)
    return float(d.max(initial=0.0) if norm == "inf" else d.sum())


def min_distortion(graph, x, label: int | None = None, *, unsafe=None, target: int | None = None,
                   norm: str = "inf", domain=(0.0, 1.0), max_eps: float | None = None,
                   bounds=None, bound_level: str = "symbolic", time_limit: float = 60.0,
                   gap: float = 1e-3, start=None, mode: str = "separate", threads: int = 1,
                   tol: float = 1e-6, method: str = "auto",
                   attack_budget: float = 1.0) -> DistortionResult:
    """Smallest distortion (see the module docstring).  The unsafe region is ``unsafe`` (a tuple of
    Conjunctions) or, from ``label`` (and ``target``), "some other class (or ``target``) scores
    at least as high as ``label``".  ``max_eps`` limits the search box (default: the whole
    domain; for L1 it is the L-inf box the L1 ball sits in).  ``bounds``: sound bounds on that box,
    computed at ``bound_level`` when not given.  ``mode``: "separate" (one MILP per conjunction,
    the best distance so far as a cutoff for the next; the default: the constraint ``C y <= d``
    then has its full LP strength) or "joint" (one MILP; its disjunction relaxes to nothing, the
    root bound is 0).  ``gap``: relative gap target.
    ``method``: "auto" (bisect for L-inf, milp for L1; measured on mnist_fc 256x2 within 60 s:
    the milp's root bound stays 0 with bounds over a 0.1 box, bisection brackets to 1e-3),
    "milp" (the model above, bounds over the whole search box) or "bisect" (L-inf only:
    bisection on eps with ``solve_case`` on each ball, bounds recomputed per ball; each
    "verified" ball proves ``distortion > eps``, each candidate gives an upper bound; a PGD attack
    of up to ``attack_budget`` seconds runs first on each ball, and seeds the MIP start)."""
    from .spec import Box, robustness_property
    t0 = time.perf_counter()
    x0 = np.asarray(x, np.float64).ravel()
    dom_lo = np.broadcast_to(np.asarray(domain[0], np.float64).ravel(), x0.shape)
    dom_hi = np.broadcast_to(np.asarray(domain[1], np.float64).ravel(), x0.shape)
    radius = float(np.max(np.maximum(x0 - dom_lo, dom_hi - x0))) if max_eps is None else max_eps
    if unsafe is None:
        prop = robustness_property(x0, label, radius, (dom_lo, dom_hi),
                                   n_outputs=graph.n_outputs, target=target)
        box, unsafe = prop.cases[0].box, prop.cases[0].unsafe
    else:
        box = Box(np.clip(x0 - radius, dom_lo, dom_hi), np.clip(x0 + radius, dom_lo, dom_hi))
    if method == "auto":
        method = "bisect" if norm == "inf" else "milp"
    if method == "bisect":
        if norm != "inf":
            raise ValueError("bisection needs L-inf balls (boxes); use method='milp' for L1")
        return _bisect(graph, x0, tuple(unsafe), dom_lo, dom_hi, radius, bound_level,
                       time_limit, gap, start, threads, t0, attack_budget)
    if method != "milp":
        raise ValueError(f"method must be 'milp' or 'bisect', not {method!r}")
    if bounds is None:
        from .bounds import compute_bounds
        bounds = compute_bounds(graph, box, level=bound_level, arithmetic="real")
    t_b = time.perf_counter() - t0
    y0 = graph.forward(x0)
    # closest conjunction first (smallest margin at x0): its distance becomes the others' cutoff
    groups = [tuple(unsafe)] if mode == "joint" else \
        [(c,) for c in sorted(unsafe, key=lambda c: c.margin(y0))]
    lows, best, stats = [], None, {"time_bounds": t_b, "time_encode": 0.0, "time_solve": 0.0,
                                   "nodes": 0, "solver_status": []}
    timed_out = False
    for gi, g in enumerate(groups):
        t1 = time.perf_counter()
        model = _distortion_model(graph, bounds, box, g, x0, norm)
        z0 = None
        if start is not None:
            z0 = start_vector(model, graph, start)
            dc = model.extra["distortion"]
            xs = model.input_of(z0)
            z0[dc] = np.abs(xs - x0).max(initial=0.0) if norm == "inf" else np.abs(xs - x0)
        stats["time_encode"] += time.perf_counter() - t1
        stats.update({k: stats.get(k, 0) + v for k, v in model.stats().items()})
        remaining = time_limit - (time.perf_counter() - t0)
        if remaining <= 0:
            timed_out = True
            lows.append(0.0)
            continue
        share = remaining / (len(groups) - gi)       # fair share; unused time flows on
        # the best distance so far is a cutoff: a target that cannot beat it is pruned fast, and
        # its lower bound (>= the cutoff >= the true minimum) cannot lower the overall minimum
        cutoff = best[0] if best is not None else None
        r = solve_model(model, time_limit=share, start=z0, mip_rel_gap=gap, cutoff=cutoff,
                        mip_abs_gap=min(1e-6, gap), threads=threads)
        stats["time_solve"] += r.time_s
        stats["nodes"] += r.nodes
        stats["solver_status"].append(r.status)
        timed_out |= r.status == "time_limit"
        if r.status == "infeasible":
            lows.append(np.inf)                    # nothing unsafe in the box for this group
        elif r.status in ("optimal", "cutoff", "time_limit", "interrupted"):
            lows.append(max(0.0, r.dual_bound - tol))
        else:
            lows.append(0.0)
        if r.x is not None:
            xa = np.clip(model.input_of(r.x), box.lower, box.upper)   # solver slack 1e-7
            dist = _distance(xa, x0, norm)
            if best is None or dist < best[0]:
                best = (dist, xa)
    lower = float(min(lows))
    stats["time_total"] = time.perf_counter() - t0
    if best is None:
        if np.isinf(lower):
            return DistortionResult("none", radius, np.inf, None, norm, None, stats)
        return DistortionResult("timeout" if timed_out else "error", lower, np.inf, None, norm,
                                None, stats)
    y = graph.forward(best[1])
    margin = float(min(c.margin(y) for c in unsafe))
    upper = best[0]
    lower = min(lower, upper)
    ok = upper - lower <= gap * upper + tol
    return DistortionResult("found" if ok else ("timeout" if timed_out else "found_gap"), lower,
                            upper, best[1], norm, margin, stats)


def _bisect(graph, x0, unsafe, dom_lo, dom_hi, radius, bound_level, time_limit, gap, start,
            threads, t0, attack_budget) -> DistortionResult:
    """Bisection on the L-inf radius; see ``min_distortion``."""
    from .bounds import compute_bounds
    from .solvers import CaseResult, conjunction_lower, solve_case
    from .spec import Box, Case
    C = np.vstack([np.atleast_2d(c.C) for c in unsafe])
    d = np.concatenate([np.ravel(c.d) for c in unsafe])
    lo, hi, probe, best = 0.0, np.inf, radius, None
    stats = {"steps": [], "time_bounds": 0.0, "time_solve": 0.0}
    timed_out = False
    eps = radius                                   # first: is there anything in the search box?
    while True:
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            timed_out = True
            break
        top = min(hi, probe)
        steps = 1 + max(0, int(np.ceil(np.log2(max(top - lo, 1e-300) / max(gap * top, 1e-12)))))
        box = Box(np.clip(x0 - eps, dom_lo, dom_hi), np.clip(x0 + eps, dom_lo, dom_hi))
        t1 = time.perf_counter()
        b = compute_bounds(graph, box, level=bound_level, C=C, d=d, arithmetic="real")
        stats["time_bounds"] += time.perf_counter() - t1
        case = Case(box, unsafe)
        sx = best[1] if best is not None else start
        r = None
        if attack_budget > 0 and not (b.margin_lower is not None and np.all(
                conjunction_lower(unsafe, b.margin_lower) > 0)):
            # a cheap PGD first: counterexamples at large eps are easy to find, hard to prove
            from .attack import attack
            from .spec import Property
            a = attack(graph, Property((case,), x0.size, graph.n_outputs),
                       time_budget=min(attack_budget, left / 4))
            if a.found:
                r = CaseResult("candidate", -np.inf, a.margin_best, a.x_best, {})
            elif a.x_best is not None:
                sx = a.x_best
        if r is None:
            r = solve_case(graph, b, case, time_limit=max(left / steps, 0.05),
                           start=sx, margin_lower=b.margin_lower, threads=threads)
        stats["time_solve"] += r.stats.get("time_total", 0.0)
        stats["steps"].append((eps, r.status))
        if r.status == "verified":
            lo = eps
            if eps >= radius:
                return DistortionResult("none", radius, np.inf, None, "inf", None, stats)
        elif r.status == "candidate":
            dist = _distance(r.x_candidate, x0, "inf")
            if best is None or dist < best[0]:
                best = (dist, r.x_candidate)
            hi = min(hi, dist)
        else:
            timed_out |= r.status == "timeout"
            probe = eps                            # undecided: look closer to lo
        top = min(hi, probe)
        if top - lo <= gap * top + 1e-12:
            break
        eps = (lo + top) / 2
    stats["time_total"] = time.perf_counter() - t0
    if best is None:
        return DistortionResult("timeout" if timed_out else "unknown", lo, np.inf, None, "inf",
                                None, stats)
    margin = float(min(c.margin(graph.forward(best[1])) for c in unsafe))
    ok = best[0] - lo <= gap * best[0] + 1e-12
    return DistortionResult("found" if ok else ("timeout" if timed_out else "found_gap"), lo,
                            best[0], best[1], "inf", margin, stats)
