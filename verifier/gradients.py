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

from .graph import Graph, Input, Linear, MaxPool, Relu, is_sparse


def _linear_vjp(A, cot: np.ndarray) -> np.ndarray:
    """cot (N, m) times A (m, k) -> (N, k), for dense or sparse A."""
    if is_sparse(A):
        return np.asarray((A.T @ cot.T).T)
    return cot @ A


def _maxpool_vjp(node: MaxPool, x: np.ndarray, cot: np.ndarray) -> np.ndarray:
    """Route each window's cotangent to the (first) argmax entry of that window."""
    N, n_in = x.shape
    padded = np.concatenate([x, np.full((N, 1), -np.inf)], axis=1)
    vals = padded[:, node.windows]                        # (N, out, w)
    arg = vals.argmax(axis=2)                             # (N, out); never a padding slot
    src = node.windows[np.arange(node.size)[None, :], arg]  # (N, out) input index
    flat = (np.arange(N)[:, None] * n_in + src).ravel()
    grad = np.bincount(flat, weights=cot.ravel(), minlength=N * n_in)
    return grad.reshape(N, n_in)


def backward(graph: Graph, values: list[np.ndarray], cot: np.ndarray, leak=0.0) -> np.ndarray:
    """d/dx of ``sum(cot * y)`` per sample; ``values`` from ``graph.forward_all`` (see module doc).

    ``leak`` (a scalar, or one value per sample) replaces the ReLU derivative 0 on inactive inputs:
    with ``leak > 0`` the result is no longer the gradient but a *surrogate* that also sees through
    inactive ReLUs (attacks use it to escape regions where most neurons are off).  Default: exact.
    """
    cot = np.asarray(cot, dtype=np.float64)
    N = values[0].shape[0]
    leak = np.asarray(leak, dtype=np.float64)
    if leak.ndim == 1:
        leak = leak[:, None]
    exact = not np.any(leak)
    if cot.shape != (N, graph.n_outputs):
        raise ValueError(f"cotangent shape {cot.shape} != {(N, graph.n_outputs)}")
    # adjoints of nodes after graph.output (or not feeding it) stay None and are skipped
    adj: list[np.ndarray | None] = [None] * len(graph.nodes)
    adj[graph.output] = cot.copy()

    def add(j: int, g: np.ndarray) -> None:
        if adj[j] is None:
            adj[j] = g
        else:
            adj[j] = adj[j] + g

    for i in range(graph.output, 0, -1):
        g = adj[i]
        if g is None:
            continue
        node = graph.nodes[i]
        if isinstance(node, Linear):
            for A, j in zip(node.mats, node.inputs):
                add(j, _linear_vjp(A, g))
        elif isinstance(node, Relu):
            j = node.inputs[0]
            if exact:
                add(j, g * (values[j] > 0.0))
            else:
                add(j, g * np.where(values[j] > 0.0, 1.0, leak))
        elif isinstance(node, MaxPool):
            j = node.inputs[0]
            add(j, _maxpool_vjp(node, values[j], g))
        elif isinstance(node, Input):  # pragma: no cover - only node 0 is an Input
            raise ValueError("unexpected Input node")
        adj[i] = None   # free memory as we go
    out = adj[0]
    return np.zeros((N, graph.n_inputs)) if out is None else out


def value_and_grad(graph: Graph, x: np.ndarray, cot_fn):
    """Forward a batch ``x`` (N, n_in), then backward with ``cot = cot_fn(y)``.

    ``cot_fn(y)`` gets the outputs (N, n_out) and returns ``(cot, aux)``; returns ``(y, grad, aux)``.
    """
    values = graph.forward_all(x)
    y = values[graph.output]
    cot, aux = cot_fn(y)
    return y, backward(graph, values, cot), aux
