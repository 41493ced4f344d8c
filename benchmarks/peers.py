"""The tools that ``side_by_side.py`` compares, each answering one VNN-LIB instance.

    python benchmarks/peers.py TOOL ONNX VNNLIB TIMEOUT RESULT.json    # one run, in its own process

``TOOL`` is ``ours`` | ``textbook`` | ``marabou``.  The run writes one JSON object to RESULT.json:
``status`` (``sat`` = a counterexample exists, ``unsat`` = none does, ``unknown``, ``timeout``,
``not_loadable``, ``error``), ``time_s`` (wall time of loading the model + property + solving,
i.e. everything after the Python imports), ``replayed``, ``note``.  The caller
(``side_by_side.py``) runs every call in a fresh process group and kills it at a hard limit, so a
tool that ignores its own time limit (CBC in presolve, Marabou in preprocessing) still stops.

What the answers mean, per tool:

* ``ours``: ``verifier.verify_vnnlib`` (verified -> unsat, falsified -> sat, which the pipeline has
  already replayed in onnxruntime).
* ``textbook``: the MILP a textbook gives you (Tjeng et al. style, without the bound tightening):
  every ReLU ``y = max(0, x)`` gets a binary ``a`` and ``y >= 0, y >= x, y <= x + M (1 - a),
  y <= M a`` with ONE constant ``M`` for all neurons of the instance; pre-activations are free
  variables tied to the affine layer by an equality row.  ``M`` = the largest |bound| of any
  ReLU/MaxPool input found by plain interval arithmetic over the instance's input box (the union of
  its cases' boxes), so the encoding is exact, not a relaxation - the only use of bounds is this
  one number.  (``--bigm VALUE`` in ``side_by_side.py`` uses a fixed constant instead; too small a
  constant makes the encoding unsound, which is why it is not the default.)  Per case and per
  conjunction ``C y <= d``: minimise ``t`` s.t. ``t >= C_i y - d_i``; solved by CBC through pulp
  (``PULP_CBC_CMD(msg=False, timeLimit=remaining, threads=1)``).  unsat when CBC proves every such
  optimum > 0 (solution status Optimal); sat when some solution has ``t <= 0`` AND its input
  replays in onnxruntime as a violation (``verifier.replay.replay``, projected into the box); a
  failed replay makes that conjunction undecided.  The pulp model building (one Python expression
  per row, pulp offers no matrix interface) and writing the MPS file per solve count in its time:
  that is what using the baseline costs.
* ``marabou``: ``maraboupy`` 2.x: ``Marabou.read_onnx`` -> ``getInputQuery`` ->
  ``MarabouCore.loadProperty(ipq, vnnlib)`` -> ``MarabouCore.solve`` with ``timeoutInSeconds``,
  one worker, one BLAS thread, default options.  A model or property it cannot load is
  ``not_loadable``.  Its ``sat`` is counted as Marabou's answer (its claim is what is judged
  against expected.csv); its input is also replayed like the textbook's, result in ``replayed``
  (yes/no: Marabou stops at the first feasible point, often ON the boundary of the unsafe region,
  which float32 onnxruntime may then put a hair on the safe side).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")       # one core per tool run: the comparison is core for core

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOOLS = ("ours", "textbook", "marabou")
OPTIONAL = {"abcrown": ("complete_verifier", "abcrown"), "auto_LiRPA": ("auto_LiRPA",),
            "nnenum": ("nnenum",)}


def installed(modules) -> bool:
    import importlib.util
    return any(importlib.util.find_spec(m) is not None for m in modules)


def result(status, t0, note="", **kw) -> dict:
    return {"status": status, "time_s": round(time.monotonic() - t0, 4), "note": note, **kw}


# ------------------------------------------------------------------------------------------------
# this project
# ------------------------------------------------------------------------------------------------
def run_ours(onnx, vnnlib, timeout: float) -> dict:
    import verifier
    t0 = time.monotonic()
    cert = verifier.verify_vnnlib(onnx, vnnlib, timeout=timeout)
    status = {"verified": "unsat", "falsified": "sat"}.get(cert.status, cert.status)
    return result(status, t0, cert.method, replayed="yes" if status == "sat" else "")


# ------------------------------------------------------------------------------------------------
# the textbook big-M MILP (pulp + CBC)
# ------------------------------------------------------------------------------------------------
def _pos_neg(A):
    if isinstance(A, np.ndarray):
        return np.maximum(A, 0.0), np.minimum(A, 0.0)
    return A.maximum(0.0), A.minimum(0.0)


def interval_bigm(graph, lower, upper) -> float:
    """max |l|, |u| over the inputs of every Relu / MaxPool, by plain interval arithmetic."""
    lo, hi, m = [None] * len(graph.nodes), [None] * len(graph.nodes), 0.0
    for k, n in enumerate(graph.nodes):
        if n.kind == "input":
            lo[k], hi[k] = lower, upper
        elif n.kind == "linear":
            lo[k], hi[k] = n.bias.astype(float).copy(), n.bias.astype(float).copy()
            for A, i in zip(n.mats, n.inputs):
                P, N = _pos_neg(A)
                lo[k] += P @ lo[i] + N @ hi[i]
                hi[k] += P @ hi[i] + N @ lo[i]
        else:
            i = n.inputs[0]
            m = max(m, float(np.max(np.abs(lo[i]))), float(np.max(np.abs(hi[i]))))
            if n.kind == "relu":
                lo[k], hi[k] = np.maximum(lo[i], 0), np.maximum(hi[i], 0)
            else:   # maxpool: windows index the input, -1 = padding
                pl = np.append(lo[i], -np.inf)
                ph = np.append(hi[i], -np.inf)
                lo[k], hi[k] = pl[n.windows].max(axis=1), ph[n.windows].max(axis=1)
    return m


def _rows(A):
    """(column indices, values) of every row of a dense or CSR matrix, zeros skipped."""
    if isinstance(A, np.ndarray):
        for r in A:
            nz = np.flatnonzero(r)
            yield nz.tolist(), r[nz].tolist()
    else:
        A = A.tocsr()
        for r in range(A.shape[0]):
            s, e = A.indptr[r], A.indptr[r + 1]
            yield A.indices[s:e].tolist(), A.data[s:e].tolist()


def build_textbook(pulp, graph, box, M: float):
    """pulp problem (no objective yet), the input variables and the output variables."""
    prob = pulp.LpProblem("textbook", pulp.LpMinimize)
    V = [None] * len(graph.nodes)
    for k, n in enumerate(graph.nodes):
        if n.kind == "input":
            V[k] = [pulp.LpVariable(f"x{j}", lowBound=float(a), upBound=float(b))
                    for j, (a, b) in enumerate(zip(box.lower, box.upper))]
        elif n.kind == "linear":
            V[k] = [pulp.LpVariable(f"n{k}_{j}") for j in range(n.size)]
            rows = [_rows(A) for A in n.mats]
            for j in range(n.size):
                terms = [(V[k][j], -1.0)]
                for r, i in zip(rows, n.inputs):
                    cols, vals = next(r)
                    src = V[i]
                    terms += [(src[c], v) for c, v in zip(cols, vals)]
                prob += pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintEQ,
                                          rhs=-float(n.bias[j]))
        elif n.kind == "relu":
            xs = V[n.inputs[0]]
            V[k] = [pulp.LpVariable(f"r{k}_{j}", lowBound=0) for j in range(n.size)]
            for j, (x, y) in enumerate(zip(xs, V[k])):
                a = pulp.LpVariable(f"a{k}_{j}", cat="Binary")
                prob += y - x >= 0
                prob += y - x + M * a <= M
                prob += y - M * a <= 0
        elif n.kind == "maxpool":
            xs = V[n.inputs[0]]
            V[k] = [pulp.LpVariable(f"m{k}_{j}") for j in range(n.size)]
            for j, win in enumerate(n.windows):
                win = [int(w) for w in win if w >= 0]
                a = [pulp.LpVariable(f"p{k}_{j}_{w}", cat="Binary") for w in win]
                for w, aw in zip(win, a):
                    prob += V[k][j] - xs[w] >= 0
                    prob += V[k][j] - xs[w] + 2 * M * aw <= 2 * M
                prob += pulp.lpSum(a) == 1
        else:
            raise NotImplementedError(f"node kind {n.kind}")
    return prob, V[0], V[graph.output]


def run_textbook(onnx, vnnlib, timeout: float, bigm: float | None = None) -> dict:
    import pulp
    from verifier.onnx_loader import load
    from verifier.replay import replay
    from verifier.vnnlib import parse_vnnlib
    t0 = time.monotonic()
    graph = load(onnx)
    prop = parse_vnnlib(vnnlib, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
    lower = np.min([c.box.lower for c in prop.cases], axis=0)
    upper = np.max([c.box.upper for c in prop.cases], axis=0)
    M = float(bigm) if bigm else interval_bigm(graph, lower, upper) * (1 + 1e-6) + 1e-6
    undecided, solves, build_s = [], 0, 0.0
    for ci, case in enumerate(prop.cases):
        tb = time.monotonic()
        prob, xs, ys = build_textbook(pulp, graph, case.box, M)
        t = pulp.LpVariable("t")
        prob += t           # objective
        build_s += time.monotonic() - tb
        for qi, conj in enumerate(case.unsafe):
            names = []
            for i, (row, d) in enumerate(zip(conj.C, conj.d)):
                nz = np.flatnonzero(row)
                e = pulp.LpAffineExpression([(ys[c], float(row[c])) for c in nz] + [(t, -1.0)])
                names.append(f"spec{i}")
                prob.addConstraint(pulp.LpConstraint(e, pulp.LpConstraintLE, rhs=float(d)),
                                   names[-1])
            left = timeout - (time.monotonic() - t0)
            if left < 1.0:
                return result("timeout", t0, f"M={M:.4g}; {solves} MILPs solved", bigm=M)
            prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=left, threads=1))
            solves += 1
            for name in names:
                del prob.constraints[name]
            obj = pulp.value(prob.objective)
            if prob.sol_status == pulp.LpSolutionOptimal and obj is not None and obj > 0:
                continue                                    # this conjunction: unsat
            if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible) \
                    and obj is not None and obj <= 0:
                x = np.array([v.varValue or 0.0 for v in xs])
                r = replay(onnx, x, prop, project=True)
                if r.ok:
                    return result("sat", t0, f"M={M:.4g}; case {ci} conj {qi}; build "
                                  f"{build_s:.1f}s", bigm=M, replayed="yes")
                undecided.append(f"c{ci}q{qi}: t={obj:.3g} not replayed ({r.reason})")
                continue
            if time.monotonic() - t0 >= timeout - 1.0:
                return result("timeout", t0, f"M={M:.4g}; {solves} MILPs solved", bigm=M)
            undecided.append(f"c{ci}q{qi}: CBC status {pulp.LpStatus[prob.status]} "
                             f"sol_status {prob.sol_status}")
    if undecided:
        return result("unknown", t0, f"M={M:.4g}; " + "; ".join(undecided[:3]), bigm=M)
    return result("unsat", t0, f"M={M:.4g}; {solves} MILPs; build {build_s:.1f}s", bigm=M)


# ------------------------------------------------------------------------------------------------
# Marabou
# ------------------------------------------------------------------------------------------------
def run_marabou(onnx, vnnlib, timeout: float) -> dict:
    import warnings
    warnings.filterwarnings("ignore")
    from maraboupy import Marabou, MarabouCore
    t0 = time.monotonic()
    try:
        net = Marabou.read_onnx(onnx)
        ipq = net.getInputQuery()
        MarabouCore.loadProperty(ipq, str(vnnlib))
    except Exception as e:      # noqa: BLE001 - any failure to read is "cannot load"
        return result("not_loadable", t0, f"{type(e).__name__}: {str(e)[:200]}")
    opts = Marabou.createOptions(timeoutInSeconds=max(1, int(timeout)), verbosity=0,
                                 numWorkers=1, numBlasThreads=1)
    code, vals, stats = MarabouCore.solve(ipq, opts, "")
    if code == "sat":
        from verifier.replay import replay
        from verifier.vnnlib import parse_vnnlib
        x = np.array([vals[ipq.inputVariableByIndex(i)] for i in range(ipq.getNumInputVariables())])
        prop = parse_vnnlib(vnnlib)
        r = replay(onnx, x, prop, project=True)
        if r.ok:
            return result("sat", t0, "replayed", replayed="yes")
        return result("sat", t0, f"NOT replayed: {r.reason}", replayed="no")
    if code == "unsat":
        return result("unsat", t0)
    if code == "TIMEOUT" or stats.hasTimedOut():
        return result("timeout", t0, code)
    return result("unknown", t0, code)


RUNNERS = {"ours": run_ours, "textbook": run_textbook, "marabou": run_marabou}


def main(argv) -> int:
    tool, onnx, vnnlib, timeout, out = argv[:5]
    bigm = float(argv[5]) if len(argv) > 5 and tool == "textbook" else None
    t0 = time.monotonic()
    try:
        kw = {"bigm": bigm} if bigm else {}
        res = RUNNERS[tool](onnx, vnnlib, float(timeout), **kw)
    except Exception as e:      # noqa: BLE001 - reported as a row, never a crash of the batch
        traceback.print_exc()
        res = result("error", t0, f"{type(e).__name__}: {str(e)[:300]}")
    Path(out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
