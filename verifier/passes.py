"""Graph passes run after loading: merge chains of affine nodes, drop dead nodes.

Fewer Linear nodes means fewer solver variables and fewer back-substitution steps; a normalisation
``Sub``/``Div`` before a ``Gemm`` or a ``BatchNormalization`` after a ``Conv`` disappears into its
neighbour.  Merging is exact up to float64 rounding; the merged node remembers how the two ops
round when onnxruntime runs them in float32 (``Linear.chain_absimg``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from .graph import Graph, Input, Linear, Node
from .ops.conv import compose


def _nnz(A) -> int:
    return A.size if isinstance(A, np.ndarray) else A.nnz


def _product(A, B):
    """``A @ B`` in the cheaper storage: dense unless the result is sparse enough to pay off."""
    if isinstance(A, np.ndarray) or isinstance(B, np.ndarray):
        P = A @ B
        P = P if isinstance(P, np.ndarray) else np.asarray(P.toarray() if sp.issparse(P) else P)
    else:
        P = sp.csr_array(A @ B)
        if P.nnz > 0.5 * P.shape[0] * P.shape[1]:
            P = P.toarray()
    return P


def _abs_mat(node: Linear, k: int):
    """The magnitude matrix of input ``k`` of ``node``'s op chain (see ``Linear.chain_absimg``)."""
    return node.abs_mat(k) if node.abs_mats is None else node.abs_mats[k]


def _abs_bias(node: Linear) -> np.ndarray:
    return np.abs(node.bias) if node.abs_bias is None else node.abs_bias


def _merge(outer: Linear, k: int, inner: Linear):
    """Substitute ``inner`` (input ``k`` of ``outer``) into ``outer``; ``None`` if it would grow.
    The float32 bookkeeping of the chain (magnitudes and rounded terms of the two ops, which
    onnxruntime still runs one after the other) is carried into the merged node."""
    A = outer.mats[k]
    Aabs = _abs_mat(outer, k)
    terms, mags, convs = {}, {}, {}
    for kk, (j, B) in enumerate(zip(inner.inputs, inner.mats)):
        terms[j] = _product(A, B)
        mags[j] = _product(Aabs, _abs_mat(inner, kk))
        convs[j] = compose(A, outer.conv(k), B, inner.conv(kk))
    if sum(_nnz(P) for P in terms.values()) > _nnz(A) + sum(_nnz(B) for B in inner.mats):
        return None
    for kk, (j, B) in enumerate(zip(outer.inputs, outer.mats)):
        if j != outer.inputs[k]:
            convs[j] = None if j in terms else outer.conv(kk)      # a sum: no kernel form
            terms[j] = terms[j] + B if j in terms else B
            mags[j] = mags[j] + _abs_mat(outer, kk) if j in mags else _abs_mat(outer, kk)
    bias = outer.bias + A @ inner.bias
    as_type = lambda P: np.asarray(P) if isinstance(P, np.ndarray) else sp.csr_array(P)
    merged = Linear(tuple(terms), outer.shape, name=outer.name,
                    origin=f"{inner.origin}+{outer.origin}", params=inner.params + outer.params,
                    mats=tuple(as_type(P) for P in terms.values()),
                    bias=np.asarray(bias, np.float64),
                    abs_mats=tuple(as_type(M) for M in mags.values()),
                    abs_bias=np.asarray(_abs_bias(outer) + Aabs @ _abs_bias(inner), np.float64),
                    chain_terms=outer.terms32 + inner.terms32)
    merged.set_convs([convs[j] for j in terms])
    return merged


def simplify(graph: Graph) -> Graph:
    """Merge every Linear node whose only consumer is another Linear node into that consumer
    (when the merged matrices are no larger than the two), then drop nodes the output does not
    use.  Returns a new graph computing the same function; ``graph`` itself is left unchanged."""
    nodes: list[Node | None] = list(graph.nodes)
    users: list[set[int]] = [set() for _ in nodes]
    for i, n in enumerate(nodes):
        for j in n.inputs:
            users[j].add(i)
    i = 0
    while i < len(nodes):          # after a merge, look at node i again: it has new inputs
        n = nodes[i]
        merged = False
        if isinstance(n, Linear):
            for k, j in enumerate(n.inputs):
                inner = nodes[j]
                if isinstance(inner, Linear) and users[j] == {i} and j != graph.output:
                    m = _merge(n, k, inner)
                    if m is not None:
                        nodes[i], nodes[j], users[j] = m, None, set()
                        for p in inner.inputs:
                            users[p].discard(j)
                            users[p].add(i)
                        merged = True
                        break
        i += not merged
    return _prune(nodes, graph.output, graph.name)


def _prune(nodes: list[Node | None], output: int, name: str) -> Graph:
    """Keep the input and the nodes the output depends on, renumbered in the same order (new
    node objects: the nodes handed in are not modified)."""
    live = {0, output}
    for i in range(output, -1, -1):
        if i in live:
            live.update(nodes[i].inputs)
    order = sorted(live)
    new_id = {old: new for new, old in enumerate(order)}
    kept = [replace(nodes[old], inputs=tuple(new_id[j] for j in nodes[old].inputs))
            for old in order]
    assert isinstance(kept[0], Input)
    return Graph(kept, output=new_id[output], name=name)
