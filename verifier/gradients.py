"""Reverse-mode gradients through the layer graph, in float64 numpy, for a batch of samples.

``backward(graph, values, cot)`` takes the node values of ``graph.forward_all(x)`` for a batch of N
inputs and a cotangent ``cot`` (N, n_outputs) on the output node, and returns the vector-Jacobian
product ``d(sum_o cot[:, o] * y[:, o]) / dx`` as an ``(N, n_inputs)`` array, one row per sample.

What is guaranteed: wherever the network is differentiable at a sample (no ReLU input exactly 0, no
tie between the two largest entries of a max-pool window) the row is the exact gradient up to float64
rounding.  At kinks the result is one valid one-sided choice (ReLU: derivative 0 at 0; max-pool: the
first maximal entry of the window), i.e. a subgradient-like direction good enough for attacks.  These
gradients steer the search only; nothing here is used as a proof.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph


def backward(graph: Graph, values: list[np.ndarray], cot: np.ndarray, leak=0.0) -> np.ndarray:
    """d/dx of ``sum(cot * y)`` per sample; ``values`` from ``graph.forward_all`` (see module doc).

    ``leak`` (a scalar, or one value per sample) replaces the ReLU derivative 0 on inactive inputs:
    with ``leak > 0`` the result is no longer the gradient but a *surrogate* that also sees through
    inactive ReLUs (attacks use it to escape regions where most neurons are off).  Default: exact.
    """
    cot = np.asarray(cot, dtype=np.float64)
    N = values[0].shape[0]
    if cot.shape != (N, graph.n_outputs):
        raise ValueError(f"cotangent shape {cot.shape} != {(N, graph.n_outputs)}")
    # adjoints of nodes after graph.output (or not feeding it) stay None and are skipped
    adj: list[np.ndarray | None] = [None] * len(graph.nodes)
    adj[graph.output] = cot.copy()
    for i in range(graph.output, 0, -1):
        g = adj[i]
        if g is None:
            continue
        node = graph.nodes[i]
        for j, gj in zip(node.inputs, node.vjp([values[j] for j in node.inputs], g, leak)):
            adj[j] = gj if adj[j] is None else adj[j] + gj
        adj[i] = None   # free memory as we go
    out = adj[0]
    return np.zeros((N, graph.n_inputs)) if out is None else out
