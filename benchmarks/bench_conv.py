"""One CROWN bound pass per conv net: convolutions as kernels vs as CSR matrices.

    PYTHONPATH=. python benchmarks/bench_conv.py [--modes auto always never]

For the first instance of each oval21 net (base, wide, deep) and of ResNet-2B / ResNet-4B
(vnncomp2021/cifar10_resnet): ``Engine.bound`` (intermediate bounds of every unstable ReLU input)
and the margins, in a fresh process per (net, mode) so that the peak resident memory is that
pass's own.  Modes: ``auto`` (kernels where ``ConvMatrix.pays``), ``always``, ``never`` (CSR).
Prints wall time, peak RSS, the largest coefficient block, the rows bounded and the smallest
margin lower bound (equal across modes up to rounding).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = [ROOT / "benchmarks" / "vnncomp2022" / "oval21",
          ROOT / "benchmarks" / "vnncomp2021" / "cifar10_resnet"]


def firsts():
    out = {}
    for folder in SUITES:
        with open(folder / "instances.csv") as f:
            for r in csv.reader(f):
                if r and r[0].strip() not in out:
                    out[r[0].strip()] = (folder / r[0].strip(), folder / r[1].strip())
    return list(out.values())


def one(onnx: str, vnnlib: str, mode: str) -> dict:
    import resource
    import time

    sys.path.insert(0, str(ROOT))
    from verifier.bounds.engine import Engine, domains
    from verifier.onnx_loader import load
    from verifier.vnnlib import parse_vnnlib
    net = load(onnx)
    case = parse_vnnlib(vnnlib, net.n_inputs, net.n_outputs).cases[0]
    C, d, _ = case.stacked()
    eng = Engine(net, arithmetic="real", structured=mode)
    dom = domains(net, case.box.lower, case.box.upper)
    t0 = time.perf_counter()
    eng.bound(dom)
    lo = eng.margins(dom, C, d)
    return {"time_s": round(time.perf_counter() - t0, 2),
            "rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "block_mb": round(eng.stats["max_block_bytes"] / 2**20, 1),
            "rows": int(sum(eng.stats["rows_bounded"].values())),
            "margin": float(lo.min())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["auto", "never"])
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    print(f"{'net':<22} {'mode':<7} {'time s':>7} {'peak GB':>8} {'block MB':>9} {'rows':>6}  margin")
    for onnx, vnn in firsts():
        for mode in a.modes:
            r = subprocess.run([sys.executable, __file__, "--one", str(onnx), str(vnn), mode],
                               capture_output=True, text=True, check=True)
            v = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{onnx.name:<22} {mode:<7} {v['time_s']:>7} {v['rss_gb']:>8} "
                  f"{v['block_mb']:>9} {v['rows']:>6}  {v['margin']:.6f}", flush=True)


if __name__ == "__main__":
    main()
