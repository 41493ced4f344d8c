"""The layer graph: the one representation every later stage (bounds, attack, MILP) reads.

A network is a DAG of nodes acting on *flat* per-sample vectors (row-major order of the tensor's
ONNX shape, batch dimension fixed to 1).  The node kinds and all their rules live in
``verifier.ops``, one file each: ``Input`` (node 0), ``Linear`` (every affine or index-moving ONNX
op), ``Relu``, ``MaxPool``, and the S-shaped ``Sigmoid`` and ``Tanh``.

Reshape-like ops create no node: a flat vector does not change when its shape does.
Nodes are stored in topological order; ``graph.output`` is the index of the output node.
Weights are float64 so ``forward`` is the network in exact-as-possible arithmetic; the float32
network that onnxruntime runs differs from it by rounding only.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .ops import Input, Linear, MaxPool, Node, Relu, Sigmoid, Tanh, known

__all__ = ["Graph", "Node", "Input", "Linear", "Relu", "MaxPool", "Sigmoid", "Tanh", "is_sparse"]


def is_sparse(A) -> bool:
    return sp.issparse(A)


class Graph:
    """A ReLU network as a DAG of ``Node`` objects (see the module docstring)."""

    def __init__(self, nodes: list[Node], output: int | None = None, name: str = ""):
        self.nodes = list(nodes)
        self.output = len(self.nodes) - 1 if output is None else output
        self.name = name
        self.source: str | None = None          # the file it was loaded from
        self.model_bytes: bytes | None = None   # the ONNX model, for replay in onnxruntime
        # what the graph leaves out of the ONNX model, one line each (shown in the summary)
        self.notes: list[str] = []
        # set when the model's output Softmax was dropped: the group id of every output (the
        # outputs normalised together); the graph then returns the logits, and only properties
        # comparing two outputs of one group mean the same on both (api.check_property)
        self.output_groups: np.ndarray | None = None
        self._check()

    # -- structure -------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def n_inputs(self) -> int:
        return self.nodes[0].size

    @property
    def n_outputs(self) -> int:
        return self.nodes[self.output].size

    @property
    def relu_count(self) -> int:
        return sum(n.size for n in self.nodes if isinstance(n, Relu))

    @property
    def param_count(self) -> int:
        return sum(n.params for n in self.nodes)

    def consumers(self) -> list[list[int]]:
        users: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                users[j].append(i)
        return users

    def _check(self) -> None:
        """Topological order and matching sizes: a broken graph must fail here, not in a solver."""
        if not self.nodes or not isinstance(self.nodes[0], Input):
            raise ValueError("graph must start with its Input node")
        for i, n in enumerate(self.nodes):
            try:
                known(n)
            except TypeError as e:
                raise ValueError(f"node {i}: {e}") from None
            if any(j >= i or j < 0 for j in n.inputs):
                raise ValueError(f"node {i} ({n.name}) reads a later node")
            if isinstance(n, Input) and i != 0:
                raise ValueError("only one Input node is supported")
            try:
                n.check([self.nodes[j].size for j in n.inputs])
            except ValueError as e:
                raise ValueError(f"node {i} ({n.name}): {e}") from None

    # -- evaluation ------------------------------------------------------------------------
    def _as_batch(self, x) -> tuple[np.ndarray, bool]:
        x = np.asarray(x, dtype=np.float64)
        if x.size == self.n_inputs:
            return x.reshape(1, -1), True
        if x.size % self.n_inputs:
            raise ValueError(f"input of shape {x.shape} does not fit the model's input shape "
                             f"{self.input_shape} ({self.n_inputs} values per sample)")
        return x.reshape(-1, self.n_inputs), False

    def forward_all(self, x) -> list[np.ndarray]:
        """Every node's value, each ``(N, node.size)``, for a batch ``x`` of N samples."""
        batch, _ = self._as_batch(x)
        values: list[np.ndarray] = [batch]
        for n in self.nodes[1:]:
            values.append(n.apply([values[j] for j in n.inputs]))
        return values

    def forward(self, x) -> np.ndarray:
        """The network in float64.  One sample (any shape holding ``n_inputs`` values) gives the flat
        output ``(n_outputs,)``; a batch (``(N, …)``) gives ``(N, n_outputs)``."""
        batch, single = self._as_batch(x)
        out = self.forward_all(batch)[self.output]
        return out[0] if single else out

    # -- reporting -------------------------------------------------------------------------
    def summary(self) -> str:
        lines = [f"{'#':>3}  {'node':<8} {'from ONNX ops':<34} {'output shape':<18} {'params':>9}  relus"]
        for i, n in enumerate(self.nodes):
            relus = n.size if isinstance(n, Relu) else 0
            lines.append(f"{i:>3}  {n.kind:<8} {(n.origin or '-')[:34]:<34} {str(list(n.shape)):<18} "
                         f"{n.params:>9}  {relus or ''}")
        lines.append(f"input {list(self.input_shape)} ({self.n_inputs} values), "
                     f"output {self.n_outputs} values, {self.param_count} parameters, "
                     f"{self.relu_count} ReLUs, {len(self.nodes)} nodes")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)
