"""Robustness-curve wall time: ``verifier.robustness_curve`` with 1 and 2 worker processes, and
the same points run one ε at a time without the nested-box shortcut (what four ``verify
--dataset --eps E`` runs do), on the shipped digits samples.

Prints per model and mode the wall time, the runs made and the per-ε verified / falsified
counts (which must agree between the modes).

    PYTHONPATH=. python benchmarks/bench_curve.py [--models digits_mlp digits_cnn]
        [--eps 0.005 0.01 0.02 0.05] [--timeout 60] [--repeat 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import verifier

MODELS = Path(__file__).resolve().parent.parent / "models"


def curve_counts(curve):
    return [(curve.count(k)["verified"], curve.count(k)["falsified"]) for k in range(len(curve.eps))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits_mlp", "digits_cnn",
                                                    "digits_cnn_maxpool"])
    ap.add_argument("--eps", nargs="+", type=float, default=[0.005, 0.01, 0.02, 0.05])
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    d = np.load(MODELS / "digits_samples.npz")
    xs, ys = d["x"], d["y"]
    print(f"{len(xs)} samples x {len(a.eps)} eps {a.eps}, timeout {a.timeout:g} s")
    print(f"{'model':<20} {'mode':<26} {'wall s':>7} {'runs':>5}  verified/falsified per eps")
    for name in a.models:
        model = str(MODELS / f"{name}.onnx")
        for rep in range(a.repeat):
            for jobs in (1, 2):
                t0 = time.perf_counter()
                c = verifier.robustness_curve(model, xs, ys, a.eps, timeout=a.timeout, jobs=jobs)
                wall = time.perf_counter() - t0
                print(f"{name:<20} {f'curve --jobs {jobs}':<26} {wall:>7.1f} "
                      f"{c.made['run']:>5}  {curve_counts(c)}", flush=True)
            t0 = time.perf_counter()
            counts = []
            for e in a.eps:           # one eps per call: no point implies another
                c = verifier.robustness_curve(model, xs, ys, [e], timeout=a.timeout, jobs=1)
                counts += curve_counts(c)
            wall = time.perf_counter() - t0
            print(f"{name:<20} {'one eps at a time, 1 job':<26} {wall:>7.1f} "
                  f"{len(xs) * len(a.eps):>5}  {counts}", flush=True)


if __name__ == "__main__":
    main()
