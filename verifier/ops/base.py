"""What every node kind provides: the protocol of the rule table.

A node is one operation on flat per-sample vectors (row-major order of the ONNX tensor).  Its class
holds its parameters and every rule the rest of the package needs, so adding a kind means adding
one file to this package:

- ``apply(xs)``          forward in float64 on a batch (``xs[k]`` is ``(N, size of input k)``)
- ``vjp(xs, cot, leak)``  vector-Jacobian product, one cotangent per input (attacks, gradients)
- ``check(sizes)``        structural checks given the sizes of the input nodes
- ``encode(b, xs, ...)``  its MILP rows through an ``encode`` builder (see ``verifier.encode``)
- ``support(keep, ...)``  which entries of each input the kept output entries read (LP models)
- ``onnx_nodes(...)``     its ONNX form, so graphs built in code replay in onnxruntime

Affine kinds (``affine = True``, only ``Linear``) are back-substituted through their matrices by the
bound engine.  Every other kind is *relaxed*: ``interval(lo, hi)`` maps sound input bounds to sound
output bounds (exactly, in float), ``relax(lo, hi, ...)`` gives a ``Relaxation``: two linear
functions of the input that bound the output from below and above on the box, and
``error_bound(e)`` bounds how far the output moves when the input moves by at most ``e``.  The engine
(``verifier.bounds.engine``) is the only place that turns these into bounds; the float-error proof
lives there, once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Node:
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str = ""          # the ONNX output name this node was made from
    origin: str = ""        # the ONNX op types folded into it, e.g. "Conv+BatchNormalization"
    params: int = 0         # number of ONNX weight values that went into it

    kind = "node"
    affine = False
    outer = False           # True: its MILP rows are an outer approximation (S-shaped kinds), so
                            # a solver's point is no network evaluation

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def check(self, sizes: list[int]) -> None:
        """Raise ``ValueError`` if the node does not fit inputs of these sizes."""

    def support(self, keep: np.ndarray, lo_in: list, hi_in: list) -> list[np.ndarray]:
        """For a mask of kept output entries, masks of the input entries they depend on, given
        the inputs' bounds (an entry whose value the bounds fix needs nothing)."""
        raise NotImplementedError(type(self).__name__)


@dataclass
class Relaxation:
    """Linear bounds of a relaxed node ``y = f(x)`` valid on the current input bounds, per domain:

        lo_slope * x[src] + lo_off  <=  y  <=  up_slope * x[src] + up_off     (elementwise in y)

    in exact arithmetic on these float arrays, where ``src = select`` (``(B, size_y)`` indices into
    ``x``; e.g. the chosen entry of each max-pool window) or, when ``select`` is None, the same index
    (elementwise kinds, ``size_y == size_x``).  Arrays are ``(B, size_y)``; ``lo_slope`` may also be
    ``(B, k, size_y)`` (one slope per objective row, as optimised slopes are).  An offset of None
    is zero.  ``free`` marks the entries whose lower slope is a free choice in [0, 1] (unstable
    ReLUs): the ones slope optimisation may move; slopes outside ``free`` are exactly 0 or 1 (so
    elementwise products with them do not round), or the lines hold with a margin of ``u |slope|
    max|x|`` that covers the rounding of those products (``ops.sshape``).  ``free`` None: no free
    entries."""
    lo_slope: np.ndarray
    up_slope: np.ndarray
    lo_off: np.ndarray | None = None
    up_off: np.ndarray | None = None
    select: np.ndarray | None = None
    free: np.ndarray | None = None
