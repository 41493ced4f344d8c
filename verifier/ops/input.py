"""Input: the network input, node 0 of every graph; ``shape`` is the ONNX input shape with
symbolic dimensions set to 1.  Its bounds are the input box itself."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Node


@dataclass(eq=False)
class Input(Node):
    kind = "input"

    def check(self, sizes: list[int]) -> None:
        if self.inputs:
            raise ValueError("the input node reads nothing")

    def onnx_nodes(self, ins: list[str], out: str, const) -> list:
        from onnx import helper
        shape = const(f"{out}_shape", np.array([1, self.size], np.int64))
        return [helper.make_node("Reshape", ["input", shape], [out])]
