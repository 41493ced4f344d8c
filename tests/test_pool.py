"""The slot store of branch-and-bound domains (``verifier.pool``): what goes in comes out, in any
order of adds and removals, across growth; keys one batch lacks read as zero (free phase, zero
multiplier)."""
from __future__ import annotations

import numpy as np
import pytest

from verifier.bounds.engine import Domains
from verifier.graph import Relu
from verifier.pool import Pool


def _doms(rng, B, phase_keys=(2,)):
    lo = [rng.normal(size=(B, 3)), None, rng.normal(size=(B, 4))]
    hi = [v + 1 if v is not None else None for v in lo]
    ph = {k: rng.integers(-1, 2, size=(B, 4)).astype(np.int8) for k in phase_keys}
    fwd = [None, None, rng.random((B, 4))]
    return Domains(lo, hi, ph, fwd, [None, None, rng.random((B, 4))])


def _same(a: Domains, b: Domains):
    for xs, ys in ((a.lower, b.lower), (a.upper, b.upper), (a.fwd, b.fwd), (a.absimg, b.absimg)):
        for x, y in zip(xs, ys):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)


def test_adds_and_removes_keep_every_domain_intact_across_growth():
    rng = np.random.default_rng(0)
    root = _doms(rng, 1)
    pool = Pool(root, rng.normal(size=(1, 2)), None, {2: np.ones((1, 4), np.float32)},
                capacity=2)
    kept = {int(pool.ids()[0]): (root, None)}
    for step in range(30):
        if kept and step % 3 == 2:                       # close some
            gone = rng.choice(list(kept), size=min(len(kept), 3), replace=False)
            pool.remove(gone)
            for s in gone:
                kept.pop(int(s))
        B = int(rng.integers(1, 6))
        dom = _doms(rng, B)
        rows = rng.normal(size=(B, 2))
        slots = pool.add(dom, rows, None, {2: rng.random((B, 4)).astype(np.float32)},
                         np.full(B, step))
        assert len(set(slots.tolist()) & set(kept)) == 0      # never over an open domain
        for b, s in enumerate(slots):
            kept[int(s)] = (dom.take([b]), rows[b])
    assert sorted(kept) == pool.ids().tolist() and pool.n == len(kept)
    assert pool.capacity >= pool.n
    for s, (dom, rows) in kept.items():
        _same(pool.take([s]), dom)
        np.testing.assert_array_equal(pool.take([s]).phase[2], dom.phase[2])
        if rows is not None:
            np.testing.assert_array_equal(pool.rows[s], rows)


def test_missing_phase_and_multiplier_keys_read_as_zero():
    rng = np.random.default_rng(1)
    pool = Pool(_doms(rng, 2, phase_keys=()), np.zeros((2, 1)), None, {}, capacity=2)
    slots = pool.add(_doms(rng, 3, phase_keys=(5,)), np.zeros((3, 1)), None,
                     {(1, 5): np.ones((3, 4), np.float32)}, np.zeros(3))
    old = np.setdiff1d(pool.ids(), slots)
    assert np.all(pool.take(old).phase[5] == 0) and np.all(pool.params[(1, 5)][old] == 0)
    again = pool.add(_doms(rng, 1, phase_keys=()), np.zeros((1, 1)), None, {}, np.zeros(1))
    assert np.all(pool.take(again).phase[5] == 0) and np.all(pool.params[(1, 5)][again] == 0)
    assert np.all(pool.params[(1, 5)][slots] == 1)


def test_new_domains_must_have_the_bounds_the_open_ones_have():
    rng = np.random.default_rng(2)
    pool = Pool(_doms(rng, 1), np.zeros((1, 1)), None, {})
    bad = _doms(rng, 1)
    bad.lower[2] = bad.upper[2] = None
    with pytest.raises(ValueError, match="node 2"):
        pool.add(bad, np.zeros((1, 1)), None, {}, np.zeros(1))


def test_a_shared_slack_is_the_roots_for_every_domain_and_not_stored_per_slot():
    rng = np.random.default_rng(3)
    root = _doms(rng, 1)
    pool = Pool(root, np.zeros((1, 2)), None, {}, capacity=2, shared_slack=True)
    assert all(v is None for v in pool.dom.fwd + pool.dom.absimg)
    kids = _doms(rng, 5)                       # their own slack is not kept: the root's is
    slots = pool.add(kids, np.zeros((5, 2)), None, {}, np.ones(5, np.int64))
    got = pool.take(np.concatenate([slots[::-1], pool.ids()[:1]]))
    assert got.B == 6
    for xs, ys in ((got.fwd, root.fwd), (got.absimg, root.absimg)):
        for x, y in zip(xs, ys):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, np.repeat(y, 6, axis=0))
    np.testing.assert_array_equal(got.lower[2][:5], kids.lower[2][::-1])


def test_derived_relu_bounds_are_made_from_their_inputs_and_not_stored():
    rng = np.random.default_rng(4)
    root = _doms(rng, 1)
    root.lower[1], root.upper[1] = np.maximum(root.lower[0], 0), np.maximum(root.upper[0], 0)
    pool = Pool(root, np.zeros((1, 2)), None, {}, capacity=2,
                derived={1: Relu((0,), (3,))})
    assert pool.dom.lower[1] is None and pool.dom.upper[1] is None
    kids = _doms(rng, 4)
    kids.lower[1], kids.upper[1] = np.zeros((4, 3)), np.ones((4, 3))     # not what is kept
    slots = pool.add(kids, np.zeros((4, 2)), None, {}, np.ones(4, np.int64))
    got = pool.take(slots)
    np.testing.assert_array_equal(got.lower[1], np.maximum(kids.lower[0], 0))
    np.testing.assert_array_equal(got.upper[1], np.maximum(kids.upper[0], 0))
    np.testing.assert_array_equal(got.lower[2], kids.lower[2])
