"""The layer graph: the one representation every later stage (bounds, attack, MILP) reads.

A network is a DAG of four node kinds acting on *flat* per-sample vectors (row-major order of the
tensor's ONNX shape, batch dimension fixed to 1):

- ``Input``    the network input; ``shape`` is the ONNX input shape with symbolic dims set to 1.
- ``Linear``   ``y = sum_k A_k @ x_k + b`` over one or more earlier nodes.  Every affine or
               index-moving ONNX op (Gemm, MatMul, Conv, BatchNorm, AveragePool, Add/Sub/Mul/Div by
               constants, Transpose, Pad, Slice, Concat, residual Add …) becomes one of these; each
               ``A_k`` is a dense ``np.ndarray`` or a ``scipy.sparse.csr_array`` (convolutions,
               permutations, diagonals).
- ``Relu``     elementwise ``max(x, 0)`` of one node.
- ``MaxPool``  ``y_i = max_j x[windows[i, j]]``; entries ``-1`` in ``windows`` are padding (ignored).

Reshape-like ops create no node: a flat vector does not change when its shape does.
Nodes are stored in topological order; ``graph.output`` is the index of the output node.
Weights are float64 so ``forward`` is the network in exact-as-possible arithmetic; the float32
network that onnxruntime runs differs from it by rounding only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass(eq=False)
class Node:
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str = ""          # the ONNX output name this node was made from
    origin: str = ""        # the ONNX op types folded into it, e.g. "Conv+BatchNormalization"
    params: int = 0         # number of ONNX weight values that went into it

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(eq=False)
class Input(Node):
    kind = "input"


@dataclass(eq=False)
class Linear(Node):
    mats: tuple = ()                    # one matrix per input, shape (size, inputs[k].size)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kind = "linear"

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        """Rows of ``xs[k]`` are samples; returns ``(N, size)``."""
        out = np.broadcast_to(self.bias, (xs[0].shape[0], self.size)).copy()
        for A, x in zip(self.mats, xs):
            out += x @ A.T if isinstance(A, np.ndarray) else (A @ x.T).T
        return out


@dataclass(eq=False)
class Relu(Node):
    kind = "relu"


@dataclass(eq=False)
class MaxPool(Node):
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    kind = "maxpool"

    def apply(self, x: np.ndarray) -> np.ndarray:
        padded = np.concatenate([x, np.full((x.shape[0], 1), -np.inf)], axis=1)
        return padded[:, self.windows].max(axis=2)   # index -1 picks the -inf column


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
            if any(j >= i or j < 0 for j in n.inputs):
                raise ValueError(f"node {i} ({n.name}) reads a later node")
            if isinstance(n, Input):
                if i != 0:
                    raise ValueError("only one Input node is supported")
            elif isinstance(n, Linear):
                if len(n.mats) != len(n.inputs) or n.bias.shape != (n.size,):
                    raise ValueError(f"node {i} ({n.name}): matrices do not match inputs")
                for A, j in zip(n.mats, n.inputs):
                    if A.shape != (n.size, self.nodes[j].size):
                        raise ValueError(f"node {i} ({n.name}): matrix {A.shape} does not map "
                                         f"{self.nodes[j].size} values to {n.size}")
            elif isinstance(n, Relu):
                if len(n.inputs) != 1 or self.nodes[n.inputs[0]].size != n.size:
                    raise ValueError(f"node {i} ({n.name}): relu must keep its input's size")
            elif isinstance(n, MaxPool):
                if len(n.inputs) != 1 or n.windows.shape[0] != n.size:
                    raise ValueError(f"node {i} ({n.name}): bad maxpool windows")
                if (n.windows.max(axis=1) < 0).any():
                    raise ValueError(f"node {i} ({n.name}): a maxpool window holds only padding")
            else:
                raise ValueError(f"node {i}: unknown node type {type(n).__name__}")

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
        values: list[np.ndarray] = []
        for n in self.nodes:
            if isinstance(n, Input):
                values.append(batch)
            elif isinstance(n, Linear):
                values.append(n.apply([values[j] for j in n.inputs]))
            elif isinstance(n, Relu):
                values.append(np.maximum(values[n.inputs[0]], 0.0))
            else:
                values.append(n.apply(values[n.inputs[0]]))
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
        return "\n".join(lines)
