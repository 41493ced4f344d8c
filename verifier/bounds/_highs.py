"""The few highspy calls the bound ladder needs (one LP/MILP object reused across many objectives).

Only this module of ``verifier.bounds`` imports highspy.  Nothing read back from HiGHS is trusted as
a bound: ``lp.py`` rebuilds bounds from the row duals (``lp_model.DualBounder``).
"""
from __future__ import annotations

import numpy as np

import highspy

from ..solvers.highs import new_highs
from .lp_model import LPArrays


def make_solver(lp: LPArrays, milp: bool = False, threads: int = 1) -> highspy.Highs:
    """A silent HiGHS object holding ``lp`` with zero costs, presolve off (so the objective-bound
    cutoff works and the basis carries over between objectives), dual simplex."""
    h = new_highs()
    h.setOptionValue("presolve", "off")
    h.setOptionValue("threads", threads)
    if not milp:
        h.setOptionValue("solver", "simplex")
        h.setOptionValue("simplex_strategy", 1)          # dual simplex: the cutoff needs it
    inf = highspy.kHighsInf
    A = lp.A
    m, n = A.shape
    clip = lambda v: np.clip(v, -inf, inf)       # kHighsInf is inf in recent highspy
    model = highspy.HighsLp()
    model.num_col_ = n
    model.num_row_ = m
    model.col_cost_ = np.zeros(n)
    model.col_lower_ = lp.col_lo
    model.col_upper_ = lp.col_hi
    model.row_lower_ = clip(lp.row_lo)
    model.row_upper_ = clip(lp.row_hi)
    model.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    model.a_matrix_.start_ = A.indptr.astype(np.int32)
    model.a_matrix_.index_ = A.indices.astype(np.int32)
    model.a_matrix_.value_ = A.data
    model.a_matrix_.num_col_ = n
    model.a_matrix_.num_row_ = m
    st = h.passModel(model)
    if st == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the relaxation model")
    if milp and lp.binaries.size:
        nb = lp.binaries.size
        h.changeColsIntegrality(nb, lp.binaries.astype(np.int32),
                                np.full(nb, highspy.HighsVarType.kInteger))
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.0)
    return h


def set_objective(h: highspy.Highs, prev: np.ndarray | None, idx: np.ndarray, val: np.ndarray):
    """Zero the costs of columns ``prev`` and set ``val`` on ``idx``; returns ``idx`` for the next call."""
    if prev is not None and len(prev):
        h.changeColsCost(len(prev), np.asarray(prev, np.int32), np.zeros(len(prev)))
    h.changeColsCost(len(idx), np.asarray(idx, np.int32), np.asarray(val, np.float64))
    return idx


def solve(h: highspy.Highs, time_limit: float, cutoff: float | None = None):
    """Minimise; stop early once the dual objective exceeds ``cutoff`` (if given).  Returns
    ``(status_name, row_dual or None, info dict)``; the duals are whatever the solver holds, a
    valid input to ``DualBounder`` even when not optimal."""
    # HiGHS's time_limit is checked against the object's cumulative run clock, not per run()
    h.setOptionValue("time_limit", h.getRunTime() + max(float(time_limit), 1e-3))
    h.setOptionValue("objective_bound", float(cutoff) if cutoff is not None else highspy.kHighsInf)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    sol = h.getSolution()
    y = np.asarray(sol.row_dual) if sol.dual_valid else None
    name = h.modelStatusToString(status)
    return name, y, {"iterations": int(info.simplex_iteration_count),
                     "objective": float(info.objective_function_value),
                     "mip_dual_bound": float(getattr(info, "mip_dual_bound", np.nan))}
