"""Decide one Case with the MILP: turn solver claims into sound answers.

Soundness of ``solve_case`` (the argument, in short):

- The MILP's optimum is the exact worst-case margin on the box (``verifier.encode``), given sound
  bounds.  HiGHS's dual bound is a lower bound on that optimum *up to its tolerances* (primal and
  dual feasibility 1e-7, integrality 1e-6).  Integrality / feasibility slack only enlarges the
  feasible set, so it can only *lower* the dual bound (safe side); the unsafe side is inexact LP
  duals and cuts, bounded by about the dual tolerance times the magnitudes involved.  We therefore
  trust ``dual_bound - tau`` with ``tau = max(1e-5, 1e-6 * scale)``, where ``scale`` is the size of
  the objective's terms (``|C| max(|l|,|u|) + |d|`` over the output bounds).
- With a cutoff (HiGHS ``objective_bound``) we search only below ``2 tau``; status "cutoff" then
  proves ``margin >= 2 tau`` up to tolerances, i.e. a sound ``margin_lower = tau > 0``.
- Conjunctions dropped before solving have a margin lower bound > 0 from the output bounds, with
  the dot products' rounding error subtracted (``fp.affine_interval``).
- With sigmoid or tanh nodes (``Node.outer``) the MILP is a linear outer approximation: its
  optimum is a lower bound on the worst-case margin, so it still proves; its points are no
  network evaluations, so an incumbent's margin is its input's float64 forward margin.
- "candidate" only reports the solver's incumbent (input columns and claimed margin <= 0); it is a
  counterexample only after ``verifier.replay`` re-runs it in onnxruntime.  Never "falsified" here.
- LP objective values are not proofs: ``lp_dual_bound`` rebuilds the LP bound from the row duals
  (weak duality over the column box) with the rounding error subtracted.
"""
from __future__ import annotations

import time

import numpy as np

from ..encode import (disjunction_objective, encode_network, prune_conjunctions, start_vector,
                      violation, _as_bounds)
from .highs import MIP_TOL, PRIMAL_TOL      # HiGHS's feasibility tolerances, set for every solve
from .result import CaseResult, SolveResult


def solve_model(model, backend: str = "highs", **kw) -> SolveResult:
    """Minimise ``model`` with the chosen back end ("highs", or "cbc"/"pulp" for the pulp one)."""
    if backend == "highs":
        from . import highs
        return highs.solve(model, **kw)
    if backend in ("cbc", "pulp"):
        from . import pulp_backend
        return pulp_backend.solve(model, **kw)
    raise ValueError(f"unknown solver back end {backend!r}")


# Beyond these magnitudes HiGHS's MIP answers were measured to be wrong (the soundness suite's
# nets with weights of 1e11 and more: "cutoff" with a counterexample of margin -8.8), and entries
# below HiGHS's small_matrix_value (1e-12) are dropped from the model: such a model proves nothing
MAX_ENTRY = 1e8
MIN_ENTRY = 1e-10


def unsafe_numbers(model) -> str | None:
    """Why ``model``'s numbers are outside the range the MILP's answers can be trusted in, or
    None: every matrix entry and finite bound at most ``MAX_ENTRY`` in magnitude, every nonzero
    entry at least ``MIN_ENTRY``."""
    v = np.abs(model.A.data)
    v = v[v > 0]
    if v.size and v.max() > MAX_ENTRY:
        return f"a constraint coefficient of {v.max():.3g} (above {MAX_ENTRY:g})"
    if v.size and v.min() < MIN_ENTRY:
        return f"a constraint coefficient of {v.min():.3g} (below {MIN_ENTRY:g})"
    for what, arr in (("column bound", np.concatenate([model.lb, model.ub])),
                      ("row bound", np.concatenate([model.rl, model.ru]))):
        a = np.abs(arr[np.isfinite(arr)])
        if a.size and a.max() > MAX_ENTRY:
            return f"a {what} of {a.max():.3g} (above {MAX_ENTRY:g})"
    return None


