"""Solving encoded models: HiGHS (``highs``, the only module importing highspy), CBC and file
export through pulp (``pulp_backend``), the weak-duality bound (``dual``), and ``solve_case``, which
turns solver claims into sound answers for one Case (``case``; its docstring has the argument)."""
from .case import conjunction_lower, mip_tolerance, solve_case, solve_model, tolerance
from .dual import DualBound, lp_dual_bound
from .result import CaseResult, SolveResult

__all__ = ["solve_case", "solve_model", "tolerance", "mip_tolerance", "conjunction_lower", "DualBound",
           "lp_dual_bound", "CaseResult", "SolveResult"]
