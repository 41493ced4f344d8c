import gzip
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from verifier.spec import robustness_property
from verifier.vnnlib import MAX_DEPTH, MAX_DISJUNCTS, VnnlibError, parse_vnnlib, parse_vnnlib_text

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def decls(nx, ny):
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(nx)) + \
           "".join(f"(declare-const Y_{i} Real)\n" for i in range(ny))


def unit_box(nx, lo=0.0, hi=1.0):
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(nx))


def rows(conj):
    """A conjunction as a sorted tuple of (C row..., d) tuples: compare up to row order."""
    return tuple(sorted(tuple(r) + (d,) for r, d in zip(conj.C.tolist(), conj.d.tolist())))


def unsafe_set(case):
    return sorted(rows(c) for c in case.unsafe)


def error(text, **kw):
    with pytest.raises(VnnlibError) as e:
        parse_vnnlib_text(text, **kw)
    return e.value


# ---- accepted constructs --------------------------------------------------------------------------

def test_bounds_numbers_and_comments():
    text = """; header comment with (((( parentheses
(declare-const X_0 Real) ; trailing comment
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(assert (<= X_0 1e-05))  (assert (>= X_0 -.5))
(assert (>= X_1
   ; a comment inside an expression )))
   +3))
(assert (<= X_1 4.))
(assert (<= 0 X_2)) (assert (>= 2.5E+1 X_2))
(assert (<= Y_0 (- 0.5)))
"""
    prop = parse_vnnlib_text(text)
    assert (prop.n_inputs, prop.n_outputs) == (3, 1)
    (case,) = prop.cases
    np.testing.assert_array_equal(case.box.lower, [-0.5, 3.0, 0.0])
    np.testing.assert_array_equal(case.box.upper, [1e-05, 4.0, 25.0])
    assert unsafe_set(case) == [((1.0, -0.5),)]


def test_output_atom_forms():
    text = decls(1, 3) + unit_box(1) + """
(assert (<= Y_0 Y_1))
(assert (>= Y_0 Y_2))
(assert (<= Y_1 3))
(assert (>= Y_2 -2))
(assert (<= 7 Y_0))
(assert (>= 8 Y_1))
"""
    (case,) = parse_vnnlib_text(text).cases
    (conj,) = case.unsafe        # top-level asserts are one conjunction
    assert rows(conj) == tuple(sorted([
        (1.0, -1.0, 0.0, 0.0),     # y0 - y1 <= 0
        (-1.0, 0.0, 1.0, 0.0),     # y2 - y0 <= 0
        (0.0, 1.0, 0.0, 3.0),      # y1 <= 3
        (0.0, 0.0, -1.0, 2.0),     # -y2 <= 2
        (-1.0, 0.0, 0.0, -7.0),    # -y0 <= -7
        (0.0, 1.0, 0.0, 8.0),      # y1 <= 8
    ]))


def test_strict_comparisons_are_read_as_non_strict():
    text = decls(1, 2) + "(assert (> X_0 0))(assert (< X_0 1))(assert (< Y_0 Y_1))"
    (case,) = parse_vnnlib_text(text).cases
    np.testing.assert_array_equal([case.box.lower, case.box.upper], [[0.0], [1.0]])
    assert unsafe_set(case) == [((1.0, -1.0, 0.0),)]


def test_or_of_ands_gives_one_conjunction_per_disjunct():
    text = decls(2, 3) + unit_box(2) + """
(assert (or
    (and (<= Y_0 Y_1) (<= Y_0 Y_2))
    (and (>= Y_1 5))
))"""
    (case,) = parse_vnnlib_text(text).cases
    assert unsafe_set(case) == sorted([
        ((1.0, -1.0, 0.0, 0.0), (1.0, 0.0, -1.0, 0.0)),
        ((0.0, -1.0, 0.0, -5.0),),
    ])


def test_top_level_output_rows_are_added_to_every_disjunct():
    text = decls(1, 3) + unit_box(1) + "(assert (<= Y_2 1))(assert (or (<= Y_0 0) (<= Y_1 0)))"
    (case,) = parse_vnnlib_text(text).cases
    assert unsafe_set(case) == sorted([
        ((0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 0.0, 0.0)),
        ((0.0, 0.0, 1.0, 1.0), (0.0, 1.0, 0.0, 0.0)),
    ])


