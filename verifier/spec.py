"""Input regions and output properties: what a verification query asks.

A ``Property`` is an OR over ``Case``s.  Each case pairs an input ``Box`` with an *unsafe* output
region, itself an OR of ``Conjunction``s of linear constraints ``C @ y <= d``.  The property is
*violated* (VNN-COMP "sat", a counterexample exists) iff some ``x`` in some case's box maps to an
output ``y`` inside one of that case's conjunctions; it *holds* ("unsat") otherwise.

All vectors are flat (row-major order of the model's tensor shape) float64 arrays.  Objects are
frozen and their arrays are made read-only, so a spec can be shared between stages safely.
Every malformed spec raises ``SpecError`` with a one-line message naming the problem.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .config import OptionsError

__all__ = ["SpecError", "Box", "Conjunction", "Case", "Property", "robustness_property",
           "input_vector", "check_norm", "distance", "check_order_only"]


class SpecError(ValueError):
    """A specification is malformed (shapes, NaN/inf, empty box, bad label, ...)."""


def _frozen_array(a, ndim: int, what: str) -> np.ndarray:
    """A read-only float64 copy of ``a`` with exactly ``ndim`` dimensions, all entries finite."""
    try:
        arr = np.array(a, dtype=np.float64)  # always a copy: callers cannot mutate us afterwards
    except (TypeError, ValueError) as e:
        raise SpecError(f"{what} is not a numeric array: {e}") from None
    if arr.ndim != ndim:
        raise SpecError(f"{what} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SpecError(f"{what} contains NaN or infinite entries")
    arr.setflags(write=False)
    return arr


def _flat(v, n: int, what: str) -> np.ndarray:
    """``v`` as a flat float64 vector of length ``n`` (any shape with ``n`` elements is accepted)."""
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise SpecError(f"{what} has {arr.size} entries, expected {n}")
    return arr


# eq=False: numpy arrays have no single truth value, so generated __eq__ would be meaningless.
@dataclass(frozen=True, eq=False)
class Box:
    """The input region ``lower <= x <= upper`` (element-wise).

    Guaranteed after construction: ``lower`` and ``upper`` are read-only 1-D float64 arrays of the
    same length >= 1, all entries finite, and ``lower <= upper`` everywhere (the box is non-empty).
    """

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        lo = _frozen_array(self.lower, 1, "Box.lower")
        hi = _frozen_array(self.upper, 1, "Box.upper")
        if lo.shape != hi.shape:
            raise SpecError(f"Box.lower has shape {lo.shape} but Box.upper has shape {hi.shape}")
        if lo.size == 0:
            raise SpecError("Box has no variables")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise SpecError(f"Box is empty: lower[{i}] = {float(lo[i])!r} > "
                            f"upper[{i}] = {float(hi[i])!r}")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def size(self) -> int:
        """Number of input variables."""
        return int(self.lower.size)

    def contains(self, x, tol: float = 0.0) -> bool:
        """True iff ``lower - tol <= x <= upper + tol`` everywhere (``x`` flattened; NaN -> False)."""
        x = _flat(x, self.size, "x")
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))


@dataclass(frozen=True, eq=False)
class Conjunction:
    """An unsafe output region: every row of ``C @ y <= d`` holds.

    Guaranteed: ``C`` is read-only float64 of shape ``(k, n_outputs)``, ``d`` of shape ``(k,)``,
    all finite.  ``k == 0`` is allowed and means "no constraint": every ``y`` is unsafe.
    """

    C: np.ndarray
    d: np.ndarray

    def __post_init__(self):
        C = _frozen_array(self.C, 2, "Conjunction.C")
        d = _frozen_array(self.d, 1, "Conjunction.d")
        if C.shape[0] != d.shape[0]:
            raise SpecError(f"Conjunction.C has {C.shape[0]} rows but d has {d.shape[0]} entries")
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "d", d)

    @property
    def n_outputs(self) -> int:
        return int(self.C.shape[1])

    def margin(self, y) -> float:
        """``max_i (C_i y - d_i)``: > 0 means ``y`` is outside this region, <= 0 means inside.

        ``-inf`` for an empty conjunction; NaN if ``y`` contains NaN (neither safe nor unsafe).
        """
        y = _flat(y, self.n_outputs, "y")
        if self.d.size == 0:
            return -math.inf
        return float(np.max(self.C @ y - self.d))


@dataclass(frozen=True, eq=False)
class Case:
    """One input box together with its unsafe output region, an OR of conjunctions.

    Guaranteed: ``unsafe`` is a non-empty tuple of ``Conjunction``s with equal ``n_outputs``.
    """

    box: Box
    unsafe: tuple[Conjunction, ...]

    def __post_init__(self):
        if not isinstance(self.box, Box):
            raise SpecError(f"Case.box must be a Box, got {type(self.box).__name__}")
        unsafe = tuple(self.unsafe)
        if not unsafe:
            raise SpecError("Case has no unsafe conjunction (it could never be violated)")
        if not all(isinstance(c, Conjunction) for c in unsafe):
            raise SpecError("Case.unsafe must contain only Conjunction objects")
        if len({c.n_outputs for c in unsafe}) != 1:
            raise SpecError("Case.unsafe mixes conjunctions over different numbers of outputs")
        object.__setattr__(self, "unsafe", unsafe)

    def margin(self, y) -> float:
        """``min`` of the conjunctions' margins: <= 0 iff ``y`` is in the unsafe region."""
        return float(np.min([c.margin(y) for c in self.unsafe]))

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All conjunctions' rows as one ``C @ y - d``, and ``owner[i]``: the conjunction of row i."""
        C = np.vstack([c.C for c in self.unsafe])
        d = np.concatenate([c.d for c in self.unsafe])
        owner = np.repeat(np.arange(len(self.unsafe)), [c.C.shape[0] for c in self.unsafe])
        return C, d, owner


