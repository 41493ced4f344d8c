"""The soundness suite of ``tests/test_soundness.py`` at full size: every case x every method,
each answer judged against exact enumeration / the planted construction.

Prints, per family and method, how many answers were verified / falsified / float32-only
(a genuine float32 counterexample real arithmetic does not have) / unknown / timeout / error /
UNSOUND, then the planted-counterexample line (found = falsified, unknown, verified -- which must
be 0).  Exit code 1 if any answer was unsound.

    PYTHONPATH=. python benchmarks/soundness.py [--timeout 20] [--family pocket ulps ...]
                                                [--method auto milp ...] [--csv out.csv]
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import collections
import csv
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_soundness as suite      # noqa: E402

OUTCOMES = ("verified", "falsified", "float32-only", "unknown", "timeout", "error", "UNSOUND")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per run (default 20)")
    p.add_argument("--family", nargs="*", help="only these families (e.g. pocket ulps)")
    p.add_argument("--method", nargs="*", default=list(suite.METHODS))
    p.add_argument("--size", default="full", choices=("full", "reduced"))
    p.add_argument("--csv", help="also write one row per run")
    a = p.parse_args(argv)
    cases = [c for c in suite.cases(a.size) if not a.family or c.family in a.family]
    counts: dict = collections.defaultdict(collections.Counter)
    planted: dict = collections.defaultdict(collections.Counter)
    rows, bad = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            for method in a.method:
                t = time.perf_counter()
                try:
                    outcome, cert = suite.run_case(case, method, Path(tmp), a.timeout)
                    how = cert.method
                except suite.Unsound as e:
                    outcome, how = "UNSOUND", ""
                    bad.append(f"{method}: {e}")
                except Exception as e:        # a crash is a bug too, but not an unsound answer
                    outcome, how = "error", f"{type(e).__name__}: {e}".splitlines()[0][:120]
                counts[(case.family, method)][outcome] += 1
                if case.planted:
                    planted[method][outcome] += 1
                rows.append({"case": case.name, "family": case.family, "truth": case.truth,
                             "planted": case.planted, "method": method, "outcome": outcome,
                             "how": how, "time_s": round(time.perf_counter() - t, 3)})
                if outcome in ("UNSOUND", "error"):
                    print(f"  {outcome}: {case.name} --method {method} ({how or bad[-1]})",
                          file=sys.stderr)
            print(f"\r{i + 1}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    head = f"{'family':<18} {'method':<7} " + " ".join(f"{o:>12}" for o in OUTCOMES)
    print(head)
    for (fam, method), c in sorted(counts.items()):
        print(f"{fam:<18} {method:<7} " + " ".join(f"{c[o]:>12}" for o in OUTCOMES))
    print()
    for method in a.method:
        c = planted[method]
        n = sum(c.values())
        print(f"planted counterexamples, --method {method:<6}: {n} cases: found (falsified) "
              f"{c['falsified']}, unknown {c['unknown'] + c['timeout']}, verified "
              f"{c['verified'] + c['UNSOUND']} (must be 0), errors {c['error']}")
    print(f"{len(cases)} cases x {len(a.method)} methods in {time.perf_counter() - t0:.0f} s; "
          f"{len(bad)} unsound answers")
    for line in bad:
        print("UNSOUND " + line)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
