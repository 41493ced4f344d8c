"""Batch runs: an instances CSV (VNN-COMP format) -> a results CSV, in parallel, resumable.

``run_instances(instances_csv, jobs=..., out=..., resume=...)`` runs every instance in a warm
worker process (``local``, ``worker``) with a hard limit of its timeout plus ``grace`` seconds, or
on a Dask cluster (``scheduler="tcp://host:port"``, see ``cluster``), and returns a ``Summary``.

The results file (see ``results`` for its guarantees) has the columns ``onnx,vnnlib,status,
time_s,margin_lower,margin_upper,method`` (``onnx``/``vnnlib`` as written in the instances file),
plus ``expected,correct`` when an ``expected.csv`` sits beside the instances (``correct``: yes /
no / empty = undecided or no known answer), and ``note``.  ``status`` is the runner's answer,
``timeout`` (the pipeline's own, or killed at the hard limit) or ``error`` (bad input files, a
crash of the worker, an internal error: see ``note``).
"""
from __future__ import annotations

import time

from .checks import check_outputs, check_run_options
from .instances import Instance, judge, read_instances
from .local import TaskQueue, default_jobs, run_local
from .progress import Progress
from .results import STATUSES, ResultsFile, json_line
from .summary import Summary
from .worker import DEFAULT_RUNNER

BASE_FIELDS = ("onnx", "vnnlib", "status", "time_s", "margin_lower", "margin_upper", "method")
EXPECTED_FIELDS = ("expected", "correct")
DEFAULT_GRACE = 5.0


def run_instances(instances_csv, *, jobs: int | None = None, out=None, resume: bool = False,
                  plot=None, scheduler: str | None = None, method: str = "auto",
                  timeout: float | None = None, grace: float = DEFAULT_GRACE,
                  progress: bool = True, json_lines: bool = False,
                  runner: str = DEFAULT_RUNNER, arithmetic: str | None = None,
                  threads: int | None = None) -> Summary:
    """Run every instance of ``instances_csv`` and append one row each to ``out``.

    jobs: local worker processes (default: the usable cores); ignored with ``scheduler``.
    out: results CSV (default ``results.csv`` in the current folder); must not exist unless
         ``resume``, which skips the instances already in it.
    plot: also write a cactus plot of ``out`` to this image file.
    scheduler: ``tcp://host:port`` of a Dask scheduler: run there instead of locally.
    timeout: override every instance's timeout (seconds); hard limit = timeout + ``grace``.
    json_lines: print one JSON object per finished instance on stdout.
    arithmetic: what ``verified`` covers (``Options.arithmetic``; default float32).
    threads: cores each instance may use (``Options.threads``; default 1): ``jobs x threads``
         cores in all.
    runner: the per-instance function, ``module:function`` or ``file.py:function``.
    Every option is checked before any work.  Raises ``BatchError`` (bad files/options) or
    ``WorkerError`` (workers cannot start).
    """
    t0 = time.monotonic()
    check_run_options(method, timeout, jobs, threads)
    out = out or "results.csv"
    instances = read_instances(instances_csv)
    inputs = [(instances_csv, "the instances file")] + \
        [(p, "a file of the instances") for i in instances for p in (i.onnx_path, i.vnnlib_path)]
    check_outputs(out, plot, inputs)
    has_expected = any(i.expected is not None for i in instances)
    fields = BASE_FIELDS + (EXPECTED_FIELDS if has_expected else ()) + ("note",)
    results = ResultsFile(out, fields, resume, key=("onnx", "vnnlib"), required=BASE_FIELDS)
    try:
        wanted = {i.key for i in instances}
        done = {k for k in results.rows if k in wanted}
        todo = [i for i in instances if i.key not in done]
        counts = {s: 0 for s in STATUSES}
        counts["wrong"] = 0
        for k in done:
            counts[results.rows[k]["status"]] += 1
        prog = Progress(len(instances), len(done), counts, progress)

        def on_row(inst: Instance, row: dict) -> None:
            row = {**row, "onnx": inst.onnx, "vnnlib": inst.vnnlib}
            verdict = judge(row["status"], inst.expected)
            if inst.expected is not None:
                row["expected"] = inst.expected
                row["correct"] = {"correct": "yes", "wrong": "no"}.get(verdict, "")
            row["time_s"] = round(float(row["time_s"]), 4)
            results.append(row)
            counts[row["status"]] += 1
            counts["wrong"] += verdict == "wrong"
            if json_lines:
                prog.write(json_line(row, {"onnx": inst.onnx, "vnnlib": inst.vnnlib}))
            prog.advance()

        pairs = [(i, i.task(method, timeout, arithmetic, threads)) for i in todo]
        try:
            if pairs and scheduler:
                from .cluster import run_dask
                run_dask(pairs, scheduler, runner, grace, on_row)
            elif pairs:
                run_local(TaskQueue(pairs), min(jobs or default_jobs(), len(pairs)), runner,
                          grace, on_row)
        finally:
            prog.close()
        summary = Summary.from_rows(instances, results.rows, resumed=len(done),
                                    out=results.path, wall_s=time.monotonic() - t0)
    finally:
        results.close()
    if plot:
        from .plots import plot_cactus
        plot_cactus([results.path], plot)
    return summary
