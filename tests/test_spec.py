import math

import numpy as np
import pytest

from verifier.spec import Box, Case, Conjunction, Property, SpecError, robustness_property


# ---- Box ------------------------------------------------------------------------------------------

def test_box_is_float64_readonly_copy():
    lo = [0, 1]
    hi = np.array([1.0, 2.0])
    box = Box(lo, hi)
    assert box.lower.dtype == np.float64 and box.size == 2
    hi[0] = 99.0                       # the caller's array is not aliased
    assert box.upper[0] == 1.0
    with pytest.raises(ValueError):
        box.lower[0] = 5.0             # read-only
    with pytest.raises(AttributeError):
        box.lower = np.zeros(2)        # frozen


@pytest.mark.parametrize("lo, hi, msg", [
    ([0.0, 2.0], [1.0, 1.0], r"lower\[1\] = 2.0 > upper\[1\] = 1.0"),
    ([0.0], [1.0, 2.0], "shape"),
    ([[0.0]], [[1.0]], "1-D"),
    ([np.nan], [1.0], "NaN"),
    ([0.0], [np.inf], "infinite"),
    ([], [], "no variables"),
    (["a"], [1.0], "numeric"),
])
def test_box_rejects_bad_bounds(lo, hi, msg):
    with pytest.raises(SpecError, match=msg):
        Box(lo, hi)


def test_box_contains_with_tolerance():
    box = Box([0.0, 0.0], [1.0, 1.0])
    assert box.contains([0.0, 1.0])
    assert box.contains(np.array([[0.5, 0.5]]))     # any shape with the right size
    assert not box.contains([1.0 + 1e-9, 0.5])
    assert box.contains([1.0 + 1e-9, 0.5], tol=1e-8)
    assert not box.contains([np.nan, 0.5])
    with pytest.raises(SpecError, match="3 entries"):
        box.contains([0.0, 0.0, 0.0])


def test_box_allows_degenerate_interval():
    assert Box([0.5], [0.5]).contains([0.5])


# ---- Conjunction / Case ---------------------------------------------------------------------------

def test_conjunction_margin_sign_convention():
    # unsafe iff y0 - y1 <= 0 and y2 <= 3
    conj = Conjunction(np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([0.0, 3.0]))
    assert conj.margin([1.0, 2.0, 0.0]) == pytest.approx(-1.0)    # inside: property violated
    assert conj.margin([2.0, 2.0, 0.0]) == 0.0                     # boundary counts as inside
    assert conj.margin([1.0, 2.0, 5.0]) == pytest.approx(2.0)      # outside: safe
    assert math.isnan(conj.margin([np.nan, 0.0, 0.0]))


def test_empty_conjunction_means_everything_is_unsafe():
    conj = Conjunction(np.zeros((0, 3)), np.zeros(0))
    assert conj.margin([1.0, 2.0, 3.0]) == -math.inf


@pytest.mark.parametrize("C, d, msg", [
    (np.zeros((2, 3)), np.zeros(3), "2 rows"),
    (np.zeros(3), np.zeros(1), "2-D"),
    (np.zeros((1, 3)), np.array([np.nan]), "NaN"),
])
def test_conjunction_rejects_bad_shapes(C, d, msg):
    with pytest.raises(SpecError, match=msg):
        Conjunction(C, d)


def test_case_margin_is_min_over_conjunctions():
    box = Box([0.0], [1.0])
    a = Conjunction(np.array([[1.0, -1.0]]), np.zeros(1))    # y0 <= y1
    b = Conjunction(np.array([[-1.0, 0.0]]), np.array([-10.0]))  # y0 >= 10
    case = Case(box, [a, b])
    assert isinstance(case.unsafe, tuple)
    assert case.margin([5.0, 0.0]) == pytest.approx(5.0)     # min(5, 5)
    assert case.margin([11.0, 0.0]) == pytest.approx(-1.0)   # in b
    assert case.margin([0.0, 1.0]) == pytest.approx(-1.0)    # in a


def test_case_validation():
    box = Box([0.0], [1.0])
    with pytest.raises(SpecError, match="no unsafe"):
        Case(box, ())
    with pytest.raises(SpecError, match="different numbers of outputs"):
        Case(box, (Conjunction(np.zeros((1, 2)), np.zeros(1)),
                   Conjunction(np.zeros((1, 3)), np.zeros(1))))


# ---- Property -------------------------------------------------------------------------------------

def _two_box_property():
    conj = (Conjunction(np.array([[1.0, -1.0]]), np.zeros(1)),)              # y0 <= y1
    return Property((Case(Box([0.0], [1.0]), conj),
                     Case(Box([2.0], [3.0]), (Conjunction(np.array([[0.0, 1.0]]), np.zeros(1)),))),
                    n_inputs=1, n_outputs=2)