def tolerance(model, tol: float | None = None) -> float:
    """The slack ``tau`` a solver bound must clear to count (see the module docstring)."""
    return float(tol) if tol is not None else mip_tolerance(float(model.scale))




def encoding_slack(graph, lower: list, upper: list, rows) -> float:
    """How far below the true minimum of any row of ``C y - d`` (``rows``: the stacked ``C``) a
    MILP optimum can sit when HiGHS keeps only to its tolerances: each Linear row off by
    ``PRIMAL_TOL (1 + |A| m + |b|)``, each unstable ReLU's binary off 0/1 by ``MIP_TOL``, which
    lets its big-M rows move the neuron by ``MIP_TOL max(|l|, |u|)`` (max-pool windows likewise by
    ``MIP_TOL`` times their big-M); the deviations pass through ``|A|`` to the output.  Tiny for
    ordinary nets (about 1e-7 on mnist_fc), large where big-M constants are huge (weights of
    1e11 and more, where HiGHS's answers were measured to be wrong): then nothing is proved."""
    e = encoding_deviation(graph, lower, upper)
    C = np.atleast_2d(np.asarray(rows, np.float64))
    return float((np.abs(C) @ e[graph.output]).max(initial=0.0) * 1.01)


def encoding_deviation(graph, lower: list, upper: list, upto: int | None = None) -> list:
    """Per node up to ``upto`` (default: all), how far (entry by entry) the MILP's value of it can
    sit from the network's when HiGHS keeps only to its tolerances (see ``encoding_slack``, which
    charges the output's)."""
    from ..fp import absmax
    nodes = graph.nodes
    e = [np.full(nodes[0].size, PRIMAL_TOL * (1.0 + absmax(lower[0], upper[0])))]
    for i in range(1, len(nodes) if upto is None else upto + 1):
        n = nodes[i]
        m = absmax(lower[i], upper[i])
        if n.affine:
            v = PRIMAL_TOL * (1.0 + n.absimg([absmax(lower[j], upper[j]) for j in n.inputs]))
            for k, j in enumerate(n.inputs):
                v = v + np.asarray(n.abs_mat(k) @ e[j])
            e.append(v)
        else:
            j = n.inputs[0]
            mj = absmax(lower[j], upper[j])
            moved = n.error_bound(e[j] + MIP_TOL * np.where((lower[j] < 0) & (upper[j] > 0),
                                                            mj, 0.0), lower[j], upper[j])
            e.append(moved + PRIMAL_TOL * (1.0 + m))
    return e


def mip_tolerance(scale: float) -> float:
    """The one rule for trusting a HiGHS MIP dual bound: subtract ``max(1e-5, 1e-6 scale)``, where
    ``scale`` is the magnitude of the objective's terms (``sum |c_j| max|x_j|``)."""
    return max(1e-5, 1e-6 * scale)


# statuses after which the solver's dual bound means something
_TRUSTED = {"optimal", "cutoff", "time_limit", "interrupted", "limit", "target"}


def conjunction_lower(conjs, row_lower) -> np.ndarray:
    """Per-conjunction margin lower bounds from lower bounds on every row of the stacked
    ``C y - d`` (as ``bounds.compute_bounds(..., C=vstack(Cs), d=concat(ds))`` returns): a
    conjunction's margin is the max over its rows, so any one row's lower bound bounds it, and the
    largest is the best (-inf for a conjunction without rows)."""
    row_lower = np.asarray(row_lower, np.float64).ravel()
    out, k = [], 0
    for c in conjs:
        m = np.atleast_2d(c.C).shape[0]
        out.append(row_lower[k:k + m].max(initial=-np.inf))
        k += m
    if k != row_lower.size:
        raise ValueError(f"{row_lower.size} row bounds for conjunctions with {k} rows")
    return np.array(out)


