"""Bound quality per second: CROWN vs alpha-CROWN vs per-neuron LP, on mnist_fc, LP_d-CNN, oval21.

    PYTHONPATH=. python benchmarks/bench_bounds.py [--budget 60] [--props 2] [--suite ...]

For every mnist_fc net (256x2/4/6) and every epsilon in its instances file (0.03, 0.05; the epsilon
is part of the vnnlib file name), the first ``--props`` properties; for LP_d-CNN the first
``--props`` images; for oval21 the first instance of each net.  Three runs per instance, each from
scratch: ``crown`` (the symbolic level), ``alpha`` (optimised slopes for the margins, then for the
intermediate bounds, ``--budget`` seconds), ``lp`` (per-neuron LP tightening without slopes,
``--budget`` seconds).  Per run: unstable ReLUs after it, wall time, and the smallest margin lower
bound over the property's rows (> 0 means the level alone verifies it).

BLAS threads: the symbolic level multiplies many small matrices, for which OpenBLAS's threading
only adds overhead (and stalls badly on a loaded machine), so this script defaults to one thread.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verifier.bounds import compute_bounds  # noqa: E402
from verifier.onnx_loader import load  # noqa: E402
from verifier.vnnlib import parse_vnnlib  # noqa: E402

SUITES = ROOT / "benchmarks" / "vnncomp2022"
LPD = ROOT / "benchmarks" / "mipverify_wk17a"


def _instances(folder: Path):
    with open(folder / "instances.csv") as f:
        rows = [r for r in csv.reader(f) if r]
    return [(r[0].strip(), r[1].strip()) for r in rows]


def pick(suite: str, props: int):
    if suite == "lpd_cnn":
        return [(LPD / o, LPD / v, "0.1") for o, v in _instances(LPD)[:props]]
    folder = SUITES / suite
    rows = _instances(folder)
    seen, out = {}, []
    for onnx, vnn in rows:
        if suite == "mnist_fc":
            eps = re.search(r"_([0-9.]+)\.vnnlib", vnn).group(1)
            key, limit = (onnx, eps), props
        else:
            eps = "%.4f" % float(re.search(r"eps([0-9.]+)\.vnnlib", vnn).group(1))
            key, limit = onnx, 1
        if seen.get(key, 0) < limit:
            seen[key] = seen.get(key, 0) + 1
            out.append((folder / onnx, folder / vnn, eps))
    return out


RUNS = {"crown": dict(level="symbolic"),
        "alpha": dict(level="alpha"),
        "lp": dict(level="lp", alpha_steps=0, margin_lp=True)}


def run(graph, prop, name: str, budget: float):
    case = prop.cases[0]
    C = np.vstack([c.C for c in case.unsafe])
    d = np.concatenate([c.d for c in case.unsafe])
    kw = dict(RUNS[name])
    if name == "alpha":
        kw["alpha_budget"] = budget
    elif name == "lp":
        kw["time_budget"] = budget
    t0 = time.perf_counter()
    b = compute_bounds(graph, case.box, C=C, d=d, **kw)
    return b, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds for alpha / lp")
    ap.add_argument("--props", type=int, default=2, help="properties per net and epsilon")
    ap.add_argument("--suite", nargs="+", default=["mnist_fc", "lpd_cnn", "oval21"],
                    choices=["mnist_fc", "lpd_cnn", "oval21"])
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args(argv)
    print(f"{'net':<18} {'property':<30} {'eps':>6}  {'run':<6} {'time_s':>8} {'unstable':>8}  "
          f"{'min margin lb':>13}", flush=True)
    for suite in args.suite:
        for onnx, vnn, eps in pick(suite, args.props):
            graph = load(onnx)
            prop = parse_vnnlib(vnn, graph.n_inputs, graph.n_outputs)
            for name in args.runs:
                b, total = run(graph, prop, name, args.budget)
                print(f"{onnx.stem[:18]:<18} {vnn.name[:30]:<30} {eps:>6}  {name:<6} {total:8.2f} "
                      f"{b.report.levels[-1].unstable:>8}  {np.min(b.margin_lower):13.4g}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
