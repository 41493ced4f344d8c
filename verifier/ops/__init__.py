"""The node kinds of the layer graph, one file each, and the rule table the graph walks use.

Each kind holds its parameters and its rules (see ``base``): forward, vector-Jacobian product,
interval and linear relaxation (relaxed kinds) or matrix products (affine kinds), MILP rows, and
its ONNX form.  A walk over the graph looks a node's rules up here; a kind without rules is an
error that names it.  To add a kind: one file here defining a ``Node`` subclass, and a line in
``KINDS``.
"""
from __future__ import annotations

from .base import Node, Relaxation
from .input import Input
from .linear import Linear
from .maxpool import MaxPool
from .relu import Relu
from .sshape import Sigmoid, Tanh

KINDS = (Input, Linear, Relu, MaxPool, Sigmoid, Tanh)

__all__ = ["Node", "Relaxation", "Input", "Linear", "Relu", "MaxPool", "Sigmoid", "Tanh", "KINDS",
           "known"]


def known(node) -> None:
    """Raise ``TypeError`` naming the kind if ``node`` is not one the package has rules for."""
    if type(node) not in KINDS:
        raise TypeError(f"no rules for node kind {type(node).__name__}")
