"""Robustness curves: every sample of a data set verified at several ε, in worker processes,
into a resumable CSV (``verifier.robustness_curve`` is the public call).

The boxes are nested (ε' < ε: the ε'-box lies inside the ε-box), so
- verified at ε implies verified at every smaller ε (its margin lower bound holds there too),
- falsified at ε implies falsified at every larger ε (the same replayed counterexample lies inside).
Each sample therefore runs at the middle one of its ε values still open; a decided answer also
closes every ε it implies, unknown / timeout / error only its own.  A sample that is decided at
every ε needs about log2(k) + 1 runs for k values instead of k.  A sample the model misclassifies
as it is (replayed in onnxruntime) is falsified at every ε without a run.

The CSV has one row per (sample, ε): ``model,model_sha,index,label,sample_sha,eps,status,time_s,
margin_lower,margin_upper,method,note``.  ``method`` is ``implied`` (``note`` says by which ε) or
``clean`` for the rows no run produced.  A resumed row counts only for the same model file
(``model_sha``) and the same sample, label and domain (``sample_sha``), so a file never mixes the
answers of another model or data set into the table.
"""
from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..api import load
from ..certificate import file_sha256
from ..config import Options, OptionsError, check_domain, check_eps
from ..graph import Graph
from ..replay import replay, run_model
from ..spec import SpecError, input_vector, robustness_property
from .checks import check_outputs, check_run_options
from .curve_table import RobustnessCurve
from .local import run_local
from .progress import Progress
from .results import ResultsFile, make_row

CURVE_FIELDS = ("model", "model_sha", "index", "label", "sample_sha", "eps", "status", "time_s",
                "margin_lower", "margin_upper", "method", "note")
CURVE_KEY = ("model_sha", "index", "sample_sha", "eps")
RUNNER = "verifier.batch.runners:verify_sample"


@dataclass(eq=False)
class _Sample:
    index: int
    x: np.ndarray
    label: int
    sha: str
    points: list                    # one row (or None) per ε
    open: list = field(default_factory=list)    # positions of the ε not answered, ascending
    busy: bool = False
    announced: bool = False                     # on_sample was called


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:16]


def _float(v):
    return None if v in (None, "") else float(v)


def _implied(row: dict, eps: float) -> dict:
    """The row a decided answer at ``eps`` implies at another ε: the bound that carries over
    (verified: the margin lower bound; falsified: the counterexample and its margin)."""
    cert = row.get("cert") or {}
    if row["status"] == "verified":
        lower, upper, cx = row.get("margin_lower"), None, {}
    else:
        lower, upper = None, row.get("margin_upper")
        cx = {"counterexample": cert.get("counterexample"), "output": cert.get("output")}
    note = f"{row['status']} at eps {eps!r}"
    return make_row(row["status"], 0.0, "implied", note, lower, upper,
                    {"status": row["status"], "time_s": 0.0, "margin_lower": lower,
                     "margin_upper": upper, "method": "implied", **cx,
                     "stats": {"implied_by_eps": eps}})


