"""Batch runs: many properties, warm worker processes, resumable results files, plots.

- ``run.run_instances``: a VNN-COMP instances file -> a results CSV and a ``Summary``.
- ``curve.robustness_curve`` (``verifier.robustness_curve``): a data set at several ε -> a CSV and a
  ``RobustnessCurve`` table.
- ``plots``: cactus plots of results files (several overlay), robustness-curve plots.

Modules: ``instances`` (the instances file, expected answers), ``results`` (the results file and
its rows), ``summary``, ``progress``, ``worker`` (a warm killable child process, parent side),
``child`` (its side), ``runners`` (the functions children run), ``local`` (the pool),
``cluster`` (Dask), ``checks`` (options checked before work), ``errors``.
"""
from .curve import robustness_curve
from .errors import BatchError, WorkerError
from .instances import Instance, judge, read_instances
from .plots import plot_cactus
from .run import run_instances
from .summary import Summary

__all__ = ["BatchError", "WorkerError", "Instance", "judge", "read_instances", "plot_cactus",
           "robustness_curve", "run_instances", "Summary"]