def test_or_over_input_boxes_like_acasxu_prop_6():
    text = decls(2, 3) + """
(assert (or
    (and (<= X_0 1) (>= X_0 0) (<= X_1 -0.1) (>= X_1 -0.5))
    (and (<= X_0 1) (>= X_0 0) (<= X_1 0.5) (>= X_1 0.1))
))
(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0))))
"""
    prop = parse_vnnlib_text(text)
    assert len(prop.cases) == 2                  # 2 boxes x 2 output disjuncts, grouped by box
    np.testing.assert_array_equal(prop.cases[0].box.lower, [0.0, -0.5])
    np.testing.assert_array_equal(prop.cases[0].box.upper, [1.0, -0.1])
    np.testing.assert_array_equal(prop.cases[1].box.lower, [0.0, 0.1])
    np.testing.assert_array_equal(prop.cases[1].box.upper, [1.0, 0.5])
    expected = sorted([((-1.0, 1.0, 0.0, 0.0),), ((-1.0, 0.0, 1.0, 0.0),)])
    assert unsafe_set(prop.cases[0]) == unsafe_set(prop.cases[1]) == expected


def test_disjuncts_mixing_input_and_output_atoms():
    text = decls(1, 2) + unit_box(1) + """
(assert (or (and (<= X_0 0.5) (<= Y_0 0))
            (and (>= X_0 0.5) (<= Y_1 0))
            (and (<= X_0 0.5) (>= Y_1 9))))   ; same box as the first disjunct
"""
    prop = parse_vnnlib_text(text)
    assert [(c.box.lower[0], c.box.upper[0]) for c in prop.cases] == [(0.0, 0.5), (0.5, 1.0)]
    assert unsafe_set(prop.cases[0]) == sorted([((1.0, 0.0, 0.0),), ((0.0, -1.0, -9.0),)])
    assert unsafe_set(prop.cases[1]) == [((0.0, 1.0, 0.0),)]
    assert prop.violated_by([0.2], [-1.0, 5.0]) and not prop.violated_by([0.7], [-1.0, 5.0])


def test_equal_boxes_from_different_atoms_are_grouped():
    text = decls(1, 2) + unit_box(1) + """
(assert (or (and (<= X_0 0.5) (<= Y_0 0))
            (and (<= X_0 0.5) (>= X_0 -3) (<= Y_1 0))
            (and (<= X_0 -0.0) (<= Y_1 1))
            (and (<= X_0 0.0) (<= Y_1 2))))"""
    prop = parse_vnnlib_text(text)
    assert len(prop.cases) == 2          # [0, 0.5] twice; [0, -0.0] == [0, 0.0]
    assert [len(c.unsafe) for c in prop.cases] == [2, 2]


def test_repeated_disjuncts_from_the_expansion_are_merged():
    # 4 combinations, 3 distinct boxes: [0, .5], [.25, .5] (twice), [.25, 1]
    text = decls(1, 1) + unit_box(1) + "(assert (or (<= X_0 0.5) (>= X_0 0.25)))" * 2 \
        + "(assert (<= Y_0 0))"
    prop = parse_vnnlib_text(text)
    boxes = [(c.box.lower[0], c.box.upper[0]) for c in prop.cases]
    assert boxes == [(0.0, 0.5), (0.25, 0.5), (0.25, 1.0)]
    assert all(unsafe_set(c) == [((1.0, 0.0),)] for c in prop.cases)


def test_nested_and_or_and_is_distributed():
    # (A or (B and (C or D))) and E   ->   AE | BCE | BDE
    text = decls(1, 4) + unit_box(1) + """
(assert (and (or (<= Y_0 0) (and (<= Y_1 0) (or (<= Y_2 0) (<= Y_3 0)))) (>= Y_0 -1)))"""
    (case,) = parse_vnnlib_text(text).cases
    A, B, C, D = [tuple(1.0 if j == i else 0.0 for j in range(4)) + (0.0,) for i in range(4)]
    E = (-1.0, 0.0, 0.0, 0.0, 1.0)
    assert unsafe_set(case) == sorted(tuple(sorted(t)) for t in [(A, E), (B, C, E), (B, D, E)])


def test_constant_comparisons_and_ignored_commands():
    text = decls(1, 1) + unit_box(1) + """
(set-info :source |made by hand (with parens)|)
(set-info :note "a string ) with ""quotes"" ")
(assert (or (<= 2 1) (<= Y_0 0)))
(assert (<= 1 2))
(check-sat)
(get-model)
"""
    (case,) = parse_vnnlib_text(text).cases
    assert unsafe_set(case) == [((1.0, 0.0),)]