def test_violated_by_pairs_box_with_its_own_unsafe_region():
    prop = _two_box_property()
    assert prop.violated_by([0.5], [0.0, 1.0])          # case 0: y0 <= y1
    assert not prop.violated_by([0.5], [1.0, -1.0])     # y1 <= 0 is case 1's region, not case 0's
    assert prop.violated_by([2.5], [1.0, -1.0])
    assert not prop.violated_by([1.5], [0.0, 1.0])      # x in no box
    assert prop.violated_by([1.0 + 1e-9], [0.0, 1.0], tol=1e-6)
    assert not prop.violated_by([0.5], [np.nan, 1.0])
    with pytest.raises(SpecError):
        prop.violated_by([0.5, 0.5], [0.0, 1.0])


def test_property_validation():
    case = _two_box_property().cases[0]
    with pytest.raises(SpecError, match="no cases"):
        Property((), n_inputs=1, n_outputs=2)
    with pytest.raises(SpecError, match="expected 2"):
        Property((case,), n_inputs=2, n_outputs=2)
    with pytest.raises(SpecError, match="expected 3"):
        Property((case,), n_inputs=1, n_outputs=3)
    with pytest.raises(SpecError, match="positive integer"):
        Property((case,), n_inputs=1.0, n_outputs=2)


# ---- robustness_property --------------------------------------------------------------------------

def test_robustness_clips_ball_to_domain():
    x = np.array([[0.0, 0.5, 0.98]])                    # any shape; flattened
    prop = robustness_property(x, label=1, eps=0.05, n_outputs=3)
    (case,) = prop.cases
    np.testing.assert_allclose(case.box.lower, [0.0, 0.45, 0.93])
    np.testing.assert_allclose(case.box.upper, [0.05, 0.55, 1.0])
    assert prop.n_inputs == 3 and prop.n_outputs == 3
    assert len(case.unsafe) == 2
    for conj, j in zip(case.unsafe, (0, 2)):
        expected = np.zeros((1, 3))
        expected[0, 1], expected[0, j] = 1.0, -1.0
        np.testing.assert_array_equal(conj.C, expected)
        np.testing.assert_array_equal(conj.d, [0.0])


def test_robustness_point_outside_domain_still_gives_valid_box():
    prop = robustness_property([1.5, -2.0, 0.5], label=0, eps=0.1, n_outputs=2)
    box = prop.cases[0].box
    np.testing.assert_allclose(box.lower, [1.0, 0.0, 0.4])
    np.testing.assert_allclose(box.upper, [1.0, 0.0, 0.6])
    assert np.all(box.lower <= box.upper)


def test_robustness_per_input_domain_and_eps_zero():
    prop = robustness_property([0.2, 0.7], 0, 0.0, domain=([0.0, 0.5], [1.0, 0.6]), n_outputs=2)
    box = prop.cases[0].box
    np.testing.assert_allclose(box.lower, [0.2, 0.6])
    np.testing.assert_allclose(box.upper, [0.2, 0.6])


def test_robustness_margins_and_tie_counts_as_violated():
    prop = robustness_property([0.5], label=2, eps=0.1, n_outputs=4)
    x = [0.5]
    assert not prop.violated_by(x, [0.0, 1.0, 3.0, 2.0])   # label strictly best
    assert prop.violated_by(x, [0.0, 3.0, 3.0, 2.0])       # tie with class 1
    assert prop.violated_by(x, [5.0, 1.0, 3.0, 2.0])
    assert prop.cases[0].margin([0.0, 1.0, 3.0, 2.0]) == pytest.approx(1.0)  # gap to runner-up
    assert not prop.violated_by([0.7], [5.0, 1.0, 3.0, 2.0])                 # x outside the ball


def test_robustness_target():
    prop = robustness_property([0.5], label=0, eps=0.1, n_outputs=3, target=2)
    (conj,) = prop.cases[0].unsafe
    np.testing.assert_array_equal(conj.C, [[1.0, 0.0, -1.0]])
    assert not prop.violated_by([0.5], [1.0, 5.0, 0.0])      # class 1 wins, but only 2 is targeted
    assert prop.violated_by([0.5], [1.0, 0.0, 1.0])


@pytest.mark.parametrize("kwargs, msg", [
    (dict(eps=-0.1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(eps="big"), "eps"),
    (dict(label=3), "label 3 is out of range"),
    (dict(label=-1), "label"),
    (dict(label=True), "label must be an integer"),
    (dict(label=1.0), "label must be an integer"),
    (dict(target=1), "target 1 equals label"),
    (dict(target=7), "target 7 is out of range"),
    (dict(n_outputs=1, label=0), "n_outputs"),
    (dict(x=[np.nan, 0.0]), "finite"),
    (dict(x=[]), "non-empty"),
    (dict(domain=(1.0, 0.0)), "lo <= hi"),
    (dict(domain=([0.0, 0.0, 0.0], 1.0)), "broadcastable"),
])
def test_robustness_errors(kwargs, msg):
    args = dict(x=[0.1, 0.2], label=1, eps=0.1, n_outputs=3) | kwargs
    with pytest.raises(SpecError, match=msg):
        robustness_property(**args)


def test_numpy_integer_label_is_accepted():
    prop = robustness_property([0.5], label=np.int64(1), eps=0.1, n_outputs=np.int32(2))
    assert prop.n_outputs == 2 and isinstance(prop.n_outputs, int)
