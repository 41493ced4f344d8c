"""Write a layer graph back to ONNX, so graphs built in code (tests, tiny hand-made nets) can be run
and replayed in onnxruntime exactly like loaded models.

The exported model takes the graph's input shape and returns the flat output ``(1, n_outputs)``.
Weights are stored as float32, as onnxruntime runs them.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import Graph


def graph_to_onnx(graph: Graph, opset: int = 17) -> onnx.ModelProto:
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    names: list[str] = []
    for i, n in enumerate(graph.nodes):
        out = f"n{i}"
        nodes += n.onnx_nodes([names[j] for j in n.inputs], out, const)
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