def test_no_output_constraint_means_every_output_is_unsafe():
    (case,) = parse_vnnlib_text(decls(1, 2) + unit_box(1)).cases
    (conj,) = case.unsafe
    assert conj.C.shape == (0, 2) and case.margin([1.0, 2.0]) == -np.inf


def test_line_numbers_count_newlines_inside_strings_and_comments():
    text = decls(1, 1) + '(set-info :x "two\nlines")\n; comment (\n(assert (<= X_0 bad))'
    assert error(text).line == 6


def test_empty_disjunct_boxes_are_dropped():
    text = decls(1, 1) + unit_box(1) + \
        "(assert (or (and (>= X_0 2) (<= Y_0 0)) (and (<= X_0 0.5) (<= Y_0 1))))"
    (case,) = parse_vnnlib_text(text).cases
    assert case.box.upper[0] == 0.5 and unsafe_set(case) == [((1.0, 1.0),)]


def test_declare_fun_crlf_and_gzip(tmp_path):
    text = "(declare-fun X_0 () Real)\r\n(declare-fun Y_0 () Real)\r\n(assert (>= X_0 0))\r\n" \
           "(assert (<= X_0 1))\r\n(assert (<= Y_0 0))\r\n"
    plain = tmp_path / "a.vnnlib"
    plain.write_text(text)
    gz = tmp_path / "a.vnnlib.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for prop in (parse_vnnlib_text(text), parse_vnnlib(plain), parse_vnnlib(str(gz))):
        assert prop.n_inputs == 1 and prop.cases[0].box.upper[0] == 1.0
    with pytest.raises(VnnlibError, match=r"a.vnnlib: line 7: .*undeclared variable X_1"):
        plain.write_text(text + "\n(assert (<= X_1 1))")
        parse_vnnlib(plain)


def test_matches_robustness_property():
    x = np.array([0.0, 0.3, 0.98])
    text = decls(3, 3) + "".join(
        f"(assert (<= X_{i} {min(1.0, v + 0.05)!r}))\n(assert (>= X_{i} {max(0.0, v - 0.05)!r}))\n"
        for i, v in enumerate(x.tolist())) + "(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))"
    a = parse_vnnlib_text(text, n_inputs=3, n_outputs=3).cases[0]
    b = robustness_property(x, label=2, eps=0.05, n_outputs=3).cases[0]
    np.testing.assert_array_equal(a.box.lower, b.box.lower)
    np.testing.assert_array_equal(a.box.upper, b.box.upper)
    assert unsafe_set(a) == unsafe_set(b)


# ---- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, line, msg", [
    ("(assert (<= X_0 1)))", 4, "unbalanced parentheses: unexpected ')'"),
    ("\n(assert (<= X_0 1)\n(assert (>= X_0 0))", 5, "never closed"),
    ("(assert (== X_0 1))", 4, "unknown operator '=='"),
    ("(assert (not (<= X_0 1)))", 4, "unknown operator 'not'"),
    ("(assert (<= X_0\n 1))\n(assert (<= X_7 1))", 6, "undeclared variable X_7"),
    ("(assert (<= Y_01 1))", 4, "undeclared variable Y_01"),
    ("(assert (<= X_0 1.2.3))", 4, "bad number '1.2.3'"),
    ("(assert (<= X_0 1e999))", 4, "out of range"),
    ("(assert (<= X_0 nan))", 4, "unknown symbol 'nan'"),
    ("\n\n(assert (or (and (<= X_0 Y_0))))", 6, "mixing input X_0 and output Y_0"),
    ("(assert (>= Y_0 X_0))", 4, "mixing input X_0 and output Y_0"),
    ("(assert (<= X_0 X_0))", 4, "only constant bounds on inputs"),
    ("(assert (<= X_0 1 2))", 4, "'<=' expects 2 arguments, got 3"),
    ("(assert (<= (+ Y_0 Y_0) 1))", 4, "arithmetic terms"),
    ("(assert X_0)", 4, "expected a formula"),
    ("(assert (<= X_0 1) (<= X_0 2))", 4, "assert takes one formula"),
    ("(assert ())", 4, "expected an operator"),
    ("(push 1)", 4, "unknown command 'push'"),
    ("X_0", 4, "unexpected 'X_0' outside parentheses"),
    ("(declare-const X_0 Real)", 4, "X_0 is declared twice"),
    ("(declare-const X_1 Int)", 4, "X_1 must be declared Real"),
    ("(declare-const Z_0 Real)", 4, "unsupported variable name 'Z_0'"),
    ("(declare-const X_01 Real)", 4, "unsupported variable name"),
    ("(declare-const X_1)", 4, "malformed declare-const"),
    ("(declare-fun X_1 (Real) Real)", 4, "malformed declare-fun"),
    ('(set-info :x "abc)', 4, "unterminated string"),
])
def test_error_messages_name_the_line(body, line, msg):
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n" + body
    e = error(text)
    assert e.line == line
    assert str(e).startswith(f"line {line}: ")
    assert msg in str(e)


