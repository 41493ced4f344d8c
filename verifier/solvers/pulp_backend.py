"""Second opinion and export: the same arrays as a pulp model, solved with CBC or written to a file.

Slow: pulp builds one Python expression per row (seconds per 10^6 nonzeros), so use it for small
models, cross-checks, and ``--export model.mps|.lp`` — never on the hot path.

CBC is called with a near-zero gap; it does not report its dual bound through pulp, so after
"optimal" we report ``objective - max(gapAbs, gapRel * |objective|)`` as the dual bound, and
``-inf`` otherwise.  ``cutoff`` / ``stop_*`` are ignored (solving to optimality is the safe side).
An objective constant is exported as a column fixed at 1 (MPS readers disagree on its sign).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pulp

from .result import SolveResult

_GAP_REL, _GAP_ABS = 1e-9, 1e-9


def to_pulp(model, name: str = "verifier"):
    """``(problem, variables)``: one pulp variable ``x<j>`` per column, one constraint per finite
    row side (ranged rows become two constraints, ``r<i>_lo`` and ``r<i>_hi``)."""
    prob = pulp.LpProblem(name, pulp.LpMinimize)
    xs = []
    # pulp >= 3.3 wants variables created by the problem; older versions only have LpVariable
    new_var = getattr(prob, "add_variable", pulp.LpVariable)
    for j in range(model.n_cols):
        lb, ub = model.lb[j], model.ub[j]
        xs.append(new_var(
            f"x{j}", lowBound=float(lb) if np.isfinite(lb) else None,
            upBound=float(ub) if np.isfinite(ub) else None,
            cat=pulp.LpBinary if model.integrality[j] and lb >= 0 and ub <= 1
            else (pulp.LpInteger if model.integrality[j] else pulp.LpContinuous)))
    nz = np.flatnonzero(model.c)
    terms = [(xs[j], float(model.c[j])) for j in nz]
    if model.offset:
        # MPS readers disagree on the sign of an objective constant (RHS of the N row): carry it
        # as a column fixed at 1 so every solver reads the same objective
        one = new_var("objective_constant", lowBound=1.0, upBound=1.0)
        terms.append((one, float(model.offset)))
    prob += pulp.LpAffineExpression(terms), "margin"
    A = model.A.tocsr()
    for i in range(model.n_rows):
        s, e = A.indptr[i], A.indptr[i + 1]
        expr = pulp.LpAffineExpression([(xs[j], float(v)) for j, v in
                                        zip(A.indices[s:e], A.data[s:e])])
        lo, hi = model.rl[i], model.ru[i]
        if lo == hi:
            prob += pulp.LpConstraint(expr, pulp.LpConstraintEQ, f"r{i}", float(lo))
            continue
        if np.isfinite(lo):
            prob += pulp.LpConstraint(expr, pulp.LpConstraintGE, f"r{i}_lo", float(lo))
        if np.isfinite(hi):
            prob += pulp.LpConstraint(expr, pulp.LpConstraintLE, f"r{i}_hi", float(hi))
    return prob, xs


def export_model(model, path) -> Path:
    """Write ``model`` as ``.mps`` or ``.lp`` (chosen by the suffix) for any other solver."""
    path = Path(path)
    prob, _ = to_pulp(model)
    if path.suffix.lower() == ".mps":
        prob.writeMPS(str(path))
    elif path.suffix.lower() == ".lp":
        prob.writeLP(str(path))
    else:
        raise ValueError(f"export format must be .mps or .lp, got {path.suffix!r}")
    return path


def solve(model, *, time_limit: float | None = None, start: np.ndarray | None = None,
          threads: int = 1, msg: bool = False, **_ignored) -> SolveResult:
    """Minimise ``model`` with CBC through pulp (see the module docstring for what is reported)."""
    t0 = time.perf_counter()
    prob, xs = to_pulp(model)
    if start is not None:
        for v, s in zip(xs, np.asarray(start, np.float64)):
            v.setInitialValue(float(s))
    with warnings.catch_warnings():     # pulp 3.3 flags the bundled CBC for its 4.0 cleanup
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit, gapRel=_GAP_REL,
                                   gapAbs=_GAP_ABS, threads=threads, warmStart=start is not None)
        prob.solve(solver)
    st = pulp.LpStatus[prob.status]
    has_sol = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    x = np.array([v.value() if v.value() is not None else np.nan for v in xs]) if has_sol else None
    obj = float(pulp.value(prob.objective)) if has_sol else None
    if st == "Optimal" and prob.sol_status == pulp.LpSolutionOptimal:
        status, dual = "optimal", obj - max(_GAP_ABS, _GAP_REL * abs(obj))
    elif st == "Infeasible":
        status, dual = "infeasible", np.inf
    elif has_sol or st == "Not Solved":
        status, dual = "time_limit", -np.inf
    elif st == "Unbounded":
        status, dual = "unbounded", -np.inf
    else:
        status, dual = "error", -np.inf
    return SolveResult(status, obj, dual, x, 0, 0.0 if status == "optimal" else np.inf,
                       time.perf_counter() - t0, f"CBC: {st}")
