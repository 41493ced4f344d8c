"""Write a layer graph back to ONNX, so graphs built in code (tests, tiny hand-made nets) can be run
and replayed in onnxruntime exactly like loaded models.

The exported model takes the graph's input shape and returns the flat output ``(1, n_outputs)``.
Weights are stored as float32, as onnxruntime runs them.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import Graph, Input, Linear, MaxPool, Relu


def graph_to_onnx(graph: Graph, opset: int = 17) -> onnx.ModelProto:
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    names: list[str] = []
    for i, n in enumerate(graph.nodes):
        out = f"n{i}"
        if isinstance(n, Input):
            shape = const("flat_shape", np.array([1, n.size], np.int64))
            nodes.append(helper.make_node("Reshape", ["input", shape], [out]))
        elif isinstance(n, Linear):
            terms = []
            for k, (A, j) in enumerate(zip(n.mats, n.inputs)):
                dense = A.toarray() if hasattr(A, "toarray") else np.asarray(A)
                w = const(f"W{i}_{k}", dense.T.astype(np.float32))
                nodes.append(helper.make_node("MatMul", [names[j], w], [f"{out}_t{k}"]))
                terms.append(f"{out}_t{k}")
            b = const(f"b{i}", n.bias.astype(np.float32).reshape(1, -1))
            nodes.append(helper.make_node("Sum", terms + [b], [out]))
        elif isinstance(n, Relu):
            nodes.append(helper.make_node("Relu", [names[n.inputs[0]]], [out]))
        elif isinstance(n, MaxPool):
            pad = const(f"pad{i}", np.full((1, 1), -np.inf, np.float32))
            nodes.append(helper.make_node("Concat", [names[n.inputs[0]], pad], [f"{out}_p"], axis=1))
            # index -1 addresses the appended -inf column, as in MaxPool.apply
            idx = const(f"win{i}", n.windows.astype(np.int64))
            nodes.append(helper.make_node("Gather", [f"{out}_p", idx], [f"{out}_g"], axis=1))
            nodes.append(helper.make_node("ReduceMax", [f"{out}_g"], [out], axes=[2], keepdims=0))
        names.append(out)
    nodes.append(helper.make_node("Identity", [names[graph.output]], ["output"]))
    g = helper.make_graph(
        nodes, graph.name or "graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(graph.input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, graph.n_outputs])],
        inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
