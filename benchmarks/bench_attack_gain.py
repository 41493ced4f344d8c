"""Does the attack in ``--method auto`` decide falsifiable instances faster, without changing answers?

Runs every instance whose expected answer is ``sat`` (acasxu, mnist_fc; ``--every K`` keeps every
K-th of them) twice in the same process: ``auto`` as shipped, and ``auto`` with the attack's share
of the timeout set to 0 (bounds, then input splitting or the MILP find the counterexample).  Prints
per instance both answers and times, then the decided counts and the total / median time ratio.

    PYTHONPATH=. python benchmarks/bench_attack_gain.py --timeout 20 --every 3
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import verifier  # noqa: E402
from verifier.config import Options  # noqa: E402

ROOT = Path(__file__).resolve().parent / "vnncomp2022"


def sat_instances(suite: str, every: int):
    rows = list(csv.DictReader(open(ROOT / suite / "expected.csv")))
    return [(suite, r["onnx"], r["vnnlib"]) for r in rows if r["expected"] == "sat"][::every]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--suites", nargs="+", default=["mnist_fc", "acasxu"])
    a = ap.parse_args()
    runs = {"with attack": Options(timeout=a.timeout),
            "without attack": Options(timeout=a.timeout, attack_share=0.0)}
    times = {k: [] for k in runs}
    decided = {k: 0 for k in runs}
    changed = 0
    for suite in a.suites:
        for s, onnx, vnn in sat_instances(suite, a.every):
            net = verifier.load(ROOT / s / onnx)
            line, answers = f"{s:8s} {Path(onnx).stem[:24]:24s} {Path(vnn).stem:16s}", []
            for name, opt in runs.items():
                t = time.perf_counter()
                c = verifier.verify_vnnlib(net, ROOT / s / vnn, options=opt)
                dt = time.perf_counter() - t
                times[name].append(dt)
                decided[name] += c.status == "falsified"
                answers.append(c.status)
                line += f"  {c.status:9s} {c.method:6s} {dt:7.3f}s"
            decided_both = [x for x in answers if x in ("verified", "falsified")]
            changed += len(set(decided_both)) > 1
            print(line, flush=True)
    n = len(times["with attack"])
    print(f"\n{n} sat instances, timeout {a.timeout:g} s")
    for name in runs:
        print(f"  {name:15s} falsified {decided[name]:3d}/{n}  total {sum(times[name]):8.2f} s  "
              f"median {statistics.median(times[name]):.3f} s")
    ratio = sum(times["without attack"]) / max(sum(times["with attack"]), 1e-9)
    print(f"  total time without / with attack: {ratio:.1f}x;  answers changed: {changed}")


if __name__ == "__main__":
    main()
