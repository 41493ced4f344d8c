"""VNN-LIB v1 parser: ``.vnnlib`` text -> ``spec.Property``.

API
---
``parse_vnnlib(path, n_inputs=None, n_outputs=None)``   a file path (str or PathLike); gzip files
                                                        (``.vnnlib.gz``) are recognised by content.
``parse_vnnlib_text(text, n_inputs=None, n_outputs=None)``  the same for an in-memory string.

Both raise ``VnnlibError`` (a ``ValueError``) whose message starts with ``line N:`` whenever the
problem has a place in the file.  If ``n_inputs`` / ``n_outputs`` are given they must equal the
number of declared ``X_i`` / ``Y_i``.

Accepted language
-----------------
- ``(declare-const X_i Real)`` / ``(declare-const Y_i Real)`` (also ``(declare-fun X_i () Real)``):
  flat row-major indices, each declared once, before use, and together forming ``0..n-1``.
- ``(assert F)`` with ``F`` built from ``(and F ...)``, ``(or F ...)`` and atoms ``(OP a b)``,
  ``OP`` in ``<= >= < >``, ``a``/``b`` a declared variable or a number (``1e-05``, ``-.5``, ``+3``,
  ``(- 0.5)``).  Atoms bound one input by a constant, or compare outputs with outputs/constants.
- ``;`` comments anywhere; ``check-sat``/``get-model``/``set-info``/``set-logic``/``set-option``/
  ``exit`` commands are ignored.

Normal form (what the returned ``Property`` guarantees)
-------------------------------------------------------
The asserts are one big conjunction.  It is expanded to DNF (ANDs distributed over ORs), each
disjunct is split into its input atoms (a box) and its output atoms (a conjunction of rows), and
disjuncts are grouped by their numeric box, in order of first appearance:
``Property = OR_case (x in box_case AND OR_j (C_j y <= d_j))``.  Disjuncts whose box is empty
(contradictory bounds) are dropped - they can never hold - but if all are empty that is an error.
Every input of every case has finite bounds, otherwise the error names the variable.

Resource limits (hostile files fail with VnnlibError, never RecursionError/MemoryError): text size,
nesting depth, variable index, number of DNF disjuncts and atoms, total numbers in the result.
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import os
import re
from array import array

import numpy as np

from .spec import Box, Case, Conjunction, Property

__all__ = ["VnnlibError", "parse_vnnlib", "parse_vnnlib_text",
           "MAX_TEXT_BYTES", "MAX_VARIABLES", "MAX_DEPTH", "MAX_DISJUNCTS"]

MAX_TEXT_BYTES = 256 * 2**20      # largest VNN-COMP files are a few MB
MAX_VARIABLES = 10**7             # per kind (X or Y); indices must be below this
MAX_DEPTH = 200                   # real files nest 4 deep; also keeps the DNF recursion shallow
MAX_DISJUNCTS = 100_000           # after DNF expansion
MAX_DNF_ATOMS = 5_000_000         # atom references over all DNF disjuncts of one formula
MAX_NUMBERS = 50_000_000          # floats over all boxes and constraint matrices (400 MB)


class VnnlibError(ValueError):
    """A VNN-LIB file is malformed or unsupported.  ``line`` is the 1-based line, or None."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None):
        self.message, self.line, self.source = message, line, source
        where = "".join(p for p in (f"{source}: " if source else "",
                                    f"line {line}: " if line is not None else ""))
        super().__init__(where + message)


# One regex tokenises the whole text.  Newlines are tokens so the loop can count lines;
# strings / |quoted symbols| are matched whole so parentheses inside them are not structure.
_TOKEN = re.compile(r'\n|;[^\n]*|[()]|"(?:[^"]|"")*"|\|[^|]*\||[^\s();"|]+|["|]')
_VAR = re.compile(r"([XY])_([0-9]+)")
_NUM = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DIGITS = len(str(MAX_VARIABLES - 1))
_IGNORED = {"check-sat", "get-model", "exit", "set-info", "set-logic", "set-option"}
_CMP = {"<=", ">=", "<", ">"}
_LOWER, _UPPER, _OUT = 0, 1, 2   # atom kinds


