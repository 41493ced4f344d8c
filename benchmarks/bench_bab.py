"""ReLU branch and bound: one search of the whole case against one search per conjunction.

    PYTHONPATH=. python benchmarks/bench_bab.py [--cap 60] [INSTANCE ...]

INSTANCE is ``net:prop`` of mnist_fc, e.g. ``256x4:prop_11_0.05`` (default: a few 256x2 / 256x4
instances that branch and bound decides).  Both runs start from the same root (CROWN, then
alpha-CROWN, real arithmetic) and get ``--cap`` seconds each; the driver's settings are auto's
(``Tuning``).  Per run: status, seconds, domains bounded, domains per second, and the ratio of
the two times (whole / per conjunction: > 1 means per conjunction is faster).  The runs of one
instance follow each other in one process, so they see the same machine load.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verifier import api  # noqa: E402
from verifier.bab import branch_and_bound, per_conjunction  # noqa: E402
from verifier.bounds import Ladder  # noqa: E402
from verifier.config import Tuning  # noqa: E402

MNIST = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"
DEFAULT = ["256x2:prop_10_0.05", "256x4:prop_3_0.05", "256x4:prop_11_0.05"]


def _root(net, prop):
    case = prop.cases[0]
    C, d, _ = case.stacked()
    lad = Ladder(net, case.box.lower, case.box.upper, C, d, arithmetic="real")
    lad.run("symbolic")
    return lad, lad.run("alpha", alpha_budget=30.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("instances", nargs="*", default=DEFAULT)
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per run")
    args = ap.parse_args()
    t = Tuning()
    kw = dict(batch=t.bab_batch, steps=t.bab_steps, fsb=t.bab_fsb, leaf_relus=t.leaf_relus,
              leaf_time=t.leaf_time, attack_every=t.domain_attack_every,
              attack_time=t.domain_attack_time)
    print(f"{'instance':24} {'search':16} {'status':9} {'s':>7} {'domains':>8} {'dom/s':>7}")
    for inst in args.instances:
        net_name, prop_name = inst.split(":")
        net = api.load(MNIST / "onnx" / f"mnist-net_{net_name}.onnx")
        prop = api.read_vnnlib(net, MNIST / "vnnlib" / f"{prop_name}.vnnlib")
        times = {}
        for name, search in (("whole case", branch_and_bound), ("per conjunction",
                                                                per_conjunction)):
            lad, b = _root(net, prop)
            t0 = time.perf_counter()
            r = search(net, prop, 0, lad.dom, lad.eng, t0 + args.cap, start=lad.slopes,
                       root_lower=b.margin_lower[None, :], **kw)
            s = time.perf_counter() - t0
            times[name] = s
            dom = r.stats.get("domains", 0)
            print(f"{inst:24} {name:16} {r.status:9} {s:7.1f} {dom:8d} {dom / s:7.1f}",
                  flush=True)
        print(f"{inst:24} time ratio whole / per conjunction: "
              f"{times['whole case'] / times['per conjunction']:.2f}"
              " (a timeout counts as the cap)", flush=True)


if __name__ == "__main__":
    main()