def test_size_mismatch_with_model():
    text = decls(784, 10) + unit_box(784)
    assert str(error(text, n_inputs=5)) == "declares 784 inputs but the model has 5"
    assert str(error(text, n_outputs=3)) == "declares 10 outputs but the model has 3"
    assert parse_vnnlib_text(text + "(assert (<= Y_0 Y_1))", n_inputs=784, n_outputs=10).n_inputs == 784


@pytest.mark.parametrize("text, msg", [
    (decls(2, 1) + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= Y_0 0))",
     "input X_1 has no upper bound"),
    (decls(2, 1) + "(assert (<= X_0 1))(assert (<= X_1 1))(assert (>= X_1 0))",
     "input X_0 has no lower bound"),
    (decls(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (<= X_0 2)))",
     "input X_0 has no lower bound in input region 2 of 2"),
    (decls(1, 1) + "(assert (>= X_0 1))(assert (<= X_0 0.5))",
     "contradictory: X_0 has lower bound 1.0 > upper bound 0.5"),
    (decls(1, 1) + unit_box(1) + "(assert (or))", "can never hold"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)",
     "X_1 is not declared but X_2 is"),
    ("(declare-const Y_0 Real)", "no inputs declared"),
    ("(declare-const X_0 Real)", "no outputs declared"),
    ("", "no inputs declared"),
])
def test_semantic_errors(text, msg):
    assert msg in str(error(text))


# ---- hostile input ----------------------------------------------------------------------------------

def test_deep_nesting_fails_cleanly():
    n = 100_000
    for text in ("(" * n + ")" * n, decls(1, 1) + "(assert " + "(and " * n + ")" * (n + 1)):
        e = error(text)            # a RecursionError would fail this test
        assert f"nested deeper than {MAX_DEPTH}" in str(e)
    ok = decls(1, 1) + unit_box(1) + "(assert " + "(and " * 150 + "(<= Y_0 0)" + ")" * 151
    assert len(parse_vnnlib_text(ok).cases[0].unsafe) == 1


