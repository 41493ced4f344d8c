"""Encode / solve timings of the exact MILP on VNN-COMP instances (not a test: run by hand).

    PYTHONPATH=. python benchmarks/bench_milp.py --net 256x2 --props prop_0_0.03 \
        [--level symbolic] [--mode joint|separate] [--timeout 60] [--no-prune] [--no-heuristics]
        [--start]      # MIP start from a short PGD attack (verifier.attack)

Prints one line per instance: bounds time, encode time (min of 5 runs), model size, solve time,
wall time of ``solve_case``, status and margins, and whether it matches expected.csv.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from verifier.bounds import compute_bounds
from verifier.encode import disjunction_objective, encode_network
from verifier.onnx_loader import load
from verifier.solvers import solve_case
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parent / "vnncomp2022" / "mnist_fc"
NO_HEUR = {"mip_heuristic_run_feasibility_jump": False, "mip_heuristic_run_rins": False,
           "mip_heuristic_run_rens": False, "mip_heuristic_run_root_reduced_cost": False}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="256x2")
    ap.add_argument("--props", nargs="+", default=["prop_0_0.03"])
    ap.add_argument("--level", default="symbolic")
    ap.add_argument("--mode", default="joint")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-prune", action="store_true", help="send every class to the MILP")
    ap.add_argument("--no-heuristics", action="store_true")
    ap.add_argument("--start", action="store_true", help="MIP start from a 2 s PGD attack")
    a = ap.parse_args()
    expected = {}
    with open(ROOT / "expected.csv") as f:
        for row in csv.DictReader(f):
            expected[(row["onnx"], row["vnnlib"])] = row["expected"]
    onnx = f"onnx/mnist-net_{a.net}.onnx"
    g = load(ROOT / onnx)
    for p in a.props:
        vnn = f"vnnlib/{p}.vnnlib"
        prop = parse_vnnlib(ROOT / vnn, g.n_inputs, g.n_outputs)
        case = prop.cases[0]
        start, t_a = None, 0.0
        if a.start:
            from verifier.attack import attack
            t = time.perf_counter()
            start = attack(g, prop, time_budget=2.0).x_best
            t_a = time.perf_counter() - t
        C = np.vstack([c.C for c in case.unsafe])
        d = np.concatenate([c.d for c in case.unsafe])
        t = time.perf_counter()
        b = compute_bounds(g, case.box, level=a.level, C=C, d=d)
        t_b = time.perf_counter() - t
        enc = []
        for _ in range(5):
            t = time.perf_counter()
            m = disjunction_objective(encode_network(g, b, case.box), case.unsafe,
                                      b.lower[-1], b.upper[-1])
            enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = solve_case(g, b, case, time_limit=a.timeout, mode=a.mode, prune=not a.no_prune,
                       start=start,
                       margin_lower=None if a.no_prune else b.margin_lower,
                       options=NO_HEUR if a.no_heuristics else None)
        wall = time.perf_counter() - t
        exp = expected.get((onnx, vnn), "?")
        got = {"verified": "unsat", "candidate": "sat"}.get(r.status, "?")
        s = r.stats
        print(f"{a.net} {p} level={a.level} mode={a.mode} unstable={b.report.levels[-1].unstable} "
              f"{f'attack={t_a:.2f}s ' if a.start else ''}bounds={t_b:.2f}s encode={min(enc) * 1e3:.1f}ms (rows={m.n_rows} cols={m.n_cols} "
              f"bin={m.n_binaries} nnz={m.A.nnz}) solved={s['solved_conjunctions']} "
              f"solve={s['time_solve']:.2f}s wall={wall:.2f}s nodes={s['nodes']} -> {r.status} "
              f"[{r.margin_lower:.4g}, {r.margin_upper if r.margin_upper is None else round(r.margin_upper, 4)}]"
              f" expected={exp} {'OK' if got == exp else ('-' if got == '?' else 'WRONG')}",
              flush=True)


if __name__ == "__main__":
    main()
