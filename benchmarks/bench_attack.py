"""The attack alone (PGD + replay in onnxruntime) on every mnist_fc and acasxu VNN-COMP 2022 instance.

For each instance: ``verifier.attack.falsify`` with a per-instance time budget.  Reports, per suite,
how many instances expected ``sat`` were falsified with a replayed counterexample, the attack time
(median / max over the falsified ones), and -- the bug check -- that no instance expected ``unsat``
was ever "falsified".  Every reported counterexample is re-checked here independently (box
containment of x32 and the unsafe region evaluated on onnxruntime's own output).

    PYTHONPATH=. python benchmarks/bench_attack.py [--budget 10] [--suite mnist_fc acasxu] [--csv out.csv]
"""
from __future__ import annotations

import os

# one BLAS thread: the attack is benchmarked as one worker per core would run it
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "vnncomp2022"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from verifier.attack import falsify            # noqa: E402
from verifier.onnx_loader import load          # noqa: E402
from verifier.vnnlib import parse_vnnlib       # noqa: E402

_SESSIONS: dict = {}


# --------------------------------------------------------------------------------------------
def independent_check(onnx_path, prop, x32, case_index) -> bool:
    """Re-run onnxruntime on x32 (own session) and re-check box and unsafe region, without replay.py."""
    import onnxruntime as ort
    case = prop.cases[case_index]
    x = np.asarray(x32, dtype=np.float32).astype(np.float64)
    if not (np.all(case.box.lower <= x) and np.all(x <= case.box.upper)):
        return False
    if onnx_path not in _SESSIONS:
        _SESSIONS[onnx_path] = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    sess = _SESSIONS[onnx_path]
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    y = sess.run(None, {inp.name: np.asarray(x32, np.float32).reshape(shape)})[0]
    y = y.reshape(-1).astype(np.float64)
    return any(np.all(c.C @ y - c.d <= 0) for c in case.unsafe)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", nargs="+", default=["mnist_fc", "acasxu"])
    ap.add_argument("--budget", type=float, default=10.0, help="attack time budget per instance (s)")
    ap.add_argument("--restarts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=1000, help="rounds of restarts (the budget stops it)")
    ap.add_argument("--csv", help="write per-instance results here")
    ap.add_argument("--limit", type=int, default=0, help="only the first N instances per suite")
    args = ap.parse_args(argv)

    rows, bugs = [], 0
    for suite in args.suite:
        d = ROOT / suite
        with open(d / "expected.csv") as f:
            instances = list(csv.DictReader(f))
        if args.limit:
            instances = instances[: args.limit]
        graphs, props = {}, {}
        found_t, stats = [], {"sat": [0, 0], "unsat": [0, 0], "unknown": [0, 0]}
        t_suite = time.perf_counter()
        for inst in instances:
            onnx_path, vnn_path = str(d / inst["onnx"]), str(d / inst["vnnlib"])
            if onnx_path not in graphs:
                graphs[onnx_path] = load(onnx_path)
            if vnn_path not in props:
                props[vnn_path] = parse_vnnlib(vnn_path)
            g, prop = graphs[onnx_path], props[vnn_path]
            t0 = time.perf_counter()
            r = falsify(g, onnx_path, prop, restarts=args.restarts, steps=args.steps,
                        rounds=args.rounds, time_budget=args.budget, seed=0)
            dt = time.perf_counter() - t0
            exp = inst["expected"]
            ok = r.found and independent_check(onnx_path, prop, r.x32, r.case_index)
            if r.found and not ok:
                print(f"  BUG: replay accepted a point the independent check rejects: {inst}")
                bugs += 1
            if r.found and exp == "unsat":
                print(f"  BUG: unsat instance 'falsified': {inst}")
                bugs += 1
            stats.setdefault(exp, [0, 0])
            stats[exp][0] += 1
            stats[exp][1] += int(r.found)
            if r.found:
                found_t.append(dt)
            rows.append(dict(suite=suite, onnx=inst["onnx"], vnnlib=inst["vnnlib"], expected=exp,
                             found=int(r.found), time_s=f"{dt:.4f}",
                             margin=f"{r.attack.margin_best:.6g}", evals=r.attack.evaluations))
        tot = time.perf_counter() - t_suite
        s = stats["sat"]
        print(f"{suite}: {len(instances)} instances, wall {tot:.1f} s")
        print(f"  expected sat    : {s[1]}/{s[0]} falsified (replayed in onnxruntime)")
        print(f"  expected unsat  : {stats['unsat'][1]}/{stats['unsat'][0]} falsified (must be 0)")
        if stats.get("unknown", [0])[0]:
            print(f"  expected unknown: {stats['unknown'][1]}/{stats['unknown'][0]} falsified")
        if found_t:
            print(f"  time to counterexample: median {statistics.median(found_t)*1e3:.1f} ms, "
                  f"max {max(found_t)*1e3:.1f} ms")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print("bugs:", bugs)
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
