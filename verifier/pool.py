"""The open domains of one branch-and-bound search, kept in slots.

Every round the search takes a batch of open domains out, splits and bounds them, closes some and
adds the children back.  Rebuilding one stacked ``Domains`` of the whole pool for that (keep the
rest, concatenate the children) copies every node's bounds of every open domain twice per round:
on a conv net each domain holds hundreds of kB of bounds, and with a few thousand open domains
the copies took 30 s of a 96 s search (oval21 deep img1052).  Here the domains live in
preallocated arrays, one slot per domain: taking a batch copies the batch, closing a domain frees
its slot, children are written into free slots, and the arrays double when full (amortised).
"""
from __future__ import annotations

import numpy as np

from .bounds.engine import Domains


class Pool:
    """Open domains with, per slot, its row bounds ``rows``, the deciding row's input coefficients
    ``coef`` (input rule, else None), its slopes and multipliers ``params``, its depth and whether
    the leaf MILP has been tried on it (``tried``).  Arrays are indexed by slot; ``ids()`` lists
    the slots in use.  A slot's content is meaningful only while it is in use.

    ``shared_slack``: every domain has the float slack (``fwd``, ``absimg``) of ``dom``, the root,
    so it is kept once, not per slot (ReLU splits copy their parent's; a node's bounds clamped by a
    phase never change it): about half of a conv net's per-domain bytes (a worker peaked at 5.4
    GB on ResNet-4B without this).  ``derived``: nodes whose bounds are not stored but made on
    ``take`` by their own interval rule from their input's bounds (node index -> node, e.g. a
    ReLU): sound for any bounds of the input, and what such a node holds anyway where only
    interval arithmetic bounds it (a ReLU output no relaxation reads: not ``Engine.needed``)."""

    def __init__(self, dom: Domains, rows: np.ndarray, coef, params: dict, capacity: int = 256,
                 shared_slack: bool = False, derived: dict | None = None):
        self.derived = {r: n for r, n in (derived or {}).items()
                        if dom.lower[r] is not None and dom.lower[n.inputs[0]] is not None}
        none = lambda v: None if v is None else v[:0]          # no slots yet, then grown
        self.shared = ([None if v is None else v[:1].copy() for v in dom.fwd],
                       [None if v is None else v[:1].copy() for v in dom.absimg]) \
            if shared_slack else None
        slack = (lambda v: None) if shared_slack else none
        kept = lambda vs: [None if i in self.derived else none(v) for i, v in enumerate(vs)]
        self.dom = Domains(kept(dom.lower), kept(dom.upper),
                           {i: p[:0] for i, p in dom.phase.items()},
                           [slack(v) for v in dom.fwd], [slack(v) for v in dom.absimg])
        self.rows, self.coef = rows[:0], none(coef)
        self.params = {i: v[:0] for i, v in params.items()}
        self.depth = np.zeros(0, np.int64)
        self.tried = np.zeros(0, bool)
        self.live = np.zeros(0, bool)
        self._grow(max(capacity, dom.B))
        self.add(dom, rows, coef, params, np.zeros(dom.B, np.int64))

    @property
    def n(self) -> int:
        return int(self.live.sum())

    @property
    def capacity(self) -> int:
        return self.live.size

    def slot_bytes(self) -> int:
        """Bytes one domain's slot holds (bounds, phases, slopes and multipliers, row bounds)."""
        st = self.dom
        arrays = [v for vs in (st.lower, st.upper, st.fwd, st.absimg) for v in vs if v is not None]
        arrays += [*st.phase.values(), *self.params.values(), self.rows]
        if self.coef is not None:
            arrays.append(self.coef)
        return sum(v[:1].nbytes for v in arrays)

    def nbytes(self) -> int:
        """Bytes of the open domains."""
        return self.n * self.slot_bytes()

    def ids(self) -> np.ndarray:
        """The slots in use, ascending."""
        return np.flatnonzero(self.live)

    def take(self, slots) -> Domains:
        """The domains in ``slots``, copied, in that order (a shared slack as read-only rows,
        derived nodes' bounds made from their inputs')."""
        out = self.dom.take(slots)
        for r, n in self.derived.items():
            j = n.inputs[0]
            out.lower[r], out.upper[r] = n.interval(out.lower[j], out.upper[j])
        if self.shared is not None:
            B = out.B
            row = lambda v: None if v is None else np.broadcast_to(v, (B, v.shape[1]))
            out.fwd, out.absimg = [row(v) for v in self.shared[0]], [row(v) for v in self.shared[1]]
        return out

    def remove(self, slots) -> None:
        self.live[np.asarray(slots, np.int64)] = False

    def add(self, dom: Domains, rows, coef, params: dict, depth) -> np.ndarray:
        """Put ``dom``'s B domains into free slots (growing the arrays if needed); their slots."""
        free = np.flatnonzero(~self.live)
        if free.size < dom.B:
            self._grow(max(2 * self.capacity, self.capacity + dom.B - free.size))
            free = np.flatnonzero(~self.live)
        slots = free[:dom.B]
        st = self.dom
        for mine, theirs in ((st.lower, dom.lower), (st.upper, dom.upper), (st.fwd, dom.fwd),
                             (st.absimg, dom.absimg)):
            for i, v in enumerate(theirs):
                _put(mine, i, slots, v)
        _put_keys(st.phase, dom.phase, slots, self.capacity)
        _put_keys(self.params, params, slots, self.capacity)
        self.rows[slots] = rows
        if self.coef is not None:
            self.coef[slots] = coef
        self.depth[slots] = depth
        self.tried[slots] = False
        self.live[slots] = True
        return slots

    def _grow(self, cap: int) -> None:
        """Enlarge every per-slot array to ``cap`` slots (new slots free)."""
        def big(v):
            if v is None:
                return None
            out = np.zeros((cap,) + v.shape[1:], v.dtype)
            out[:v.shape[0]] = v
            return out
        st = self.dom
        for vs in (st.lower, st.upper, st.fwd, st.absimg):
            vs[:] = [big(v) for v in vs]
        for d in (st.phase, self.params):
            for i in d:
                d[i] = big(d[i])
        self.rows, self.coef = big(self.rows), big(self.coef)
        self.depth, self.tried, self.live = big(self.depth), big(self.tried), big(self.live)


def _put(store: list, i: int, slots: np.ndarray, v) -> None:
    """Write one node's values of new domains into their slots.  Every domain of one search has
    the same nodes bounded (the root's); a node the store lacks stays unknown for all."""
    if store[i] is None:
        return
    if v is None:
        raise ValueError(f"node {i}: new domains lack bounds the open ones have")
    store[i][slots] = v


def _put_keys(store: dict, new: dict, slots: np.ndarray, cap: int) -> None:
    """Per-key arrays (ReLU phases, multipliers): a key one side lacks is zero there (a free phase,
    a zero multiplier: no constraint)."""
    for i, v in new.items():
        if i not in store:
            store[i] = np.zeros((cap,) + v.shape[1:], v.dtype)
        store[i][slots] = v
    for i in store.keys() - new.keys():
        store[i][slots] = 0