class _Schedule:
    """The task source of a curve (see ``local``): each idle sample's middle open ε."""

    def __init__(self, eps, task_of):
        self.eps, self.task_of = eps, task_of
        self.ready: deque = deque()

    def pending(self) -> bool:
        return bool(self.ready)

    def take(self, prefer):
        if not self.ready:
            return None
        s = self.ready.popleft()
        k = s.open[len(s.open) // 2]
        s.busy = True
        return (s, k), self.task_of(s, k)

    def record(self, s: _Sample, k: int, row: dict) -> list[tuple[int, dict]]:
        """Enter the answer at ``eps[k]``; returns it with the rows it implies, as (k, row)."""
        s.busy = False
        got = [(k, row)]
        if row["status"] == "verified":
            got += [(j, _implied(row, self.eps[k])) for j in s.open if j < k]
        elif row["status"] == "falsified":
            got += [(j, _implied(row, self.eps[k])) for j in s.open if j > k]
        for j, r in got:
            s.points[j] = r
            if j in s.open:
                s.open.remove(j)
        if s.open:
            self.ready.appendleft(s)     # finish a sample before starting many others
        return got


def _clean(net, s: _Sample, domain) -> tuple[bool, dict | None]:
    """Is the sample classified correctly as it is?  If not and it replays as a counterexample,
    also the row that says so (falsified at every ε, by the sample itself)."""
    t0 = time.perf_counter()
    prop = robustness_property(s.x, s.label, 0.0, domain, n_outputs=net.n_outputs)
    rep = replay(net.model_bytes, s.x, prop)
    if rep.ok:
        x32, y32 = [float(v) for v in rep.x32], [float(v) for v in rep.y32]
        return False, make_row("falsified", time.perf_counter() - t0, "clean",
                               "misclassified: the sample itself is a counterexample", None,
                               rep.margin, {"status": "falsified", "margin_upper": rep.margin,
                                            "counterexample": x32, "output": y32,
                                            "method": "clean", "stats": {}})
    if rep.y32 is not None:
        return True, None
    y = run_model(net.model_bytes, s.x.astype(np.float32))    # no float32 point: its rounding
    return bool(y[s.label] > np.delete(y, s.label).max()), None


class _Run:
    """One call of ``run_curve``: the samples, the results file (or None), the counts shown by
    the progress bar, and what this call made."""

    def __init__(self, net, eps, domain, options, results, on_row, on_sample):
        self.net, self.eps, self.domain, self.options = net, eps, domain, options
        self.results, self.on_row, self.on_sample = results, on_row, on_sample
        self.model_sha = file_sha256(net.source)[:16]
        self.schedule = _Schedule(eps, self.task)
        self.counts: dict = {}
        self.made = {"run": 0, "implied": 0, "clean": 0, "resumed": 0}
        self.prog = None

    def task(self, s: _Sample, k: int) -> dict:
        kw = {"x": s.x, "label": s.label, "eps": self.eps[k], "domain": list(self.domain),
              "timeout": self.options.timeout, "method": self.options.method,
              "arithmetic": self.options.arithmetic, "threads": self.options.threads}
        return {"args": [self.net.source], "kwargs": kw, "timeout": self.options.timeout,
                "group": self.net.source}

    def key(self, s: _Sample, k: int) -> tuple:
        return (self.model_sha, str(s.index), s.sha, repr(self.eps[k]))

    def resume(self, s: _Sample) -> list:
        """Enter the sample's rows of earlier runs; returns the implied rows missing from the file
        (a run interrupted between writing an answer and what it implies)."""
        if self.results is None:
            return []
        missing = []
        for k in range(len(self.eps)):
            r = self.results.rows.get(self.key(s, k))
            if r is not None and k in s.open:         # typed as this run's rows are
                r = {**r, "index": s.index, "label": s.label, "eps": self.eps[k],
                     "time_s": _float(r["time_s"]) or 0.0,
                     "margin_lower": _float(r["margin_lower"]),
                     "margin_upper": _float(r["margin_upper"])}
                for j, implied in self.schedule.record(s, k, r)[1:]:
                    if self.results.rows.get(self.key(s, j)) is None:
                        missing.append((j, implied))
                    else:                   # in the file too (written as implied)
                        self.count(implied)
                        self.made["resumed"] += 1
                self.count(r)
                self.made["resumed"] += 1
        return missing

    def count(self, row: dict) -> None:
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1

    def write(self, s: _Sample, k: int, row: dict) -> None:
        row = {**row, "model": self.net.source, "model_sha": self.model_sha, "index": s.index,
               "label": s.label, "sample_sha": s.sha, "eps": self.eps[k],
               "time_s": round(float(row["time_s"]), 4)}
        s.points[k] = row
        if self.results is not None:
            self.results.append(row)
        self.count(row)
        self.made[row["method"] if row["method"] in ("implied", "clean") else "run"] += 1
        if self.on_row is not None:
            self.on_row(s.index, self.eps[k], row)
        if all(p is not None for p in s.points) and not s.announced:
            s.announced = True
            if self.on_sample is not None:
                self.on_sample(s.index, s.label, [p["status"] for p in s.points])
        self.prog.advance()

    def done(self, item, row: dict) -> None:
        s, k = item
        for j, r in self.schedule.record(s, k, row):
            self.write(s, j, r)


def run_curve(net, xs, ys, eps, *, domain, options, jobs: int = 1, out=None,
              resume: bool = False, plot=None, progress: bool = False, on_row=None,
              on_sample=None, grace: float = 5.0, dataset_path=None) -> RobustnessCurve:
    """Verify sample ``i`` = (``xs[i]``, label ``ys[i]``) of the loaded ``net`` (which has a
    ``source`` file) at every ``eps`` (sorted, distinct), and return the table.  The inputs are
    validated by the caller (``robustness_curve``).  ``on_row(index, eps, row)`` is called
    for every row this call makes (not for rows resumed from ``out``), ``on_sample(index, label,
    statuses)`` when this call answers a sample's last ε."""
    t0 = time.monotonic()
    inputs = [(net.source, "the model")] + ([(dataset_path, "the data set")]
                                            if dataset_path else [])
    check_outputs(out, plot, inputs)
    samples = [_Sample(i, x, int(y), _digest(x.tobytes(), int(y), list(domain)),
                       [None] * len(eps), list(range(len(eps))))
               for i, (x, y) in enumerate(zip(xs, ys))]
    results = None if not out else ResultsFile(out, CURVE_FIELDS, resume, key=CURVE_KEY,
                                               required=CURVE_FIELDS)
    run = _Run(net, eps, domain, options, results, on_row, on_sample)
    try:
        missing = [(s, run.resume(s)) for s in samples]
        known = sum(p is not None for s in samples for p in s.points) - \
            sum(len(rows) for _, rows in missing)          # those are written below
        run.prog = Progress(len(samples) * len(eps), known, run.counts, progress, unit="point")
        try:
            clean = []
            for s, rows in missing:
                for k, r in rows:
                    run.write(s, k, r)
                ok, row = _clean(net, s, domain)
                clean.append(ok)
                if row is not None:             # misclassified: falsified at every ε
                    for k in list(s.open):
                        s.open.remove(k)
                        run.write(s, k, row)
            run.schedule.ready = deque(s for s in samples if s.open)    # in index order
            todo = len(run.schedule.ready)
            if todo:
                run_local(run.schedule, min(jobs, todo), RUNNER, grace, run.done)
        finally:
            run.prog.close()
    finally:
        if results is not None:
            results.close()
    curve = RobustnessCurve(net.source, tuple(eps), [s.label for s in samples], clean,
                            [s.points for s in samples], str(dataset_path or ""),
                            str(out or ""), time.monotonic() - t0, run.made)
    if plot:
        from .plots import plot_curve
        plot_curve(curve, plot)
    return curve


def robustness_curve(model, xs, ys, eps, *, domain=(0.0, 1.0), timeout: float | None = None,
                     method: str | None = None, options: Options | None = None, jobs: int = 1,
                     out=None, resume: bool = False, plot=None, progress: bool = False,
                     on_row=None, on_sample=None, dataset_path=None):
    """Verify every sample ``xs[i]`` (any shape holding the model's input size, inside
    ``domain``) with label ``ys[i]`` at every L∞ radius in ``eps``, and return the table
    (``curve_table.RobustnessCurve``): per ε the verified / falsified / undecided counts,
    certified robust accuracy (verified: a lower bound), empirical robust accuracy (not falsified:
    an upper bound), and the clean accuracy.

    Each answer is a ``verify`` answer with the same guarantees; answers implied by nested boxes
    (verified at ε: also at smaller ε; falsified at ε: also at larger) are not run again.  The
    samples run in ``jobs`` warm worker processes, each property with a hard limit of its timeout
    + 5 s.  ``out``: a results CSV, one row per (sample, ε), continued by ``resume``; ``plot``: an
    image of the curves (matplotlib); ``progress``: a bar on stderr; ``on_row(index, eps, row)``
    for every answer as it comes, ``on_sample(index, label, statuses)`` once a sample has all;
    ``dataset_path``: where ``xs``/``ys`` came from (for the title, and never overwritten).  ``model`` is a path or a graph loaded from a file (the workers load
    it again)."""
    options = (options or Options()).override(timeout=timeout, method=method)
    check_run_options(options.method, options.timeout, jobs)
    net = model if isinstance(model, Graph) else load(model)
    if getattr(net, "source", None) is None:
        raise OptionsError("robustness_curve runs in worker processes that load the model from "
                           "its file: pass the model's path (or a graph from verifier.load)")
    domain = check_domain(domain)
    eps = sorted({check_eps(e) for e in np.atleast_1d(np.asarray(eps, dtype=object))})
    if not eps:
        raise OptionsError("eps: give at least one radius")
    if len(xs) != len(ys):
        raise SpecError(f"the data set has {len(xs)} samples but {len(ys)} labels")
    if len(xs) == 0:
        raise SpecError("the data set has no samples")
    flat = [input_vector(x, net.n_inputs, domain, net.input_shape) for x in xs]
    labels = [int(y) if float(y) == int(y) else y for y in ys]
    for x, y in zip(flat, labels):          # every label checked before any work
        robustness_property(x, y, 0.0, domain, n_outputs=net.n_outputs)
    return run_curve(net, flat, labels, eps, domain=domain, options=options, jobs=jobs, out=out,
                     resume=resume, plot=plot, progress=progress, on_row=on_row,
                     on_sample=on_sample, dataset_path=dataset_path)