@pytest.mark.parametrize("name", ["X_99999999", "Y_10000000", "X_" + "9" * 5000])
def test_huge_variable_index_allocates_nothing(name):
    text = f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const {name} Real)"
    tracemalloc.start()
    try:
        e = error(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.line == 3 and "exceeds the limit of 10000000 variables" in str(e)
    assert peak < 1_000_000


def test_sizes_come_from_declared_indices_not_the_largest_one():
    # below the cap, a lone large index fails on the gap instead of sizing arrays from it
    e = error("(declare-const X_9999999 Real)(declare-const Y_0 Real)")
    assert "X_0 is not declared but X_9999999 is" in str(e)


def test_dnf_blowup_is_capped():
    two_way = "(assert (or (<= Y_0 0) (<= Y_1 0)))\n"
    base = decls(1, 2) + unit_box(1)
    assert "disjuncts" in str(error(base + two_way * 17))            # 2**17 > 100,000 across asserts
    assert len(parse_vnnlib_text(base + two_way * 10).cases[0].unsafe) == 2 ** 10
    nested = "(assert (and" + " (or (<= Y_0 0) (<= Y_1 0))" * 17 + "))"
    assert "disjuncts" in str(error(base + nested))                  # ... and inside one assert
    wide = "(assert (or" + " (<= Y_0 0)" * (MAX_DISJUNCTS + 1) + "))"
    assert "disjuncts" in str(error(base + wide))
    # few disjuncts but huge ones: 1000 disjuncts x 10,000 shared atoms
    fat = "(assert (and (or" + " (<= Y_0 0)" * 1000 + ")" + " (<= Y_1 0)" * 10_000 + "))"
    assert "too large" in str(error(base + fat))


# ---- the real benchmark files, checked against an independent line-based reader -------------------

FAMILIES = {"vnncomp2022/acasxu": 10, "vnncomp2022/mnist_fc": 30, "vnncomp2022/oval21": 30,
            "mipverify_wk17a": 100}
FILES = sorted(p for fam in FAMILIES for p in (BENCHMARKS / fam / "vnnlib").glob("*.vnnlib"))


def test_benchmark_files_are_present():
    for fam, n in FAMILIES.items():
        assert len(list((BENCHMARKS / fam / "vnnlib").glob("*.vnnlib"))) == n, fam


_NUM = r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?"
_TOP_X = re.compile(rf"\(assert \((<=|>=) X_(\d+) ({_NUM})\)\)")
_TOP_Y = re.compile(rf"\(assert (\((?:<=|>=) Y_\d+ (?:Y_\d+|{_NUM})\))\)")
_AND = re.compile(r"\(and (.*)\)")
_ATOM = re.compile(r"\((<=|>=) (\S+) ([^\s)]+)\)")


def independent_read(path: Path):
    """Read the layouts that occur in the benchmark files line by line, without an S-expression parser.

    Layouts: one ``(assert (<=|>= X_i v))`` per line; top-level ``(assert (<=|>= Y_i Y_j|v))``;
    ``(assert (or`` blocks with one ``(and ...)`` per line and closing ``))`` - a block over X
    atoms is an OR of boxes, a block over Y atoms an OR of output conjunctions.
    Returns [(lower, upper, [sorted rows of each conjunction])] in file order.
    """
    lines = [ln.split(";")[0].strip() for ln in path.read_text().splitlines()]
    nx = sum(ln.startswith("(declare-const X_") for ln in lines)
    ny = sum(ln.startswith("(declare-const Y_") for ln in lines)
    lo, hi = np.full(nx, np.nan), np.full(nx, np.nan)
    top_rows, blocks, block = [], [], None

    def row(op, a, b):                    # a OP b  ->  coefficients and d of  (..) . y <= d
        if op == ">=":
            a, b = b, a
        coef, d = [0.0] * ny, 0.0
        for tok, sign in ((a, 1.0), (b, -1.0)):
            if tok.startswith("Y_"):
                coef[int(tok[2:])] += sign
            else:
                d -= sign * float(tok)
        return tuple(coef) + (d,)

    for ln in lines:
        if not ln or ln.startswith("(declare-const"):
            continue
        if m := _TOP_X.fullmatch(ln):
            (lo if m[1] == ">=" else hi)[int(m[2])] = float(m[3])
        elif m := _TOP_Y.fullmatch(ln):
            top_rows.append(row(*_ATOM.fullmatch(m[1]).groups()))
        elif ln == "(assert (or":
            block = []
            blocks.append(block)
        elif (m := _AND.fullmatch(ln)) and block is not None:
            block.append(_ATOM.findall(m[1]))
        elif ln == "))":
            block = None
        else:
            raise AssertionError(f"independent reader does not know the line {ln!r}")

    box_blocks = [b for b in blocks if b[0][0][1].startswith("X_")]
    out_blocks = [b for b in blocks if b[0][0][1].startswith("Y_")]
    assert len(box_blocks) <= 1 and len(out_blocks) <= 1
    assert len(blocks) == len(box_blocks) + len(out_blocks)
    boxes = []
    for disjunct in (box_blocks[0] if box_blocks else [[]]):
        l, h = lo.copy(), hi.copy()
        for op, var, v in disjunct:
            (l if op == ">=" else h)[int(var[2:])] = float(v)
        assert not np.isnan(l).any() and not np.isnan(h).any()
        boxes.append((l, h))
    conjs = [top_rows + [row(*atom) for atom in d] for d in (out_blocks[0] if out_blocks else [[]])]
    return [(l, h, sorted(tuple(sorted(c)) for c in conjs)) for l, h in boxes]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(BENCHMARKS)) for p in FILES])
def test_benchmark_file_matches_independent_reader(path):
    prop = parse_vnnlib(path)
    expected = independent_read(path)
    assert len(prop.cases) == len(expected)
    for case, (lo, hi, conjs) in zip(prop.cases, expected):
        assert case.box.size == prop.n_inputs == lo.size
        np.testing.assert_array_equal(case.box.lower, lo)
        np.testing.assert_array_equal(case.box.upper, hi)
        assert all(c.C.shape[1] == prop.n_outputs for c in case.unsafe)
        assert unsafe_set(case) == conjs


def test_mnist_fc_parses_fast():
    path = BENCHMARKS / "vnncomp2022/mnist_fc/vnnlib/prop_0_0.03.vnnlib"
    start = time.perf_counter()
    prop = parse_vnnlib(path, n_inputs=784, n_outputs=10)
    assert time.perf_counter() - start < 1.0
    assert len(prop.cases[0].unsafe) == 9
