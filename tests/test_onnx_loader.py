"""The ONNX loader against onnxruntime: one tiny hand-made graph per op (and per attribute form),
the file-level checks (gzip, external data, broken files), the error report, the graph passes, and
every shipped / benchmark model.

Ground truth is always onnxruntime (one thread) on random inputs; the loaded graph must agree with
``max|diff| <= 1e-5 * max(1, max|y|)`` and must report the output shape onnxruntime returns.
"""
from __future__ import annotations

import glob
import gzip
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper

from verifier.graph import Graph, Input, Linear, MaxPool, Relu
from verifier.onnx_export import graph_to_onnx
from verifier.onnx_loader import ModelError, convert, load
from verifier.passes import simplify

ROOT = Path(__file__).resolve().parent.parent
F = TensorProto.FLOAT
node = helper.make_node


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def W(*shape, seed=0, scale=1.0):
    """Random float32 weights, fixed seed."""
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def I64(*values):
    return np.array(values, np.int64)


def make_model(nodes, inits, in_shape, opset=17, out="y"):
    """A one-input model reading ``x`` (shape ``in_shape``, strings are symbolic) and returning
    ``out``; ``inits`` maps initializer names to arrays."""
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", F, in_shape)],
        [helper.make_tensor_value_info(out, F, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = max(7, helper.find_min_ir_version_for(list(model.opset_import)))
    return model


def session(model_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def assert_matches_ort(graph: Graph, sess, lo=0.0, hi=1.0, n=3, seed=1, box=None):
    """``graph.forward`` agrees with onnxruntime on ``n`` random inputs in [lo, hi] (or ``box``)."""
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        if box is None:
            x = rng.uniform(lo, hi, shape).astype(np.float32)
        else:
            x = rng.uniform(box[0], box[1]).reshape(shape).astype(np.float32)
        ref = np.asarray(sess.run(None, {inp.name: x})[0], np.float64)
        got = graph.forward(x)
        assert graph.nodes[graph.output].shape == ref.shape, "output shape differs from onnxruntime"
        err = np.abs(got - ref.reshape(-1)).max()
        assert err <= 1e-5 * max(1.0, np.abs(ref).max()), f"max |diff| {err:.3g}"


def check(model, **kw) -> Graph:
    graph = convert(model)
    assert_matches_ort(graph, session(model), **kw)
    return graph


def kinds(graph):
    return [n.kind for n in graph.nodes]


# --------------------------------------------------------------------------------------------
# one model per op / attribute form, each checked against onnxruntime
# --------------------------------------------------------------------------------------------
CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@case("Gemm 2 inputs transB")
def _():
    return make_model([node("Gemm", ["x", "W"], ["y"], transB=1)], {"W": W(3, 4)}, [1, 4])


@case("Gemm 3 inputs alpha beta")
def _():
    return make_model([node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=-2.0)],
                      {"W": W(4, 3), "C": W(3, seed=1)}, [1, 4])


@case("Gemm transA on the computed input, C [1,3]")
def _():
    return make_model([node("Gemm", ["x", "W", "C"], ["y"], transA=1)],
                      {"W": W(4, 3), "C": W(1, 3, seed=1)}, [4, 1])


@case("Gemm const A @ computed B, C [3,1]")
def _():
    return make_model([node("Gemm", ["W", "x", "C"], ["y"], alpha=1.5)],
                      {"W": W(3, 4), "C": W(3, 1, seed=1)}, [4, 2])


@case("Gemm transA const, transB computed, scalar C")
def _():
    return make_model([node("Gemm", ["W", "x", "C"], ["y"], transA=1, transB=1, beta=0.3)],
                      {"W": W(4, 3), "C": np.array(2.0, np.float32)}, [2, 4])


@case("MatMul")
def _():
    return make_model([node("MatMul", ["x", "W"], ["y"])], {"W": W(4, 3)}, [1, 4])


@case("MatMul + Add")
def _():
    return make_model([node("MatMul", ["x", "W"], ["h"]), node("Add", ["h", "b"], ["y"])],
                      {"W": W(4, 3), "b": W(3, seed=1)}, [1, 4])


@case("MatMul const @ computed")
def _():
    return make_model([node("MatMul", ["W", "x"], ["y"])], {"W": W(3, 4)}, [4, 2])


@case("MatMul 3-D computed @ W + b")
def _():
    return make_model([node("MatMul", ["x", "W"], ["h"]), node("Add", ["b", "h"], ["y"])],
                      {"W": W(4, 3), "b": W(3, seed=1)}, [1, 2, 4])


@case("MatMul computed @ vector")
def _():
    return make_model([node("MatMul", ["x", "w"], ["y"])], {"w": W(4)}, [1, 2, 4])


@case("MatMul vector @ computed")
def _():
    return make_model([node("MatMul", ["w", "x"], ["y"])], {"w": W(4)}, [2, 4, 3])


@case("MatMul 1-D input")
def _():
    return make_model([node("MatMul", ["x", "W"], ["y"])], {"W": W(4, 3)}, [4])


@case("Sum of computed and constant")
def _():
    return make_model([node("Relu", ["x"], ["r"]), node("Sum", ["x", "r", "c"], ["y"])],
                      {"c": W(4)}, [1, 4], opset=13)


@case("per-channel normalisation (x - mean[c]) / std[c]")
def _():
    mean = np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1)
    return make_model([node("Sub", ["x", "mean"], ["c"]), node("Div", ["c", "std"], ["y"])],
                      {"mean": mean, "std": std}, [1, 3, 4, 5])


@case("const - x, Neg, Mul, Add broadcasting up, Div by scalar")
def _():
    return make_model([node("Sub", ["c", "x"], ["a"]), node("Neg", ["a"], ["b"]),
                       node("Mul", ["s", "b"], ["m"]), node("Add", ["m", "big"], ["d"]),
                       node("Div", ["d", "two"], ["y"])],
                      {"c": W(4), "s": np.float32(-1.5), "big": W(3, 1, 4, seed=2),
                       "two": np.float32(2.0)}, [1, 4])


@case("Mul broadcasting the computed tensor up")
def _():
    return make_model([node("Mul", ["x", "c"], ["y"])], {"c": W(1, 3, 1)}, [1, 1, 4])


@case("residual Add and Sub of computed tensors (DAG)")
def _():
    return make_model([
        node("Gemm", ["x", "W0", "b0"], ["h"]), node("Relu", ["h"], ["r"]),
        node("Gemm", ["r", "W1"], ["a"]), node("Gemm", ["r", "W2"], ["b"]),
        node("Add", ["a", "b"], ["s"]), node("Add", ["r", "r"], ["rr"]),
        node("Sub", ["s", "rr"], ["t"]), node("Gemm", ["r", "W3"], ["m"]),   # m: [1, 1]
        node("Add", ["t", "m"], ["u"]),                                      # broadcast of m
        node("Relu", ["u"], ["v"]), node("Gemm", ["v", "W4"], ["y"])],
        {"W0": W(4, 6), "b0": W(6, seed=1), "W1": W(6, 6, seed=2), "W2": W(6, 6, seed=3),
         "W3": W(6, 1, seed=4), "W4": W(6, 2, seed=5)}, [1, 4]), {"lo": -1}


@case("Relu")
def _():
    return make_model([node("Relu", ["x"], ["y"])], {}, [1, 2, 3]), {"lo": -1}


@case("Flatten axis 1")
def _():
    return make_model([node("Flatten", ["x"], ["f"], axis=1), node("MatMul", ["f", "W"], ["y"])],
                      {"W": W(24, 5)}, [1, 2, 3, 4])


@case("Flatten axis 2")
def _():
    return make_model([node("Flatten", ["x"], ["f"], axis=2), node("MatMul", ["f", "W"], ["y"])],
                      {"W": W(12, 5)}, [1, 2, 3, 4])


@case("Reshape with 0 and -1")
def _():
    return make_model([node("Reshape", ["x", "s1"], ["a"]), node("MatMul", ["a", "W"], ["b"]),
                       node("Reshape", ["b", "s2"], ["y"])],
                      {"s1": I64(0, 0, -1), "W": W(12, 3), "s2": I64(0, -1)}, [1, 2, 3, 4])


@case("Reshape allowzero=1 (opset 14)")
def _():
    return make_model([node("Reshape", ["x", "s"], ["a"], allowzero=1),
                       node("MatMul", ["a", "W"], ["y"])],
                      {"s": I64(1, 6, 4), "W": W(4, 2)}, [1, 2, 3, 4], opset=14)


@case("Transpose channels-last to NCHW, Conv")
def _():
    return make_model([node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                       node("Conv", ["t", "K", "kb"], ["c"], pads=[1, 1, 1, 1]),
                       node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"]),
                       node("Gemm", ["f", "W"], ["y"])],
                      {"K": W(4, 3, 3, 3), "kb": W(4, seed=1), "W": W(100, 3, seed=2)},
                      [1, 5, 5, 3])


@case("Identity, Dropout with ratio input and mask output (opset 13)")
def _():
    return make_model([node("Identity", ["x"], ["a"]),
                       node("Dropout", ["a", "ratio"], ["b", "mask"]),
                       node("Gemm", ["b", "W"], ["y"])],
                      {"ratio": np.float32(0.5), "W": W(4, 3)}, [1, 4], opset=13)


@case("Dropout opset 7")
def _():
    return make_model([node("Dropout", ["x"], ["b"], ratio=0.3), node("MatMul", ["b", "W"], ["y"])],
                      {"W": W(4, 3)}, [1, 4], opset=7)


@case("Constant value, value_ints, value_float")
def _():
    return make_model([
        node("Constant", [], ["K"], value=numpy_helper.from_array(W(12, 3), "K")),
        node("Constant", [], ["shape"], value_ints=[1, -1]),
        node("Constant", [], ["half"], value_float=0.5),
        node("Constant", [], ["bias"], value_floats=[1.0, -2.0, 3.0]),
        node("Reshape", ["x", "shape"], ["f"]), node("Mul", ["f", "half"], ["h"]),
        node("MatMul", ["h", "K"], ["m"]), node("Add", ["m", "bias"], ["y"])], {}, [1, 3, 2, 2])


@case("Pad constant, inputs form (opset 11), nonzero value")
def _():
    return make_model([node("Pad", ["x", "pads", "v"], ["y"], mode="constant")],
                      {"pads": I64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.float32(0.7)}, [1, 2, 3, 3],
                      opset=11)


@case("Pad attribute form (opset 10), nonzero value, then Conv")
def _():
    return make_model([node("Pad", ["x"], ["p"], pads=[0, 0, 1, 0, 0, 0, 0, 2], value=-0.4),
                       node("Conv", ["p", "K"], ["y"])], {"K": W(2, 2, 2, 2)}, [1, 2, 3, 3],
                      opset=10)


@case("Pad with axes (opset 18)")
def _():
    return make_model([node("Pad", ["x", "pads", "v", "axes"], ["y"])],
                      {"pads": I64(1, 2, 0, 1), "v": np.float32(1.5), "axes": I64(-1, 2)},
                      [1, 2, 3, 3], opset=18)


@case("Pad edge and reflect")
def _():
    return make_model([node("Pad", ["x", "p1"], ["a"], mode="edge"),
                       node("Pad", ["a", "p2"], ["y"], mode="reflect")],
                      {"p1": I64(0, 0, 1, 0, 0, 0, 0, 2), "p2": I64(0, 0, 0, 2, 0, 0, 2, 1)},
                      [1, 2, 3, 3], opset=13)


@case("Pad negative (crop)")
def _():
    return make_model([node("Pad", ["x", "p"], ["y"])], {"p": I64(0, 0, -1, 1, 0, 0, 1, -2)},
                      [1, 2, 4, 4], opset=13)


@case("Squeeze / Unsqueeze attribute form (opset 11)")
def _():
    return make_model([node("Squeeze", ["x"], ["s"], axes=[1]), node("Gemm", ["s", "W"], ["g"]),
                       node("Unsqueeze", ["g"], ["y"], axes=[1])], {"W": W(4, 3)}, [1, 1, 4],
                      opset=11)


@case("Squeeze / Unsqueeze input form (opset 13), Squeeze without axes")
def _():
    return make_model([node("Squeeze", ["x", "ax"], ["s"]), node("Gemm", ["s", "W"], ["g"]),
                       node("Unsqueeze", ["g", "ax2"], ["u"]), node("Squeeze", ["u"], ["q"]),
                       node("MatMul", ["q", "V"], ["y"])],
                      {"ax": I64(1), "W": W(4, 3), "ax2": I64(0, -1), "V": W(3, 2, seed=1)},
                      [1, 1, 4], opset=13)


@case("Slice (steps, negative step)")
def _():
    return make_model([node("Slice", ["x", "st", "en", "ax", "sp"], ["a"]),
                       node("Slice", ["a", "st2", "en2", "ax2", "sp2"], ["y"])],
                      {"st": I64(1, 0), "en": I64(3, 5), "ax": I64(1, 3), "sp": I64(1, 2),
                       "st2": I64(-1), "en2": I64(-100), "ax2": I64(2), "sp2": I64(-2)},
                      [1, 3, 4, 5], opset=13)


@case("Slice attribute form (opset 9)")
def _():
    return make_model([node("Slice", ["x"], ["y"], starts=[1, 1], ends=[3, 100], axes=[1, 2])],
                      {}, [1, 3, 4], opset=9)


@case("Gather on a computed tensor (2-D, negative, scalar indices)")
def _():
    return make_model([node("Gather", ["x", "i"], ["a"], axis=1),
                       node("Gather", ["x", "j"], ["b"], axis=-1),
                       node("Flatten", ["a"], ["fa"]), node("Unsqueeze", ["b", "one"], ["ub"]),
                       node("Concat", ["fa", "ub"], ["y"], axis=1)],
                      {"i": I64(0, 5, -1, 2).reshape(2, 2), "j": np.array(3, np.int64),
                       "one": I64(1)}, [1, 6])


@case("Concat computed + const")
def _():
    return make_model([node("Concat", ["x", "c"], ["a"], axis=1), node("Gemm", ["a", "W"], ["y"])],
                      {"c": W(1, 2), "W": W(6, 3, seed=1)}, [1, 4])


@case("Concat computed + computed")
def _():
    return make_model([node("Gemm", ["x", "W0"], ["h"]), node("Relu", ["h"], ["r"]),
                       node("Concat", ["r", "x", "r"], ["a"], axis=-1),
                       node("Gemm", ["a", "W"], ["y"])],
                      {"W0": W(4, 3), "W": W(10, 2, seed=1)}, [1, 4]), {"lo": -1}


@case("Split (opset 13 input) and residual of the parts")
def _():
    return make_model([node("Split", ["x", "s"], ["a", "b"], axis=1),
                       node("Gemm", ["a", "Wa"], ["ga"]), node("Gemm", ["b", "Wb"], ["gb"]),
                       node("Sub", ["ga", "gb"], ["y"])],
                      {"s": I64(2, 4), "Wa": W(2, 3), "Wb": W(4, 3, seed=1)}, [1, 6], opset=13)


@case("Split attribute form (opset 11)")
def _():
    return make_model([node("Split", ["x"], ["a", "b"], axis=2, split=[1, 3]),
                       node("Concat", ["b", "a"], ["y"], axis=2)], {}, [1, 2, 4], opset=11)


@case("Split num_outputs (opset 18)")
def _():
    return make_model([node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
                       node("Add", ["a", "c"], ["y"])], {}, [1, 6], opset=18)


@case("Expand a computed tensor")
def _():
    return make_model([node("Expand", ["x", "s"], ["e"]), node("Reshape", ["e", "flat"], ["f"]),
                       node("Gemm", ["f", "W"], ["y"])],
                      {"s": I64(2, 1, 3, 1), "flat": I64(1, -1), "W": W(24, 3)}, [1, 1, 4])


@case("Tile and DepthToSpace")
def _():
    return make_model([node("Tile", ["x", "r"], ["t"]),
                       node("DepthToSpace", ["t"], ["y"], blocksize=2, mode="CRD")],
                      {"r": I64(1, 2, 1, 1)}, [1, 2, 2, 3])


@case("Flatten axis 0 and negative axis, Transpose default perm")
def _():
    return make_model([node("Flatten", ["x"], ["a"], axis=-1), node("Transpose", ["a"], ["t"]),
                       node("Flatten", ["t"], ["y"], axis=0)], {}, [1, 2, 3, 4], opset=13)


@case("Slice without axes and steps, Gather on axis 0")
def _():
    return make_model([node("Slice", ["x", "st", "en"], ["a"]),
                       node("Gather", ["a", "i"], ["y"], axis=0)],
                      {"st": I64(0, 1, -3), "en": I64(1, 3, 100), "i": I64(0, 0)}, [1, 3, 4])


@case("constant subgraph weights: Transpose, Mul, Concat folded")
def _():
    return make_model([node("Transpose", ["K"], ["Kt"]), node("Mul", ["Kt", "two"], ["K2"]),
                       node("Concat", ["K2", "K2"], ["K4"], axis=1),
                       node("MatMul", ["x", "K4"], ["y"])],
                      {"K": W(3, 4), "two": np.float32(2.0)}, [1, 4])


@case("Sum and Mean")
def _():
    return make_model([node("Relu", ["x"], ["r"]), node("Sum", ["x", "r", "c"], ["s"]),
                       node("Mean", ["s", "x", "c"], ["y"])], {"c": W(4)}, [1, 4], opset=13), \
        {"lo": -1}


@case("Pad wrap (opset 19)")
def _():
    return make_model([node("Pad", ["x", "p"], ["y"], mode="wrap")],
                      {"p": I64(0, 0, 1, 2, 0, 0, 2, 1)}, [1, 2, 3, 3], opset=19)


def _conv_model(x_shape, k_shape, bias=True, opset=17, **attrs):
    inits = {"K": W(*k_shape)}
    ins = ["x", "K"]
    if bias:
        inits["B"] = W(k_shape[0], seed=1)
        ins.append("B")
    return make_model([node("Conv", ins, ["y"], **attrs)], inits, list(x_shape), opset=opset)


CONV = {
    "stride": ([1, 2, 6, 7], [3, 2, 3, 3], {"strides": [2, 2]}),
    "asymmetric pads": ([1, 2, 5, 5], [3, 2, 3, 2], {"pads": [1, 0, 2, 1]}),
    "SAME_UPPER": ([1, 2, 5, 6], [3, 2, 2, 3], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "SAME_LOWER": ([1, 2, 5, 6], [3, 2, 2, 3], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    "VALID": ([1, 2, 6, 5], [3, 2, 3, 2], {"auto_pad": "VALID", "strides": [2, 1]}),
    "dilation": ([1, 2, 7, 7], [3, 2, 3, 2], {"dilations": [2, 3], "pads": [1, 1, 1, 1]}),
    "groups": ([1, 4, 5, 5], [6, 2, 3, 3], {"group": 2}),
    "depthwise": ([1, 3, 5, 5], [6, 1, 3, 3], {"group": 3, "pads": [1, 1, 1, 1]}),
    "no bias": ([1, 2, 4, 4], [3, 2, 3, 3], {"bias": False}),
    "1-D": ([1, 2, 9], [3, 2, 3], {"strides": [2], "pads": [1, 2]}),
    "3-D": ([1, 2, 4, 4, 3], [2, 2, 2, 3, 2], {"pads": [1, 0, 1, 0, 1, 0]}),
}
for _name, (_x, _k, _a) in CONV.items():
    CASES[f"Conv {_name}"] = (lambda x=_x, k=_k, a=_a: _conv_model(x, k, **a))


POOL = {
    "MaxPool kernel stride": ("MaxPool", [1, 2, 6, 7], {"kernel_shape": [3, 2], "strides": [2, 2]}),
    "MaxPool pads": ("MaxPool", [1, 2, 5, 5], {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1]}),
    "MaxPool ceil_mode": ("MaxPool", [1, 2, 6, 6],
                          {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "MaxPool ceil_mode pads": ("MaxPool", [1, 2, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                         "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "MaxPool dilations": ("MaxPool", [1, 2, 7, 7], {"kernel_shape": [2, 3], "dilations": [2, 2]}),
    "MaxPool SAME_UPPER": ("MaxPool", [1, 2, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                     "auto_pad": "SAME_UPPER"}),
    "MaxPool 1-D": ("MaxPool", [1, 3, 7], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    "AveragePool": ("AveragePool", [1, 2, 6, 6], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "AveragePool pads count_include_pad=0": (
        "AveragePool", [1, 2, 5, 5], {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1]}),
    "AveragePool pads count_include_pad=1": (
        "AveragePool", [1, 2, 5, 5], {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1],
                                      "count_include_pad": 1}),
    "AveragePool ceil_mode": ("AveragePool", [1, 2, 6, 6],
                              {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "AveragePool ceil_mode pads count_include_pad=1": (
        "AveragePool", [1, 2, 6, 6], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                      "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "AveragePool ceil_mode pads count_include_pad=0": (
        "AveragePool", [1, 2, 6, 6], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                      "pads": [1, 1, 1, 1]}),
    "AveragePool SAME_UPPER count_include_pad=1": (
        "AveragePool", [1, 2, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2],
                                      "auto_pad": "SAME_UPPER", "count_include_pad": 1}),
    "MaxPool ceil_mode dilations": ("MaxPool", [1, 2, 7, 7], {"kernel_shape": [2, 2],
                                                              "strides": [2, 2], "ceil_mode": 1,
                                                              "dilations": [2, 2]}),
    "GlobalAveragePool": ("GlobalAveragePool", [1, 3, 4, 5], {}),
    "GlobalMaxPool": ("GlobalMaxPool", [1, 3, 4, 5], {}),
}
POOL["AveragePool dilations pads (opset 19)"] = (
    "AveragePool", [1, 2, 7, 7], {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 0, 1],
                                  "count_include_pad": 1})
for _name, (_op, _x, _a) in POOL.items():
    CASES[_name] = (lambda op=_op, x=_x, a=_a:
                    (make_model([node(op, ["x"], ["y"], **a)], {}, x, opset=19), {"lo": -1}))


@case("BatchNormalization after Conv")
def _():
    return make_model([node("Conv", ["x", "K", "B"], ["c"]),
                       node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
                      {"K": W(3, 2, 3, 3), "B": W(3, seed=1), "g": W(3, seed=2),
                       "b": W(3, seed=3), "m": W(3, seed=4), "v": np.abs(W(3, seed=5)) + 0.1},
                      [1, 2, 5, 5])


@case("BatchNormalization after Gemm")
def _():
    return make_model([node("Gemm", ["x", "K", "B"], ["c"]),
                       node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])],
                      {"K": W(4, 3), "B": W(3, seed=1), "g": W(3, seed=2),
                       "b": W(3, seed=3), "m": W(3, seed=4), "v": np.abs(W(3, seed=5)) + 0.1},
                      [1, 4])


def _pytorch_flatten(opset):
    unsq = node("Unsqueeze", ["n"], ["u"], axes=[0]) if opset < 13 else \
        node("Unsqueeze", ["n", "zero"], ["u"])
    inits = {"idx0": np.array(0, np.int64), "minus1": I64(-1), "W": W(48, 3)}
    if opset >= 13:
        inits["zero"] = I64(0)
    return make_model([node("Shape", ["x"], ["s"]), node("Gather", ["s", "idx0"], ["n"], axis=0),
                       unsq, node("Concat", ["u", "minus1"], ["shape"], axis=0),
                       node("Reshape", ["x", "shape"], ["f"]), node("Gemm", ["f", "W"], ["y"])],
                      inits, ["N", 3, 4, 4], opset=opset)


CASES["PyTorch flatten: Shape-Gather-Unsqueeze-Concat-Reshape (opset 11)"] = \
    lambda: _pytorch_flatten(11)
CASES["PyTorch flatten: Shape-Gather-Unsqueeze-Concat-Reshape (opset 13)"] = \
    lambda: _pytorch_flatten(13)


@case("shape arithmetic: Cast, Mod, Range, ConstantOfShape, symbolic batch")
def _():
    quarter = numpy_helper.from_array(np.array([0.25], np.float32), "q")
    return make_model([
        node("Shape", ["x"], ["s"]), node("Gather", ["s", "i1"], ["c"], axis=0),
        node("Range", ["zero", "c", "one"], ["r"]), node("Add", ["r", "one"], ["r1"]),
        node("Mod", ["r1", "c"], ["perm"]),                         # [1, 2, 0]: rotate channels
        node("Gather", ["x", "perm"], ["xg"], axis=1),
        node("ConstantOfShape", ["s"], ["k"], value=quarter), node("Add", ["xg", "k"], ["a"]),
        node("Cast", ["c"], ["cf"], to=F), node("Div", ["a", "cf"], ["d"]),
        node("Cast", ["d"], ["dd"], to=F),
        node("Gather", ["s", "i0"], ["n"], axis=0), node("Unsqueeze", ["n", "ax0"], ["u"]),
        node("Concat", ["u", "minus1"], ["shape"], axis=0),
        node("Reshape", ["dd", "shape"], ["f"]), node("Gemm", ["f", "W"], ["y"])],
        {"i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "zero": np.array(0, np.int64),
         "one": np.array(1, np.int64), "ax0": I64(0), "minus1": I64(-1), "W": W(48, 3)},
        ["N", 3, 4, 4], opset=13)


@case("Size, Shape with start/end (opset 15)")
def _():
    return make_model([node("Shape", ["x"], ["s"], start=1, end=-1), node("Size", ["x"], ["n"]),
                       node("ReduceProd", ["s"], ["p"], keepdims=1),
                       node("Concat", ["p", "minus1"], ["shape"], axis=0),
                       node("Reshape", ["x", "shape"], ["r"]), node("Cast", ["n"], ["nf"], to=F),
                       node("Div", ["r", "nf"], ["y"])],
                      {"minus1": I64(-1)}, ["N", 2, 3, 4], opset=15)


@case("Clip with min and max inputs (opset 13), weights spanning both bounds")
def _():
    return make_model([node("Gemm", ["x", "W"], ["h"]), node("Clip", ["h", "lo", "hi"], ["y"])],
                      {"W": W(4, 6), "lo": np.float32(-0.5), "hi": np.float32(0.7)}, [1, 4],
                      opset=13), {"lo": -3, "hi": 3, "n": 8}


@case("Clip max only, min only (empty input names), none, ReLU6")
def _():
    return make_model([node("Gemm", ["x", "W"], ["h"]), node("Clip", ["h", "", "hi"], ["a"]),
                       node("Clip", ["a", "lo"], ["b"]), node("Clip", ["b"], ["c"]),
                       node("Clip", ["c", "zero", "six"], ["y"])],
                      {"W": W(4, 6, scale=4), "hi": np.float32(2.5), "lo": np.float32(-1.5),
                       "zero": np.float32(0), "six": np.float32(6)}, [1, 4], opset=13), \
        {"lo": -3, "hi": 3, "n": 8}


@case("Clip attribute form (opset 6 default bounds are FLT_MAX)")
def _():
    return make_model([node("MatMul", ["x", "W"], ["h"]), node("Clip", ["h"], ["a"], min=-0.1),
                       node("Clip", ["a"], ["y"], max=0.3)], {"W": W(4, 3)}, [1, 4], opset=7), \
        {"lo": -3, "hi": 3, "n": 8}


@case("LeakyRelu default and explicit alpha, alpha > 1")
def _():
    return make_model([node("Gemm", ["x", "W"], ["h"]), node("LeakyRelu", ["h"], ["a"]),
                       node("LeakyRelu", ["a"], ["b"], alpha=0.3),
                       node("LeakyRelu", ["b"], ["y"], alpha=2.0)], {"W": W(4, 5)}, [1, 4]), \
        {"lo": -3, "hi": 3, "n": 8}


@case("PRelu per channel after Conv, scalar slope, negative slope")
def _():
    return make_model([node("Conv", ["x", "K"], ["h"]), node("PRelu", ["h", "s"], ["a"]),
                       node("PRelu", ["a", "t"], ["y"])],
                      {"K": W(3, 2, 2, 2), "s": W(3, 1, 1, seed=3), "t": np.float32([-0.5])},
                      [1, 2, 4, 4]), {"lo": -3, "hi": 3, "n": 8}


def _run_case(name):
    made = CASES[name]()
    model, kw = made if isinstance(made, tuple) else (made, {})
    return check(model, **kw)


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_onnxruntime(name):
    _run_case(name)


def test_piecewise_linear_activations_use_one_relu_per_value_and_per_bound():
    leaky = _run_case("LeakyRelu default and explicit alpha, alpha > 1")
    assert leaky.relu_count == 3 * 5               # s*x + (1-s)*relu(x): one ReLU per value
    clip = _run_case("Clip with min and max inputs (opset 13), weights spanning both bounds")
    assert clip.relu_count == 2 * 6 and kinds(clip) == ["input", "linear", "relu", "linear",
                                                         "relu", "linear"]
    assert any("Clip" in n.origin for n in clip.nodes if n.kind == "relu")
    plain = convert(make_model([node("Clip", ["x"], ["y"])], {}, [1, 4], opset=13))
    assert plain.relu_count == 0                   # no bounds: the identity


def test_clip_min_above_max_and_computed_bounds_are_unsupported():
    m = make_model([node("Clip", ["x", "lo", "hi"], ["y"], name="clipbad")],
                   {"lo": np.float32(1), "hi": np.float32(0)}, [1, 4], opset=13)
    assert "Clip (clipbad): min > max" in str(pytest.raises(ModelError, convert, m).value)
    m = make_model([node("Slice", ["x", "s0", "s1", "ax"], ["one"]),
                    node("Reshape", ["one", "scalar"], ["m"]),
                    node("Clip", ["x", "", "m"], ["y"], name="clipc")],
                   {"s0": I64(0), "s1": I64(1), "ax": I64(1), "scalar": I64()}, [1, 4], opset=13)
    assert "Clip (clipc): computed min or max" in str(pytest.raises(ModelError, convert, m).value)


# --------------------------------------------------------------------------------------------
# a Softmax at the output: dropped, the graph returns the logits
# --------------------------------------------------------------------------------------------
def _softmax_model(tail, shape=(1, 6), opset=17, **softmax_attrs):
    """Gemm 4 -> 6, reshaped to ``shape``, a Softmax, then the ``tail`` nodes (ending in y)."""
    nodes = [node("Gemm", ["x", "W"], ["h"]), node("Reshape", ["h", "shape"], ["l"]),
             node("Softmax", ["l"], ["s" if tail else "y"], name="prob", **softmax_attrs)]
    return make_model(nodes + tail, {"W": W(4, 6, scale=3), "shape": I64(*shape)}, [1, 4],
                      opset=opset)


@pytest.mark.parametrize("tail, shape, opset, attrs, groups", [
    ([], (1, 6), 17, {}, [0] * 6),
    ([node("Flatten", ["s"], ["f"]), node("Identity", ["f"], ["y"])], (1, 6), 17, {}, [0] * 6),
    ([], (1, 2, 3), 17, {}, [0, 0, 0, 1, 1, 1]),                   # softmax over the last axis
    ([], (1, 2, 3), 17, {"axis": 1}, [0, 1, 2, 0, 1, 2]),
    ([], (1, 2, 3), 11, {}, [0] * 6),                               # coerced to 2-D at axis 1
    ([], (1, 2, 3), 11, {"axis": 2}, [0, 0, 0, 1, 1, 1]),
    ([], (1, 6), 17, {"axis": 0}, list(range(6))),                  # over the batch: all 1.0
])
def test_output_softmax_is_dropped_and_matches_onnxruntime(tail, shape, opset, attrs, groups):
    from verifier.api import model_output
    model = _softmax_model(tail, shape, opset, **attrs)
    g = convert(model)
    assert g.output_groups.tolist() == groups
    assert any("Softmax (prob)" in n and "logits" in n for n in g.notes)
    assert "note: Softmax (prob) at the output is dropped" in g.summary()
    sess = session(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.uniform(-1, 1, (1, 4)).astype(np.float32)
        ref = np.asarray(sess.run(None, {"x": x})[0], np.float64).reshape(-1)
        np.testing.assert_allclose(model_output(g, g.forward(x)), ref, rtol=1e-5, atol=1e-7)


def test_a_softmax_that_is_not_the_output_is_unsupported():
    inner = _softmax_model([node("Relu", ["s"], ["y"])])                    # read by a layer
    shared = _softmax_model([node("Add", ["s", "s"], ["y"])])
    also_read = _softmax_model([node("Identity", ["s"], ["y"]), node("Neg", ["s"], ["unused"])])
    for m in (inner, shared):
        msg = str(pytest.raises(ModelError, convert, m).value)
        assert "Softmax (prob)" in msg and "model's output" in msg
    assert convert(also_read).output_groups is not None     # a reader off the output path


def test_several_outputs_are_refused_naming_them():
    model = _small_model()
    model.graph.output.append(helper.make_tensor_value_info("h", F, None))
    msg = str(pytest.raises(ModelError, convert, model).value)
    assert "2 outputs" in msg and "h" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------------
# structure after simplify
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["BatchNormalization after Conv", "BatchNormalization after Gemm",
                                  "per-channel normalisation (x - mean[c]) / std[c]",
                                  "MatMul 3-D computed @ W + b"])
def test_affine_chains_merge_into_one_linear(name):
    assert kinds(_run_case(name)) == ["input", "linear"]


def test_residual_block_merges_into_one_linear():
    g = _run_case("residual Add and Sub of computed tensors (DAG)")
    # a, b, s, rr, t, u become one node; m (one neuron broadcast to six) stays apart, since
    # merging it would turn a 6-entry column into a dense 6x6 block
    assert kinds(g) == ["input", "linear", "relu", "linear", "linear", "relu", "linear"]
    assert g.nodes[4].inputs == (2, 3) and g.nodes[3].size == 1


def test_normalise_flatten_matmul_add_is_one_linear():
    model = make_model([node("Sub", ["x", "mean"], ["a"]), node("Div", ["a", "std"], ["b"]),
                        node("Flatten", ["b"], ["f"]), node("MatMul", ["f", "W"], ["m"]),
                        node("Add", ["m", "bias"], ["h"]), node("Relu", ["h"], ["r"]),
                        node("MatMul", ["r", "W2"], ["y"])],
                       {"mean": np.float32(0.3), "std": np.float32(0.2), "W": W(12, 5),
                        "bias": W(5, seed=1), "W2": W(5, 2, seed=2)}, [1, 1, 3, 4])
    g = check(model)
    assert kinds(g) == ["input", "linear", "relu", "linear"]
    assert g.nodes[1].origin.split("+")[0] == "Sub"


def _random_dag(seed) -> Graph:
    """A random DAG of the IR's node kinds with long affine chains, residual adds and a maxpool."""
    rng = np.random.default_rng(seed)
    nodes = [Input((), (1, 2, 3, 3))]

    def lin(inputs, size, sparse=False):
        mats = []
        for j in inputs:
            A = rng.normal(size=(size, nodes[j].size))
            if sparse:
                A = sp.csr_array(A * (rng.random(A.shape) < 0.3))
            mats.append(A)
        nodes.append(Linear(tuple(inputs), (size,), mats=tuple(mats), bias=rng.normal(size=size)))
        return len(nodes) - 1

    a = lin([0], 12)
    b = lin([a], 12, sparse=True)
    c = lin([b], 8)
    r = len(nodes); nodes.append(Relu((c,), (8,)))
    d = lin([r], 8, sparse=True)
    e = lin([d, r, 0], 8)                       # residual: d, its own input and the network input
    f = lin([e], 8)
    nodes.append(MaxPool((f,), (4,), windows=np.array([[0, 1], [2, 3], [4, -1], [5, 7]])))
    m = len(nodes) - 1
    g = lin([m], 6)
    s = len(nodes); nodes.append(Relu((g,), (6,)))
    h = lin([s, g], 5)                          # g is used twice: must not be merged away
    lin([h], 3)
    lin([0], 4)                                 # dead node: pruned
    return Graph(nodes, output=len(nodes) - 2)


@pytest.mark.parametrize("seed", range(4))
def test_simplify_keeps_the_function(seed):
    g = _random_dag(seed)
    x = np.random.default_rng(100 + seed).uniform(-1, 1, (20, g.n_inputs))
    before = g.forward(x)
    s = simplify(g)
    assert np.allclose(s.forward(x), before, rtol=1e-10, atol=1e-10)
    assert len(s.nodes) < len(g.nodes)
    # the graph handed in is left as it was
    assert np.array_equal(g.forward(x), before)
    g._check()


def test_exported_graph_round_trips():
    """graph_to_onnx writes Linear nodes as MatMul + Sum: the loader reads them back."""
    rng = np.random.default_rng(3)
    nodes = [Input((), (1, 5)),
             Linear((0,), (6,), mats=(rng.normal(size=(6, 5)),), bias=rng.normal(size=6)),
             Relu((1,), (6,)),
             Linear((2, 0), (4,), mats=(sp.csr_array(rng.normal(size=(4, 6))),
                                         rng.normal(size=(4, 5))), bias=rng.normal(size=4))]
    g = Graph(nodes)
    loaded = check(graph_to_onnx(g), lo=-1)
    x = rng.uniform(-1, 1, (10, 5))
    assert np.allclose(loaded.forward(x), g.forward(x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# files: gzip, external data, broken files
# --------------------------------------------------------------------------------------------
def _small_model():
    return make_model([node("Gemm", ["x", "W", "b"], ["h"]), node("Relu", ["h"], ["r"]),
                       node("Gemm", ["r", "W2"], ["y"])],
                      {"W": W(4, 16), "b": W(16, seed=1), "W2": W(16, 3, seed=2)}, [1, 4])


def test_gzip_file(tmp_path):
    path = tmp_path / "net.onnx.gz"
    path.write_bytes(gzip.compress(_small_model().SerializeToString()))
    g = load(path)
    assert_matches_ort(g, session(_small_model()))
    assert g.source == str(path) and onnx.load_from_string(g.model_bytes).graph.node


def test_external_data_inside_the_folder(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "net.onnx"
    onnx.save_model(_small_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="data/weights.bin", size_threshold=0)
    assert (tmp_path / "data" / "weights.bin").stat().st_size > 0
    g = load(path)
    assert_matches_ort(g, session(path))


def _external_model(tmp_path, location):
    """A model in ``tmp_path/sub`` whose weights live in ``tmp_path/x.bin``, referenced as
    ``location``."""
    sub = tmp_path / "sub"
    sub.mkdir(exist_ok=True)
    onnx.save_model(_small_model(), tmp_path / "tmp.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="x.bin", size_threshold=0)
    model = onnx.load(tmp_path / "tmp.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path = sub / "net.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["../x.bin", "ABS", "link.bin", "data/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, monkeypatch, where):
    outside = (tmp_path / "x.bin").resolve()
    location = str(outside) if where == "ABS" else where
    path = _external_model(tmp_path, location)
    if where == "link.bin":
        os.symlink(outside, path.parent / "link.bin")
    opened = []
    real_open, real_os_open = open, os.open

    def spy(file, *a, **k):
        opened.append(Path(file).resolve() if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *a, **k)

    def os_spy(file, *a, **k):
        opened.append(Path(file).resolve())
        return real_os_open(file, *a, **k)
    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr("io.open", spy)
    monkeypatch.setattr("os.open", os_spy)
    with pytest.raises(ModelError) as e:
        load(path)
    monkeypatch.undo()
    # refused by the loader's own check (not only by onnx's), before any external file is opened
    assert "outside" in str(e.value) and "refused" in str(e.value) and "\n" not in str(e.value)
    assert outside not in opened


def test_external_data_in_a_subgraph_is_checked(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.bin").write_bytes(np.ones(4, np.float32).tobytes())
    t = TensorProto(name="c", data_type=F, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "../x.bin"), ("length", "16")]:
        t.external_data.add(key=k, value=v)
    branch = helper.make_graph([node("Constant", [], ["k"], value=t)], "b", [],
                               [helper.make_tensor_value_info("k", F, [4])])
    model = make_model([node("If", ["cond"], ["k"], then_branch=branch, else_branch=branch),
                        node("Add", ["x", "k"], ["y"])], {"cond": np.array(True)}, [1, 4])
    path = tmp_path / "sub" / "net.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="outside"):
        load(path)


def _one_line_error(path) -> str:
    with pytest.raises(ModelError) as e:
        load(path)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_broken_files(tmp_path):
    data = _small_model().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "truncated.onnx.gz").write_bytes(gzip.compress(data)[:100])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    (tmp_path / "folder.onnx").mkdir()
    for name in ["truncated.onnx", "random.onnx", "empty.onnx", "truncated.onnx.gz", "text.onnx",
                 "folder.onnx", "missing.onnx"]:
        _one_line_error(tmp_path / name)
    assert "not found" in _one_line_error(tmp_path / "missing.onnx")
    assert "directory" in _one_line_error(tmp_path / "folder.onnx")


def test_all_unsupported_ops_are_listed_at_once():
    model = make_model([
        node("Gemm", ["x", "W"], ["h"], name="fc"),
        node("Exp", ["h"], ["s"], name="exp1"), node("Sin", ["s"], ["t"], name="sin_after"),
        node("Softmax", ["h"], ["m"], name="soft2"),
        node("Mul", ["h", "h"], ["q"], name="square3"),
        node("Add", ["t", "m"], ["a"]), node("Add", ["a", "q"], ["y"])], {"W": W(4, 3)}, [1, 4])
    with pytest.raises(ModelError) as e:
        convert(model)
    msg = str(e.value)
    assert "\n" not in msg
    for word in ["Exp", "exp1", "Softmax", "soft2", "Mul", "square3", "Sin", "sin_after"]:
        assert word in msg, word
    assert "fc" not in msg.replace("Softmax", "")


def test_unsupported_ops_off_the_output_path_are_ignored():
    model = _small_model()
    model.graph.node.extend([node("Exp", ["h"], ["unused"]),
                             node("Mul", ["r", "r"], ["unused2"])])
    check(model)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_weights_are_refused_naming_the_node(bad):
    K = W(4, 3)
    K[1, 2] = bad
    model = make_model([node("Gemm", ["x", "K"], ["h"], name="fc_bad"), node("Relu", ["h"], ["y"])],
                       {"K": K}, [1, 4])
    with pytest.raises(ModelError, match="fc_bad"):
        convert(model)
    conv = make_model([node("Conv", ["x", "K", "B"], ["y"], name="conv_bad")],
                      {"K": W(2, 1, 2, 2), "B": np.array([0, bad], np.float32)}, [1, 1, 3, 3])
    with pytest.raises(ModelError, match="conv_bad"):
        convert(conv)


def test_model_level_errors():
    two_inputs = make_model([node("Add", ["x", "z"], ["y"])], {}, [1, 4])
    two_inputs.graph.input.append(helper.make_tensor_value_info("z", F, [1, 4]))
    assert "one input" in str(pytest.raises(ModelError, convert, two_inputs).value)
    const_out = make_model([node("Identity", ["c"], ["y"])], {"c": W(3)}, [1, 4])
    assert "depend" in str(pytest.raises(ModelError, convert, const_out).value)
    dangling = make_model([node("Add", ["x", "nowhere"], ["y"])], {}, [1, 4])
    assert "nowhere" in str(pytest.raises(ModelError, convert, dangling).value)
    cast_int = make_model([node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                           node("Cast", ["i"], ["y"], to=F)], {}, [1, 4])
    assert "Cast" in str(pytest.raises(ModelError, convert, cast_int).value)


def test_more_model_level_errors():
    sym = make_model([node("Relu", ["x"], ["y"])], {}, ["N", "C", 4])
    assert "dimension 1" in str(pytest.raises(ModelError, convert, sym).value)
    cycle = make_model([node("Add", ["x", "b"], ["a"]), node("Relu", ["a"], ["b"]),
                        node("Relu", ["b"], ["y"])], {}, [1, 4])
    assert "cycle" in str(pytest.raises(ModelError, convert, cycle).value)
    train = make_model([node("Dropout", ["x", "r", "t"], ["y"])],
                       {"r": np.float32(0.5), "t": np.array(True)}, [1, 4], opset=13)
    assert "training" in str(pytest.raises(ModelError, convert, train).value)
    bad_shape = make_model([node("MatMul", ["x", "W"], ["y"], name="mm")], {"W": W(5, 2)}, [1, 4])
    msg = str(pytest.raises(ModelError, convert, bad_shape).value)
    assert "mm" in msg and "\n" not in msg


def test_initializers_listed_as_inputs():
    """Old exporters (IR < 4) list every initializer among the graph inputs."""
    model = _small_model()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, F, list(t.dims))
                             for t in model.graph.initializer)
    check(model)


def test_identity_model_and_unordered_nodes():
    check(make_model([node("Identity", ["x"], ["y"])], {}, [1, 4]))
    model = _small_model()
    nodes = list(model.graph.node)[::-1]          # not in topological order: onnxruntime sorts
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    check(model)


# --------------------------------------------------------------------------------------------
# every shipped and benchmark model
# --------------------------------------------------------------------------------------------
MODELS = sorted(glob.glob(str(ROOT / "benchmarks/**/*.onnx"), recursive=True)) + \
    sorted(glob.glob(str(ROOT / "models/*.onnx")))


def _acasxu_box():
    text = (ROOT / "benchmarks/vnncomp2022/acasxu/vnnlib/prop_1.vnnlib").read_text()
    lo, hi = np.zeros(5), np.zeros(5)
    for op, i, v in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-\d.e]+)\)\)", text):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    return lo, hi


@pytest.mark.parametrize("path", MODELS, ids=[os.path.relpath(p, ROOT) for p in MODELS])
def test_real_model_matches_onnxruntime(path):
    g = load(path)
    box = _acasxu_box() if "acasxu" in path else None
    assert_matches_ort(g, session(path), box=box)
    # affine chains are merged: at most one Linear node per ReLU layer, plus the last
    assert sum(n.kind == "linear" for n in g.nodes) <= sum(n.kind == "relu" for n in g.nodes) + 1