def solve_case(graph, bounds, case, *, time_limit: float, start=None, backend: str = "highs",
               margin_lower=None, mode: str = "joint", tol: float | None = None,
               threads: int = 1, isolate: bool = False, options: dict | None = None,
               prune: bool = True, relax: bool = False, need: float = 0.0,
               guard: bool = True) -> CaseResult:
    """Decide the sign of the worst-case margin of ``case`` (a Case: ``.box``, ``.unsafe``).

    ``bounds``: sound per-node bounds on ``case.box`` (a ``Bounds`` or ``(lower, upper)``).
    ``start``: a candidate input (e.g. from an attack), given to the solver as a MIP start.
    ``margin_lower``: optional known sound lower bounds per conjunction (e.g. from CROWN), or per
    row of the stacked conjunctions when there are more rows than conjunctions (see
    ``conjunction_lower``).
    ``mode``: "joint" = one MILP over the disjunction of the remaining conjunctions (selection
    binaries; measured faster to verify on mnist_fc); "separate" = one MILP per conjunction, most
    threatening first, stopping at the first candidate.  ``prune=False`` sends every conjunction
    to the solver (benchmarks).  ``options``: extra HiGHS options.  ``isolate``: solve in a child
    process killed at the time limit (hard limit).
    ``guard=False``: skip the check that the forward pass at the box centre fits the model (for
    a branch-and-bound domain, whose phases may exclude the centre).
    ``need``: search only below ``2 tau + need`` (the caller will subtract ``need`` from the
    margin, e.g. the float32 deviation of the output).
    ``relax=True``: LP relaxation only (one LP per conjunction, since the disjunction's relaxation
    is weak); ``margin_lower`` then comes from ``lp_dual_bound`` (HiGHS) and the LP optimum's input
    is forward-evaluated: "candidate" only if the network itself violates there.
    Returns a CaseResult (see its docstring; the argument is in this module's docstring)."""
    t0 = time.perf_counter()
    lower, upper = _as_bounds(bounds)
    out = graph.output
    conjs = tuple(case.unsafe)
    if margin_lower is not None and np.size(margin_lower) != len(conjs):
        margin_lower = conjunction_lower(conjs, margin_lower)
    kept, lw = prune_conjunctions(conjs, lower[out], upper[out], margin_lower)
    if not prune:
        kept = list(range(len(conjs)))
    stats = {"conjunctions": len(conjs), "solved_conjunctions": len(kept), "binaries": 0,
             "rows": 0, "cols": 0, "nodes": 0, "gap": None, "time_encode": 0.0,
             "time_solve": 0.0, "solver_status": [], "tau": None}
    dropped_lower = float(np.min(np.delete(lw, kept))) if len(kept) < len(lw) else np.inf
    if any(np.atleast_2d(conjs[j].C).shape[0] == 0 for j in kept):
        # a conjunction without rows is unsafe everywhere: any input of the box violates it
        x = np.clip(np.asarray(start, np.float64).ravel(), case.box.lower, case.box.upper) \
            if start is not None else (np.asarray(case.box.lower) + np.asarray(case.box.upper)) / 2
        stats["time_encode"] = time.perf_counter() - t0
        return CaseResult("candidate", -np.inf, -np.inf, x, stats)
    if not kept:
        stats["time_encode"] = time.perf_counter() - t0
        return CaseResult("verified", dropped_lower, None, None, stats)
    net = encode_network(graph, (lower, upper), case.box)
    why = unsafe_numbers(net)
    if why is not None:
        stats["message"] = f"the MILP is not solved: {why}; HiGHS's answer would prove nothing"
        stats["time_encode"] = time.perf_counter() - t0
        return CaseResult("unknown", float(min(lw.min(initial=np.inf), dropped_lower)), None,
                          None, stats)
    # the solver's own tolerances, through the encoding: part of every tau below
    enc = encoding_slack(graph, lower, upper, np.vstack([np.atleast_2d(conjs[j].C) for j in kept]))
    stats["encoding_slack"] = enc
    if relax:
        groups = [[j] for j in sorted(kept, key=lambda j: lw[j])]
    elif mode == "joint":
        groups = [kept]
    elif mode == "separate":
        groups = [[j] for j in sorted(kept, key=lambda j: lw[j])]
    else:
        raise ValueError(f"mode must be 'joint' or 'separate', not {mode!r}")
    stats["time_encode"] = time.perf_counter() - t0
    outer = any(n.outer for n in graph.nodes)
    lows, best, timed_out, solved = [dropped_lower], None, False, 0
    for gi, g in enumerate(groups):
        t1 = time.perf_counter()
        model = disjunction_objective(net, [conjs[j] for j in g], lower[out], upper[out], node=out)
        why = unsafe_numbers(model)
        if why is not None:                         # the objective's rows and big-M constants
            stats["message"] = f"the MILP is not solved: {why}; HiGHS's answer would prove nothing"
            lows.append(-np.inf)
            break
        tau = tolerance(model, tol) + enc
        stats["tau"] = tau if stats["tau"] is None else max(stats["tau"], tau)
        z0 = start_vector(model, graph, start) if start is not None else None
        # cheap guard against unsound bounds (or an encoder bug): the forward pass at the box
        # centre (or the start) must satisfy the model, or "no point below the cutoff" proves
        # nothing
        zc = z0 if z0 is not None else start_vector(
            model, graph, (np.asarray(case.box.lower) + np.asarray(case.box.upper)) / 2)
        # (not for a domain whose fixed ReLU phases cut the box: its centre may lie outside)
        bad = violation(model, zc) if guard else 0.0
        stats["time_encode"] += time.perf_counter() - t1
        if bad > 1e-6:
            stats["message"] = (f"the bounds exclude the forward pass at a box point (violation "
                                f"{bad:.3g}): unsound bounds, refusing to solve")
            lows.append(-np.inf)
            break
        remaining = time_limit - (time.perf_counter() - t0)
        if remaining <= 0:
            timed_out = True
            break
        for k, v in model.stats().items():
            if k in stats:
                stats[k] += v
        share = remaining / (len(groups) - gi)       # fair share; unused time flows on
        if relax:
            r = solve_model(model.relaxed(), backend, time_limit=share, threads=threads,
                            options=options)
        else:
            # search only below 2 tau (cutoff); stop at the first incumbent below -tau
            r = solve_model(model, backend, time_limit=share, start=z0, cutoff=2 * tau + need,
                            stop_below=-tau, threads=threads, isolate=isolate, options=options)
        solved += 1
        stats["time_solve"] += r.time_s
        stats["nodes"] += r.nodes
        stats["gap"] = r.gap
        stats["solver_status"].append(r.status)
        if r.status == "error":
            stats["message"] = r.message
        if r.status == "infeasible" and np.isposinf(r.dual_bound):
            low = np.inf                            # an LP proved empty by its dual ray
        elif r.status not in _TRUSTED:
            low = -np.inf
        elif relax and backend == "highs":
            low = r.dual_bound                      # rebuilt from duals, rounding accounted
        else:
            low = r.dual_bound - tau
        lows.append(max(low, float(np.min(lw[g]))))  # the bounds' own (sound) lower bound
        timed_out |= r.status == "time_limit"
        if r.x is not None:
            # solvers honour column bounds only up to 1e-7: clip into the box (replay re-checks)
            x = np.clip(model.input_of(r.x), case.box.lower, case.box.upper)
            # an LP point, or a MILP point of an outer approximation (sigmoid, tanh), is no
            # network evaluation: use the float64 margin of its input instead
            val = case.margin(graph.forward(x)) if relax or outer else r.objective
            if val is not None and (best is None or val < best[0]):
                best = (float(val), x)
        if best is not None and best[0] <= 0:
            break
    if solved < len(groups):
        lows.append(-np.inf)                        # some conjunction was never solved
    mlow = float(min(lows))
    mup, xc = best if best is not None else (None, None)
    stats["time_total"] = time.perf_counter() - t0
    if mup is not None and mup <= 0:
        return CaseResult("candidate", mlow, mup, xc, stats)
    if mlow > 0:
        return CaseResult("verified", mlow, mup, xc, stats)
    return CaseResult("timeout" if timed_out else "unknown", mlow, mup, xc, stats)
