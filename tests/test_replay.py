"""Replay in onnxruntime: the gate for every counterexample."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from verifier.graph import Graph, Input, Linear, Relu
from verifier.onnx_export import graph_to_onnx
from verifier.replay import _violates, ort_session, replay, run_model, to_float32_in_box
from verifier.spec import Box, Case, Conjunction, Property


def diff_net() -> Graph:
    """y = (x0 - x1, relu(x0) + relu(x1)): simple enough to know every answer by hand."""
    W1 = np.eye(2)
    W_skip = np.array([[1.0, -1.0], [0.0, 0.0]])
    return Graph([Input((), (1, 2)),
                  Linear((0,), (2,), mats=(W1,), bias=np.zeros(2)),
                  Relu((1,), (2,)),
                  Linear((2, 0), (2,), mats=(np.array([[0.0, 0.0], [1.0, 1.0]]), W_skip),
                         bias=np.zeros(2))])


@pytest.fixture(scope="module")
def model():
    return graph_to_onnx(diff_net())


def prop_y0_le(d0: float, lo=(0.0, 0.0), hi=(1.0, 1.0)) -> Property:
    """Unsafe iff y0 = x0 - x1 <= d0 (for x in the box)."""
    return Property((Case(Box(np.array(lo), np.array(hi)),
                          (Conjunction(np.array([[1.0, 0.0]]), np.array([d0])),)),), 2, 2)


def test_accepts_a_real_violation(model):
    prop = prop_y0_le(-0.5)
    r = replay(model, np.array([0.25, 1.0]), prop)
    assert r.ok and r.case_index == 0 and r.reason == ""
    assert r.x32.dtype == np.float32 and r.y32.dtype == np.float32
    assert r.y32[0] == pytest.approx(-0.75) and r.y32[1] == pytest.approx(1.25)
    assert r.margin == pytest.approx(-0.25)


def test_rejects_a_point_outside_the_box(model):
    prop = prop_y0_le(-0.5)
    r = replay(model, np.array([-0.1, 1.0]), prop)     # violates, but x0 < 0
    assert not r.ok and "outside" in r.reason
    r = replay(model, np.array([0.25, 1.0 + 1e-12]), prop)   # outside by a hair still fails
    assert not r.ok
    # project=True clips into the box first; the replayed point is then inside
    r = replay(model, np.array([-0.1, 1.0]), prop, project=True)
    assert r.ok and prop.cases[0].box.contains(r.x32.astype(np.float64))


def test_rejects_a_non_violating_point(model):
    prop = prop_y0_le(-0.5)
    r = replay(model, np.array([0.75, 1.0]), prop)      # y0 = -0.25 > -0.5
    assert not r.ok and r.margin == pytest.approx(0.25) and "safe" in r.reason


def test_rejects_a_float64_violation_that_float32_undoes(model):
    """x0 - x1 = -1e-12 in float64, but both inputs round to the same float32: y0 = 0 > -1e-13."""
    x = np.array([0.1, 0.1 + 1e-12])
    prop = prop_y0_le(-1e-13, lo=(0.0, 0.0), hi=(1.0, 1.0))
    assert x[0] - x[1] <= -1e-13                     # the float64 network says "violated"
    r = replay(model, x, prop)
    assert not r.ok and r.y32[0] == 0.0


def test_tie_counts_as_violation(model):
    r = replay(model, np.array([0.5, 0.5]), prop_y0_le(0.0))
    assert r.ok and r.margin == 0.0


def test_second_case_and_wrong_sizes(model):
    unsafe = (Conjunction(np.array([[1.0, 0.0]]), np.array([-0.5])),)
    prop = Property((Case(Box(np.zeros(2), np.full(2, 0.1)), unsafe),
                     Case(Box(np.array([0.0, 0.9]), np.array([0.2, 1.0])), unsafe)), 2, 2)
    r = replay(model, np.array([0.1, 0.95]), prop)
    assert r.ok and r.case_index == 1
    assert not replay(model, np.zeros(3), prop).ok
    assert not replay(model, np.array([np.nan, 0.95]), prop).ok


def test_float32_rounding_stays_inside_boxes_with_unrepresentable_bounds():
    rng = np.random.default_rng(0)
    n = 5000
    lo = rng.uniform(-1, 1, n)
    hi = lo + rng.uniform(1e-6, 1e-3, n)
    # points at the bounds: rounding to nearest leaves the box for about half of them
    for x in (lo, hi, np.where(rng.random(n) < 0.5, lo, hi)):
        naive = x.astype(np.float32).astype(np.float64)
        assert np.any((naive < lo) | (naive > hi))       # the nudge is really exercised
        x32 = to_float32_in_box(x, lo, hi)
        assert x32.dtype == np.float32
        x64 = x32.astype(np.float64)
        assert np.all(lo <= x64) and np.all(x64 <= hi)
        # the nudge moves at most one float32 step from the rounded value
        ulp = np.spacing(np.abs(naive).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(x64 - naive) <= ulp * 1.0000001)


def test_box_without_float32_point_replays_on_the_float64_copy(model):
    lo = np.array([0.1, 0.0])
    hi = np.array([0.1 + 1e-9, 1.0])      # float32 neighbours of 0.1 lie on both sides of this box
    f = np.float32(0.1)
    assert not (lo[0] <= float(f) <= hi[0]) and not (lo[0] <= float(np.nextafter(f, np.float32(0))) <= hi[0])
    assert to_float32_in_box(lo, lo, hi) is None
    prop = Property((Case(Box(lo, hi), (Conjunction(np.array([[0.0, 0.0]]), np.zeros(1)),)),), 2, 2)
    r = replay(model, np.array([0.1, 0.3]), prop)
    assert r.ok and r.precision == "float64" and r.x32.dtype == np.float64
    assert r.x32.tolist() == [0.1, 0.3]                       # the float64 point itself
    assert r.y32.dtype == np.float64 and r.y32[0] == 0.1 - 0.3   # computed in double
    # y0 = x0 - x1 <= -0.25 holds at x1 = 0.35 + eps in float64, not at x1 = 0.3
    unsafe = (Conjunction(np.array([[1.0, 0.0]]), np.array([-0.25])),)
    pinned = Property((Case(Box(lo, hi), unsafe),), 2, 2)
    assert replay(model, np.array([0.1, 0.36]), pinned).ok
    r = replay(model, np.array([0.1, 0.3]), pinned)
    assert not r.ok and "float64 output is safe" in r.reason and r.precision == "float64"


def test_violation_decided_exactly_near_zero():
    """Find C, y where the float64 dot product rounds *down* below the exact value; with d equal to
    the float64 result, float64 says margin 0 (violated) while exactly the margin is > 0 (safe)."""
    rng = np.random.default_rng(1)
    for _ in range(10000):
        C = rng.uniform(-1, 1, (1, 3))
        y = rng.uniform(-1, 1, 3).astype(np.float32).astype(np.float64)
        f = float(C[0] @ y)
        exact = sum(Fraction(float(c)) * Fraction(float(v)) for c, v in zip(C[0], y))
        if exact > Fraction(f):
            break
    else:
        pytest.fail("no rounding example found")
    case = Case(Box(np.zeros(1), np.ones(1)), (Conjunction(C, np.array([f])),))
    margins = np.array([float(C[0] @ y - f)])
    assert margins[0] <= 0.0                      # float64 alone would call it a violation
    assert not _violates(case, y, margins)
    case_ok = Case(Box(np.zeros(1), np.ones(1)), (Conjunction(C, np.array([f + 1e-6])),))
    assert _violates(case_ok, y, np.array([float(C[0] @ y - f - 1e-6)]))


def test_session_cache_and_model_forms(model, tmp_path):
    data = model.SerializeToString()
    assert ort_session(model) is ort_session(data)          # cached on the content hash
    p = tmp_path / "m.onnx"
    p.write_bytes(data)
    assert ort_session(str(p)) is ort_session(p)
    x = np.array([0.3, 0.7], np.float32)
    for m in (model, data, str(p)):
        np.testing.assert_array_equal(run_model(m, x), run_model(model, x))
    with pytest.raises(TypeError):
        ort_session(12)


def test_symbolic_batch_dimension(tmp_path):
    """A model whose input has a symbolic batch dim runs with that dim set to 1."""
    import onnx
    m = graph_to_onnx(diff_net())
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(m)
    r = replay(m, np.array([0.25, 1.0]), prop_y0_le(-0.5))
    assert r.ok