def conjunction_max(rows: np.ndarray, owner: np.ndarray, n_conj: int) -> np.ndarray:
    """Per conjunction, the max over its rows of ``rows`` (``(..., n_rows)`` → ``(..., n_conj)``).

    A conjunction's margin is the max of its rows' values; applied to lower bounds of the rows it
    gives lower bounds of the conjunctions' margins."""
    rows = np.asarray(rows, np.float64)
    out = np.full(rows.shape[:-1] + (n_conj,), -np.inf)
    for c in range(n_conj):
        sel = rows[..., owner == c]
        if sel.shape[-1]:
            out[..., c] = sel.max(axis=-1)
    return out


@dataclass(frozen=True, eq=False)
class Property:
    """OR over cases; violated iff some ``x`` in some case's box has ``y = f(x)`` in its unsafe region.

    Guaranteed: at least one case; every box has ``n_inputs`` variables and every conjunction
    ``n_outputs`` columns.
    """

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int

    def __post_init__(self):
        cases = tuple(self.cases)
        if not cases:
            raise SpecError("Property has no cases")
        for name in ("n_inputs", "n_outputs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise SpecError(f"Property.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        for k, case in enumerate(cases):
            if not isinstance(case, Case):
                raise SpecError(f"Property case {k} is not a Case")
            if case.box.size != self.n_inputs:
                raise SpecError(f"case {k}: box has {case.box.size} variables, "
                                f"expected {self.n_inputs}")
            if case.unsafe[0].n_outputs != self.n_outputs:
                raise SpecError(f"case {k}: constraints have {case.unsafe[0].n_outputs} columns, "
                                f"expected {self.n_outputs}")
        object.__setattr__(self, "cases", cases)

    def violated_by(self, x, y, tol: float = 0.0) -> bool:
        """True iff ``x`` is in some case's box (up to ``tol``) and ``y`` in that case's unsafe region.

        ``tol`` only loosens the box test; the output test is exact (``margin <= 0``), so a
        caller wanting slack on the outputs should re-check ``case.margin`` itself.
        """
        x = _flat(x, self.n_inputs, "x")
        y = _flat(y, self.n_outputs, "y")
        return any(case.box.contains(x, tol) and case.margin(y) <= 0.0 for case in self.cases)


def _index(v, n: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise SpecError(f"{what} must be an integer, got {v!r}")
    if not 0 <= v < n:
        raise SpecError(f"{what} {v} is out of range for {n} outputs")
    return int(v)


def _broadcast_flat(b, n: int) -> np.ndarray:
    a = np.asarray(b, dtype=np.float64)
    return np.broadcast_to(a.reshape(-1) if a.ndim else a, (n,))


def robustness_property(x, label: int, eps: float, domain=(0.0, 1.0), *,
                        n_outputs: int, target: int | None = None) -> Property:
    """L-inf robustness of ``label`` around ``x``: the ball ``|x' - x|_inf <= eps`` clipped to ``domain``.

    ``domain`` is ``(lo, hi)``, scalars or arrays broadcastable to ``x``'s flat shape.  The box is
    ``[clip(x - eps), clip(x + eps)]``; clipping is monotone so ``lower <= upper`` even when ``x``
    lies outside the domain (the box then collapses onto the nearest domain face).

    Unsafe region: one single-row conjunction ``y_label - y_j <= 0`` per other class ``j`` (or only
    ``j = target``).  A tie counts as violated, matching VNN-COMP files.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise SpecError("x must be a non-empty finite array")
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, numbers.Integral) or n_outputs < 2:
        raise SpecError(f"n_outputs must be an integer >= 2, got {n_outputs!r}")
    label = _index(label, n_outputs, "label")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise SpecError(f"eps must be a number, got {eps!r}") from None
    if not eps >= 0.0:  # also rejects NaN
        raise SpecError(f"eps must be >= 0, got {eps!r}")
    try:
        lo, hi = (_broadcast_flat(b, x.size) for b in domain)
    except (TypeError, ValueError) as e:
        raise SpecError(f"domain must be a pair (lo, hi) broadcastable to x: {e}") from None
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
        raise SpecError("domain must satisfy lo <= hi (and contain no NaN)")
    if target is None:
        others = [j for j in range(n_outputs) if j != label]
    else:
        target = _index(target, n_outputs, "target")
        if target == label:
            raise SpecError(f"target {target} equals label")
        others = [target]

    box = Box(np.clip(x - eps, lo, hi), np.clip(x + eps, lo, hi))
    unsafe = []
    for j in others:
        row = np.zeros((1, n_outputs))
        row[0, label], row[0, j] = 1.0, -1.0
        unsafe.append(Conjunction(row, np.zeros(1)))
    return Property((Case(box, tuple(unsafe)),), n_inputs=x.size, n_outputs=n_outputs)


# --------------------------------------------------------------------------------------------
# inputs and distances: shared by the API (building properties) and --check (rebuilding them)
# --------------------------------------------------------------------------------------------
def input_vector(x, n_inputs: int, domain, shape=None) -> np.ndarray:
    """``x`` as a flat float64 vector of ``n_inputs`` values, finite, inside ``domain``
    (``shape``: the model's input shape, only for the message)."""
    x = np.asarray(x)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer)
                               or np.issubdtype(x.dtype, np.floating)):
        raise SpecError(f"input must be a real-valued numeric array, not {x.dtype}")
    x = x.astype(np.float64)
    if x.size != n_inputs:
        where = "" if shape is None else f" (shape {list(shape)})"
        raise SpecError(f"input has {x.size} values but the model expects {n_inputs}{where}")
    if not np.all(np.isfinite(x)):
        raise SpecError("input contains NaN or infinite values")
    lo, hi = domain
    tol = 1e-6 * max(1.0, hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise SpecError(f"input values lie in [{x.min():g}, {x.max():g}], outside the domain "
                        f"[{lo:g}, {hi:g}]; give the model's input range as the domain "
                        f"(--domain LO HI) or rescale the input")
    return x.reshape(-1)


def check_norm(norm) -> str:
    """The distortion norm as ``"inf"`` or ``"1"``; L2 is refused (HiGHS has no MIQP)."""
    n = str(norm).lower().lstrip("l")
    if n in ("inf", "infinity", "∞"):
        return "inf"
    if n == "1":
        return "1"
    if n == "2":
        raise OptionsError("the L2 minimal distortion needs a mixed-integer quadratic program, "
                           "which HiGHS does not solve; use norm inf or 1 (--norm inf, --norm 1)")
    raise OptionsError(f"norm must be inf or 1, got {norm!r}")


def distance(a, b, norm: str) -> float:
    """The exact ``norm`` distance of two float vectors, rounded up to a float (never below)."""
    d = [abs(Fraction(float(u)) - Fraction(float(v))) for u, v in zip(np.ravel(a), np.ravel(b))]
    exact = max(d, default=Fraction(0)) if norm == "inf" else sum(d, Fraction(0))
    f = float(exact)
    return f if Fraction(f) >= exact else float(np.nextafter(f, np.inf))


def check_order_only(prop: Property, groups: np.ndarray, what: str) -> None:
    """Refuse (``SpecError``) a property that is not decided by the order of outputs within each
    group alone.  Accepted rows: ``a*(y_i - y_j) <= 0`` with ``a != 0`` and ``i``, ``j`` in one group,
    and rows without outputs (``0 <= d``, true or false whatever the outputs).  ``what`` names the
    dropped map for the message, e.g. "the output Softmax (prob)".

    Why exactly these: a map that is strictly increasing in each value of a group, with the others
    fixed and shared (softmax), keeps ``y_i <= y_j`` iff ``s_i <= s_j`` -- and nothing else: a
    constant threshold ``s_i <= 0.5`` or a weighted sum ``s_1 + s_2 <= 2 s_3`` depends on the map."""
    groups = np.asarray(groups).reshape(-1)
    for k, case in enumerate(prop.cases):
        for conj in case.unsafe:
            for C, d in zip(conj.C, conj.d):
                nz = np.flatnonzero(C)
                if nz.size == 0 or (nz.size == 2 and C[nz[0]] == -C[nz[1]] and d == 0.0
                                    and groups[nz[0]] == groups[nz[1]]):
                    continue
                terms = " ".join(f"{C[j]:+g}*Y_{j}" for j in nz[:4]) + (" ..." if nz.size > 4
                                                                         else "")
                raise SpecError(f"the graph leaves out {what}, so a property may only compare "
                                f"two of its outputs (Y_i <= Y_j); box {k} has the constraint "
                                f"{terms} <= {d:g}")