def parse_vnnlib(path, n_inputs: int | None = None, n_outputs: int | None = None) -> Property:
    """Parse the VNN-LIB file at ``path`` (plain or gzip-compressed).  See the module docstring."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            data = f.read(MAX_TEXT_BYTES + 1)   # bounded read: a gzip bomb cannot exhaust memory
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if not gz:
            raise
        raise VnnlibError(f"cannot decompress: {e}", source=path) from None
    if len(data) > MAX_TEXT_BYTES:
        raise VnnlibError(f"file is larger than {MAX_TEXT_BYTES} bytes", source=path)
    # Non-UTF-8 bytes can only be legal inside comments; elsewhere they surface as bad symbols.
    text = data.decode("utf-8", errors="replace")
    try:
        return parse_vnnlib_text(text, n_inputs, n_outputs)
    except VnnlibError as e:
        raise VnnlibError(e.message, e.line, source=path) from None


def parse_vnnlib_text(text: str, n_inputs: int | None = None, n_outputs: int | None = None) -> Property:
    """Parse VNN-LIB source text.  See the module docstring for the language and guarantees."""
    if len(text) > MAX_TEXT_BYTES:
        raise VnnlibError(f"text is longer than {MAX_TEXT_BYTES} characters")
    p = _Parser()
    p.feed(text)
    return p.finish(n_inputs, n_outputs)


class _Parser:
    """Streams top-level commands out of the token loop, so only one command's tree is alive.

    Atoms are stored column-wise in compact arrays and referred to by index:
    kind _LOWER/_UPPER: ``X_a >= val`` / ``X_a <= val``;
    kind _OUT: ``y_a - y_b <= val`` where ``a`` or ``b`` may be -1 (absent).
    """

    def __init__(self):
        self.declared = {"X": bytearray(), "Y": bytearray()}   # declared[k][i] == 1 iff k_i declared
        self.count = {"X": 0, "Y": 0}
        self.kind, self.a, self.b, self.val = array("b"), array("q"), array("q"), array("d")
        self.global_ids = array("q")     # atoms of asserts that are plain conjunctions
        self.disjunctive = []            # DNFs (lists of atom-id lists) of the other asserts

    # ---- tokens -> S-expressions --------------------------------------------------------------
    def feed(self, text: str) -> None:
        line = 1
        stack = []   # open expressions; an expression is [start_line, item, item, ...]
        for tok in map(re.Match.group, _TOKEN.finditer(text)):
            c = tok[0]
            if c == "\n":
                line += 1
            elif c == ";":
                continue
            elif c == "(":
                if len(stack) >= MAX_DEPTH:
                    raise VnnlibError(f"expressions nested deeper than {MAX_DEPTH} levels", line)
                node = [line]
                if stack:
                    stack[-1].append(node)
                stack.append(node)
            elif c == ")":
                if not stack:
                    raise VnnlibError("unbalanced parentheses: unexpected ')'", line)
                node = stack.pop()
                if not stack:
                    self.command(node)
            else:
                if (c == '"' or c == "|") and len(tok) == 1:
                    what = "string" if c == '"' else "|symbol|"
                    raise VnnlibError(f"unterminated {what}", line)
                if not stack:
                    raise VnnlibError(f"unexpected {tok[:40]!r} outside parentheses", line)
                stack[-1].append(tok)
                if c == '"' or c == "|":
                    line += tok.count("\n")
        if stack:
            raise VnnlibError("unbalanced parentheses: '(' is never closed", stack[0][0])

    # ---- commands -------------------------------------------------------------------------------
    def command(self, node: list) -> None:
        line = node[0]
        head = node[1] if len(node) > 1 else None
        if not isinstance(head, str):
            raise VnnlibError("expected a command such as (assert ...)", line)
        args = node[2:]
        if head == "declare-const" and len(args) == 2:
            self.declare(args[0], args[1], line)
        elif head == "declare-fun" and len(args) == 3 and _is_unit(args[1]):
            self.declare(args[0], args[2], line)
        elif head in ("declare-const", "declare-fun"):
            raise VnnlibError(f"malformed {head}", line)
        elif head == "assert":
            if len(args) != 1:
                raise VnnlibError(f"assert takes one formula, got {len(args)}", line)
            terms, _ = self.dnf(args[0], line)
            if len(terms) == 1:
                self.global_ids.extend(terms[0])
            else:
                self.disjunctive.append(terms)
        elif head not in _IGNORED:
            raise VnnlibError(f"unknown command {head!r}", line)

    def declare(self, name, sort, line: int) -> None:
        m = _VAR.fullmatch(name) if isinstance(name, str) else None
        if not m or (m[2] != "0" and m[2][0] == "0"):
            raise VnnlibError(f"unsupported variable name {name!r} (expected X_i or Y_i)", line)
        if sort != "Real":
            raise VnnlibError(f"{name} must be declared Real, got {sort!r}", line)
        letter, digits = m[1], m[2]
        # check the digit count before int(): sizes come from indices, so they must stay bounded
        if len(digits) > _MAX_DIGITS or int(digits) >= MAX_VARIABLES:
            raise VnnlibError(f"{name}: index exceeds the limit of {MAX_VARIABLES} variables", line)
        i = int(digits)
        bits = self.declared[letter]
        if i >= len(bits):
            bits.extend(bytes(i + 1 - len(bits)))   # at most MAX_VARIABLES bytes
        if bits[i]:
            raise VnnlibError(f"{name} is declared twice", line)
        bits[i] = 1
        self.count[letter] += 1

    # ---- formulas -> DNF --------------------------------------------------------------------------
    def dnf(self, f, line: int) -> tuple[list[list[int]], int]:
        """DNF of formula ``f`` as (list of disjuncts = lists of atom ids, total atom count).

        Recursion depth is bounded by MAX_DEPTH (enforced by the tokenizer).
        """
        if not isinstance(f, list):
            raise VnnlibError(f"expected a formula in parentheses, got {f[:40]!r}", line)
        line = f[0]
        op = f[1] if len(f) > 1 else None
        if not isinstance(op, str):
            raise VnnlibError("expected an operator after '('", line)
        args = f[2:]
        if op == "and":
            terms, n_atoms = [[]], 0
            for arg in args:
                t2, n2 = self.dnf(arg, line)
                terms, n_atoms = _product(terms, n_atoms, t2, n2, line)
            return terms, n_atoms
        if op == "or":
            terms, n_atoms = [], 0
            for arg in args:
                t2, n2 = self.dnf(arg, line)
                terms.extend(t2)
                n_atoms += n2
                _check_size(len(terms), n_atoms, line)
            return terms, n_atoms
        if op in _CMP:
            if len(args) != 2:
                raise VnnlibError(f"'{op}' expects 2 arguments, got {len(args)}", line)
            return self.atom(op, args[0], args[1], line)
        raise VnnlibError(f"unknown operator {op!r}", line)

    def atom(self, op: str, lhs, rhs, line: int) -> tuple[list[list[int]], int]:
        # '<' and '>' are read as '<=' and '>=' (the usual VNN-COMP reading): this only adds the
        # boundary, so input boxes stay closed and both the box and the unsafe set can only grow -
        # a proof of safety remains valid.  (A counterexample exactly on such a boundary would
        # not satisfy the strict original, but verifiers and float arithmetic cannot tell anyway.)
        if op[0] == ">":
            lhs, rhs = rhs, lhs                  # now: lhs <= rhs
        (lk, lv), (rk, rv) = self.term(lhs, line), self.term(rhs, line)
        if lk == "N" and rk == "N":              # constant: true -> one empty disjunct, false -> none
            return ([[]] if lv <= rv else []), 0
        if lk == "X" and rk == "X":
            raise VnnlibError(f"X_{lv} and X_{rv} are compared: only constant bounds on inputs "
                              "are supported", line)
        if "X" in (lk, rk) and "Y" in (lk, rk):
            x, y = (lv, rv) if lk == "X" else (rv, lv)
            raise VnnlibError(f"mixing input X_{x} and output Y_{y} in one comparison", line)
        if lk == "X":
            atom = (_UPPER, lv, -1, rv)
        elif rk == "X":
            atom = (_LOWER, rv, -1, lv)
        elif lk == "Y" and rk == "Y":
            atom = (_OUT, lv, rv, 0.0)
        elif lk == "Y":
            atom = (_OUT, lv, -1, rv)
        else:
            atom = (_OUT, -1, rv, -lv)           # c <= y_j  <=>  -y_j <= -c
        self.kind.append(atom[0])
        self.a.append(atom[1])
        self.b.append(atom[2])
        self.val.append(atom[3])
        return [[len(self.val) - 1]], 1

    def term(self, t, line: int):
        """('X', index) | ('Y', index) | ('N', finite float)."""
        if isinstance(t, list):
            # SMT-LIB spells negative literals (- 0.5); anything else is arithmetic we don't support
            if len(t) == 3 and t[1] == "-" and isinstance(t[2], str) and _NUM.fullmatch(t[2]):
                return "N", -self.number(t[2], t[0])
            raise VnnlibError("arithmetic terms are not supported (only variables and numbers)", t[0])
        m = _VAR.fullmatch(t)
        if m:
            bits = self.declared[m[1]]
            if len(m[2]) > _MAX_DIGITS or (m[2] != "0" and m[2][0] == "0") \
                    or int(m[2]) >= len(bits) or not bits[int(m[2])]:
                raise VnnlibError(f"undeclared variable {t[:40]}", line)
            return m[1], int(m[2])
        if _NUM.fullmatch(t):
            return "N", self.number(t, line)
        if t[0] in "+-.0123456789":
            raise VnnlibError(f"bad number {t[:40]!r}", line)
        raise VnnlibError(f"unknown symbol {t[:40]!r} (expected X_i, Y_i or a number)", line)

    @staticmethod
    def number(s: str, line: int) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise VnnlibError(f"number {s[:40]} is out of range", line)
        return v

    # ---- DNF -> Property --------------------------------------------------------------------------
    def finish(self, n_inputs: int | None, n_outputs: int | None) -> Property:
        nx, ny = self._sizes(n_inputs, n_outputs)
        kind = np.frombuffer(self.kind, dtype=np.int8)
        a = np.frombuffer(self.a, dtype=np.int64)
        b = np.frombuffer(self.b, dtype=np.int64)
        val = np.frombuffer(self.val, dtype=np.float64)

        def apply_bounds(ids, lo, hi):
            k = kind[ids]
            sel = ids[k == _LOWER]
            np.maximum.at(lo, a[sel], val[sel])
            sel = ids[k == _UPPER]
            np.minimum.at(hi, a[sel], val[sel])

        g = np.frombuffer(self.global_ids, dtype=np.int64)
        g_out = g[kind[g] == _OUT]
        g_lo, g_hi = np.full(nx, -np.inf), np.full(nx, np.inf)
        apply_bounds(g, g_lo, g_hi)

        n = 1
        for terms in self.disjunctive:
            n *= len(terms)
            if n > MAX_DISJUNCTS:
                raise VnnlibError(f"more than {MAX_DISJUNCTS} disjuncts after expanding to DNF")
        if n == 0:
            raise VnnlibError("the assertions can never hold (an 'or' with no satisfiable disjunct)")

        cases = []          # (lo, hi, output-atom-id arrays, their bytes for de-duplication)
        by_digest = {}      # box digest -> indices into cases
        box_of = {}         # input atom ids (bytes) -> case index, or None if the box is empty
        budget = [0]
        first_empty = None

        def spend(k):
            budget[0] += k
            if budget[0] > MAX_NUMBERS:
                raise VnnlibError(f"specification too large: more than {MAX_NUMBERS} numbers")

        for combo in itertools.product(*self.disjunctive):
            ids = np.fromiter(itertools.chain.from_iterable(combo), dtype=np.int64)
            k = kind[ids]
            # sorted (file order), so disjuncts repeated by the expansion give equal keys below
            in_ids, out_ids = ids[k != _OUT], np.unique(ids[k == _OUT])
            key = in_ids.tobytes()
            if key not in box_of:
                lo, hi = g_lo.copy(), g_hi.copy()
                apply_bounds(in_ids, lo, hi)
                lo += 0.0     # -0.0 -> 0.0 so equal boxes have equal bytes
                hi += 0.0
                bad = np.flatnonzero(lo > hi)
                if bad.size:
                    first_empty = first_empty or (int(bad[0]), float(lo[bad[0]]), float(hi[bad[0]]))
                    box_of[key] = None
                else:
                    digest = hashlib.blake2b(lo.tobytes() + hi.tobytes(), digest_size=16).digest()
                    same = [c for c in by_digest.get(digest, ())
                            if np.array_equal(cases[c][0], lo) and np.array_equal(cases[c][1], hi)]
                    if same:
                        box_of[key] = same[0]
                    else:
                        spend(2 * nx)
                        by_digest.setdefault(digest, []).append(len(cases))
                        box_of[key] = len(cases)
                        cases.append((lo, hi, [], set()))
            c = box_of[key]
            out_key = out_ids.tobytes()
            if c is not None and out_key not in cases[c][3]:   # same atoms -> same conjunction
                spend((g_out.size + out_ids.size) * ny)
                cases[c][2].append(out_ids)
                cases[c][3].add(out_key)

        if not cases:
            i, lo, hi = first_empty
            raise VnnlibError(f"the input constraints are contradictory: X_{i} has lower bound "
                              f"{lo!r} > upper bound {hi!r}")
        for c, (lo, hi, _, _) in enumerate(cases):
            for bound, name in ((lo, "lower"), (hi, "upper")):
                bad = np.flatnonzero(~np.isfinite(bound))
                if bad.size:
                    where = f" in input region {c + 1} of {len(cases)}" if len(cases) > 1 else ""
                    raise VnnlibError(f"input X_{bad[0]} has no {name} bound{where}")

        def conjunction(out_ids):
            rows = np.concatenate([g_out, out_ids])
            C = np.zeros((rows.size, ny))
            r = np.arange(rows.size)
            p, q = a[rows], b[rows]
            np.add.at(C, (r[p >= 0], p[p >= 0]), 1.0)
            np.add.at(C, (r[q >= 0], q[q >= 0]), -1.0)   # add.at: Y_i <= Y_i gives a zero row
            return Conjunction(C, val[rows])

        return Property(tuple(Case(Box(lo, hi), tuple(conjunction(o) for o in outs))
                              for lo, hi, outs, _ in cases), n_inputs=nx, n_outputs=ny)

    def _sizes(self, n_inputs, n_outputs) -> tuple[int, int]:
        sizes = []
        for letter, word, expected in (("X", "inputs", n_inputs), ("Y", "outputs", n_outputs)):
            bits, n = self.declared[letter], self.count[letter]
            if n == 0:
                raise VnnlibError(f"no {word} declared (expected (declare-const {letter}_0 Real) ...)")
            if n != len(bits):   # indices must be exactly 0..n-1
                raise VnnlibError(f"{letter}_{bits.index(0)} is not declared but "
                                  f"{letter}_{len(bits) - 1} is (indices must be 0..n-1)")
            if expected is not None and n != expected:
                raise VnnlibError(f"declares {n} {word} but the model has {expected}")
            sizes.append(n)
        return sizes[0], sizes[1]


def _is_unit(item) -> bool:
    """True for ``()``, the empty argument list of ``declare-fun`` (stored as ``[line]``)."""
    return isinstance(item, list) and len(item) == 1


def _check_size(n_terms: int, n_atoms: int, line: int) -> None:
    if n_terms > MAX_DISJUNCTS:
        raise VnnlibError(f"more than {MAX_DISJUNCTS} disjuncts after expanding to DNF", line)
    if n_atoms > MAX_DNF_ATOMS:
        raise VnnlibError(f"formula too large after expanding to DNF (more than {MAX_DNF_ATOMS} "
                          "atoms)", line)


def _product(t1, n1, t2, n2, line):
    """DNF of (t1 AND t2); sizes are checked before any work so blow-ups fail fast.

    Terms are never shared between DNFs, so extending them in place is safe.
    """
    n_terms = len(t1) * len(t2)
    n_atoms = n1 * len(t2) + n2 * len(t1)
    _check_size(n_terms, n_atoms, line)
    if len(t2) == 1:
        for t in t1:
            t.extend(t2[0])
        return t1, n_atoms
    return [x + y for x in t1 for y in t2], n_atoms
