"""How far onnxruntime's float32 Sigmoid and Tanh are from the real functions: the measurement
behind ``verifier.ops.sshape.ORT_ERROR`` (numbers in the main README, "S-shaped activations").

onnxruntime's CPU kernels (MLAS) compute both with rational approximations on a clamped input,
not correctly rounded: the error is absolute (near the tails the float32 result is off by a few
ulps of 1, and Tanh returns values slightly outside [-1, 1]).  This script measures

- every float32 ``x`` with ``2^-20 <= |x| < 2^7`` (all 27 binades, both signs: 4.5e8 values),
- 2^24 random float32 bit patterns over the whole finite range (tiny, subnormal, huge),
- the special values 0, -0, the largest float32, the smallest subnormal,

against the float64 reference (``scipy.special.expit``, ``np.tanh``), whose own error is checked
against an ``np.longdouble`` reference on a sample (it is below 1e-15, nothing next to 1e-7).
It also runs the activation as onnxruntime fuses it after a Gemm (FusedGemm) and a Conv
(FusedConv) with exact identity weights, and checks those give the same bits as the plain op.

    PYTHONPATH=. python benchmarks/sshape_error.py
"""
from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from scipy.special import expit

F = TensorProto.FLOAT
REF = {"Sigmoid": expit, "Tanh": np.tanh}
REF_LONG = {"Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Tanh": np.tanh}


def _session(nodes, in_shape, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, in_shape)],
                          [helper.make_tensor_value_info("y", F, None)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    o = ort.SessionOptions()                       # default optimisation level, as replay runs
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def plain(op):
    s = _session([helper.make_node(op, ["x"], ["y"])], [None])
    return lambda x: s.run(None, {"x": x})[0]


def after_gemm(op):
    one = numpy_helper.from_array(np.ones((1, 1), np.float32), "W")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "b")
    s = _session([helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
                  helper.make_node(op, ["h"], ["y"])], [None, 1], [one, zero])
    return lambda x: s.run(None, {"x": x.reshape(-1, 1)})[0].reshape(-1)


def after_conv(op):
    one = numpy_helper.from_array(np.ones((1, 1, 1), np.float32), "K")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "b")
    s = _session([helper.make_node("Conv", ["x", "K", "b"], ["h"]),
                  helper.make_node(op, ["h"], ["y"])], [1, 1, None], [one, zero])
    return lambda x: s.run(None, {"x": x.reshape(1, 1, -1)})[0].reshape(-1)


def binades(lo_exp: int, hi_exp: int):
    """Every positive float32 in [2^lo_exp, 2^hi_exp), one binade at a time, and its negative."""
    mant = np.arange(2**23, dtype=np.uint32)
    for e in range(lo_exp, hi_exp):
        bits = ((e + 127) << 23 | mant).astype(np.uint32)
        x = bits.view(np.float32)
        yield x
        yield -x


def random_finite(n: int, seed: int = 0):
    bits = np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    return x[np.isfinite(x)]


SPECIAL = np.array([0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                    np.finfo(np.float32).smallest_subnormal], np.float32)


def main() -> int:
    for op in ("Sigmoid", "Tanh"):
        t0 = time.perf_counter()
        run, ref = plain(op), REF[op]
        worst, where, count = 0.0, None, 0
        chunks = list(binades(-20, 7)) + [random_finite(2**24), SPECIAL]
        for x in chunks:
            y = run(x).astype(np.float64)
            err = np.abs(y - ref(x.astype(np.float64)))
            count += x.size
            i = int(err.argmax())
            if err[i] > worst:
                worst, where = float(err[i]), (float(x[i]), float(y[i]))
            # values outside the real range: onnxruntime's Tanh reaches -1.0000002
        sample = np.concatenate([random_finite(2**20, 1), np.random.default_rng(2).uniform(
            -40, 40, 2**20).astype(np.float32)])
        x64 = sample.astype(np.float64)
        ref_err = float(np.max(np.abs(ref(x64) - REF_LONG[op](sample.astype(np.longdouble)))))
        fused = {}
        for name, make in (("Gemm", after_gemm), ("Conv", after_conv)):
            fused[name] = bool(np.array_equal(make(op)(sample), run(sample), equal_nan=True))
        print(f"{op}: {count} float32 inputs, max |onnxruntime - f| = {worst:.4g} "
              f"(at x = {where[0]!r}, onnxruntime {where[1]!r}); float64 reference within "
              f"{ref_err:.2g} of longdouble; fused after Gemm/Conv gives the same bits: "
              f"{fused}; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
