"""Bound-ladder benchmark: unstable ReLUs and time per level on mnist_fc and oval21.

    PYTHONPATH=. python benchmarks/bench_bounds.py [--lp-budget 60] [--all] [--no-lp]

For every mnist_fc net (256x2/4/6) and every epsilon in its instances file (0.03, 0.05; the epsilon
is part of the vnnlib file name), one property (prop_0, or all with ``--all``); for oval21 the first
instance of each net.  Per level: total unstable ReLUs (per layer in brackets), wall time, and the
smallest margin lower bound over the property's rows (> 0 means the level alone verifies it).

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


def _instances(suite: str):
    folder = SUITES / suite
    with open(folder / "instances.csv") as f:
        rows = [r for r in csv.reader(f) if r]
    return folder, [(r[0].strip(), r[1].strip()) for r in rows]


def pick(suite: str, all_props: bool):
    folder, rows = _instances(suite)
    if suite == "mnist_fc":
        seen, out = set(), []
        for onnx, vnn in rows:
            eps = re.search(r"_([0-9.]+)\.vnnlib", vnn).group(1)
            key = (onnx, eps)
            if all_props or key not in seen:
                seen.add(key)
                out.append((folder / onnx, folder / vnn, eps))
        return out
    seen, out = set(), []
    for onnx, vnn in rows:
        if onnx not in seen:
            seen.add(onnx)
            eps = re.search(r"eps([0-9.]+)\.vnnlib", vnn).group(1)
            out.append((folder / onnx, folder / vnn, f"{float(eps):.4f}"))
    return out


def run(onnx: Path, vnn: Path, eps: str, level: str, budget: float):
    graph = load(onnx)
    prop = parse_vnnlib(vnn, graph.n_inputs, graph.n_outputs)
    case = prop.cases[0]
    C = np.vstack([c.C for c in case.unsafe])
    d = np.concatenate([c.d for c in case.unsafe])
    t0 = time.perf_counter()
    b = compute_bounds(graph, case.box, level, C, d, time_budget=budget)
    return b, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lp-budget", type=float, default=60.0, help="seconds for the lp level")
    ap.add_argument("--all", action="store_true", help="every mnist_fc property, not just prop_0")
    ap.add_argument("--no-lp", action="store_true", help="interval and symbolic only")
    ap.add_argument("--suite", choices=["mnist_fc", "oval21", "both"], default="both")
    args = ap.parse_args(argv)
    level = "symbolic" if args.no_lp else "lp"
    suites = ["mnist_fc", "oval21"] if args.suite == "both" else [args.suite]
    print(f"{'net':<16} {'property':<34} {'eps':>6}  {'level':<8} {'time_s':>8} {'unstable':>8}  "
          f"{'min margin lb':>13}  per layer")
    for suite in suites:
        for onnx, vnn, eps in pick(suite, args.all):
            b, total = run(onnx, vnn, eps, level, args.lp_budget)
            for s in b.report.levels:
                per = "/".join(str(v["unstable"]) for v in s.relu.values())
                print(f"{onnx.stem:<16} {vnn.name[:34]:<34} {eps:>6}  {s.level:<8} {s.time_s:8.3f} "
                      f"{s.unstable:>8}  {np.min(s.margin_lower):13.4g}  [{per}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
