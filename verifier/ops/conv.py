"""ConvMatrix: the matrix of a 2-D convolution (1-D as height 1), kept as its kernel.

A Conv layer's matrix has ``M * Ho * Wo`` rows and ``C * H * W`` columns but only ``M * Cg * kh *
kw`` distinct values.  Back-substitution multiplies coefficient blocks ``L`` (``(..., rows)``) by it:
as a product with the expanded (CSR) matrix that is a scalar loop over every nonzero for every row
of ``L`` (scipy's ``csc_matvecs``: 70 % of a CROWN pass on ResNet-4B); here it is a *transposed
convolution* of the coefficient maps: one dense ``(Cg, Mg) @ (Mg, N * Ho * Wo)`` product (BLAS) per
kernel offset, added into a padded map at the offset's strided positions, then the padding cropped
away.  ``times`` is the forward convolution the same way.

A ``Linear`` node keeps its CSR matrices (``mats``) as the canonical form -- MILP rows, |A|, A+/A-,
interval images and the float-error charges all read them -- and a ``ConvMatrix`` per input where
the matrix is a convolution (``Linear.convs``).  Both forms are the same matrix: ``Linear`` checks
that on a random probe when the two are paired (``matches``), so a wrong geometry cannot slip into
a bound.  Rounding: every entry of ``L @ A`` formed here is a sum of at most as many nonzero
products as the CSR product sums (a kernel offset that falls into the padding adds nothing; a zero
weight adds an exact zero), so the engine's ``gamma(rows) |L| |A| m`` charge covers it in any order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class ConvMatrix:
    weight: np.ndarray                  # (M, Cg, kh, kw), float64 (float32 for estimates)
    in_shape: tuple                     # (C, H, W)
    out_hw: tuple                       # (Ho, Wo)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pads: tuple = (0, 0)                # padding before the first row / column
    groups: int = 1

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        M = self.weight.shape[0]
        C, H, W = self.in_shape
        return (M * self.out_hw[0] * self.out_hw[1], C * H * W)

    def _padded(self) -> tuple:
        """Size of the padded map that holds every tap and the whole input."""
        (kh, kw), (Ho, Wo) = self.weight.shape[2:], self.out_hw
        (sh, sw), (dh, dw), (ph, pw) = self.stride, self.dilation, self.pads
        _, H, W = self.in_shape
        return (max(H + ph, (Ho - 1) * sh + (kh - 1) * dh + 1),
                max(W + pw, (Wo - 1) * sw + (kw - 1) * dw + 1))

    def _taps(self):
        """Per kernel offset: its weights per group ``(g, Mg, Cg)`` and its strided window of the
        padded map."""
        M, Cg, kh, kw = self.weight.shape
        g = self.groups
        (Ho, Wo), (sh, sw), (dh, dw) = self.out_hw, self.stride, self.dilation
        for i in range(kh):
            for j in range(kw):
                w = self.weight[:, :, i, j].reshape(g, M // g, Cg)
                yield w, (slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh),
                          slice(j * dw, j * dw + (Wo - 1) * sw + 1, sw))

    @property
    def pays(self) -> bool:
        """Whether the kernel form measured faster than CSR for this layer (one core, bound
        passes of ResNet-4B and oval21, blocks of ~1000 rows): stride 1 with at least 32 x 32
        channel pairs per group (ResNet-4B's 32-channel 3x3 convolutions: 0.17-0.25 s against
        0.31 s per product); narrower or strided layers were as fast or faster as CSR."""
        M, Cg = self.weight.shape[:2]
        return tuple(self.stride) == (1, 1) and (M // self.groups) * Cg >= 1024

    # -- products ---------------------------------------------------------------------------------
    def rows_times(self, L: np.ndarray) -> np.ndarray:
        """``L @ A`` for ``L`` of shape ``(..., rows)``: the transposed convolution.  The rows of
        ``L`` are the innermost axis of every map, so each offset's strided add moves contiguous
        runs (with the rows outermost it was 4x slower)."""
        lead = L.shape[:-1]
        N = int(np.prod(lead, dtype=np.int64))
        M, Cg = self.weight.shape[:2]
        g = self.groups
        C, H, W = self.in_shape
        Ho, Wo = self.out_hw
        Lt = np.ascontiguousarray(L.reshape(N, -1).T).reshape(g, M // g, Ho * Wo * N)
        Hp, Wp = self._padded()
        G = np.zeros((g, Cg, Hp, Wp, N), L.dtype)
        for w, (ys, xs) in self._taps():
            G[:, :, ys, xs, :] += np.matmul(w.transpose(0, 2, 1), Lt).reshape(g, Cg, Ho, Wo, N)
        ph, pw = self.pads
        out = G[:, :, ph:ph + H, pw:pw + W, :].reshape(C, H, W, N)
        return _rows_first(out.reshape(C * H, W, N), N).reshape(lead + (C * H * W,))

    def times(self, x: np.ndarray) -> np.ndarray:
        """``x @ A.T`` for ``x`` of shape ``(..., columns)``: the convolution of every row."""
        lead = x.shape[:-1]
        N = int(np.prod(lead, dtype=np.int64))
        M, Cg = self.weight.shape[:2]
        g = self.groups
        C, H, W = self.in_shape
        Ho, Wo = self.out_hw
        Hp, Wp = self._padded()
        ph, pw = self.pads
        X = np.zeros((C, Hp, Wp, N), x.dtype)
        X[:, ph:ph + H, pw:pw + W, :] = x.reshape(N, C, H, W).transpose(1, 2, 3, 0)
        X = X.reshape(g, Cg, Hp, Wp, N)
        Y = np.zeros((g, M // g, Ho * Wo * N), x.dtype)
        for w, (ys, xs) in self._taps():
            Y += np.matmul(w, X[:, :, ys, xs, :].reshape(g, Cg, Ho * Wo * N))
        return _rows_first(Y.reshape(M * Ho, Wo, N), N).reshape(lead + (M * Ho * Wo,))

    # -- the expanded form and folding ------------------------------------------------------------
    def csr(self) -> sp.csr_array:
        """The expanded matrix (zero weights left out), as the loader builds it."""
        M, Cg, kh, kw = self.weight.shape
        C, H, W = self.in_shape
        Ho, Wo = self.out_hw
        g = self.groups
        m = np.arange(M)[:, None, None, None, None, None]
        c = np.arange(Cg)[None, :, None, None, None, None]
        i = np.arange(kh)[None, None, :, None, None, None]
        j = np.arange(kw)[None, None, None, :, None, None]
        oy = np.arange(Ho)[None, None, None, None, :, None]
        ox = np.arange(Wo)[None, None, None, None, None, :]
        y = oy * self.stride[0] - self.pads[0] + i * self.dilation[0]
        x = ox * self.stride[1] - self.pads[1] + j * self.dilation[1]
        ch = (m // (M // g)) * Cg + c
        full = (M, Cg, kh, kw, Ho, Wo)
        rows = np.broadcast_to((m * Ho + oy) * Wo + ox, full)
        cols = np.broadcast_to((ch * H + y) * W + x, full)
        vals = np.broadcast_to(self.weight[:, :, :, :, None, None], full)
        keep = np.broadcast_to((y >= 0) & (y < H) & (x >= 0) & (x < W), full) & (vals != 0)
        return sp.csr_array((vals[keep], (rows[keep], cols[keep])), shape=self.shape)

    def scaled_out(self, d: np.ndarray) -> "ConvMatrix | None":
        """``diag(d) @ A``, if ``d`` (one value per row) is constant over each output channel."""
        M = self.weight.shape[0]
        per = np.asarray(d, np.float64).reshape(M, -1)
        if not np.all(per == per[:, :1]):
            return None
        return self._with(self.weight * per[:, 0][:, None, None, None])

    def scaled_in(self, d: np.ndarray) -> "ConvMatrix | None":
        """``A @ diag(d)``, if ``d`` (one value per column) is constant over each input channel."""
        M, Cg = self.weight.shape[:2]
        C = self.in_shape[0]
        per = np.asarray(d, np.float64).reshape(C, -1)
        if not np.all(per == per[:, :1]):
            return None
        s = per[:, 0].reshape(self.groups, Cg)                     # input channel (group, c)
        grp = np.arange(M) // (M // self.groups)
        return self._with(self.weight * s[grp][:, :, None, None])

    def astype(self, dtype) -> "ConvMatrix":
        """The same convolution with its kernel in ``dtype`` (float32 for estimates)."""
        return self._with(self.weight.astype(dtype))

    def _with(self, weight) -> "ConvMatrix":
        return ConvMatrix(weight, self.in_shape, self.out_hw, self.stride, self.dilation,
                          self.pads, self.groups)

    def matches(self, A, seed: int = 0) -> bool:
        """Whether this is the matrix ``A`` (same shape, and ``R @ A`` agrees on random rows ``R``
        up to float64 rounding, which a wrong weight or geometry cannot)."""
        if tuple(A.shape) != self.shape:
            return False
        R = np.random.default_rng(seed).standard_normal((2, A.shape[0]))
        ref = np.asarray((A.T @ R.T).T) if sp.issparse(A) else R @ A
        mag = np.asarray((abs(A).T @ np.abs(R).T).T) if sp.issparse(A) else np.abs(R) @ np.abs(A)
        tol = 4e-16 * (A.shape[0] + 2) * mag + 1e-300            # two float64 sums of <= rows terms
        return bool(np.all(np.abs(self.rows_times(R) - ref) <= tol))


def _rows_first(V: np.ndarray, N: int, block: int = 64) -> np.ndarray:
    """``(N, a * b)`` from a (possibly strided) ``(a, b, N)`` view: one copy, in blocks of rows
    that stay in cache (a plain transposed copy was 3x slower)."""
    a, b, _ = V.shape
    out = np.empty((N, a, b), V.dtype)
    for n0 in range(0, N, block):
        out[n0:n0 + block] = V[:, :, n0:n0 + block].transpose(2, 0, 1)
    return out.reshape(N, a * b)


def diagonal(A) -> np.ndarray | None:
    """The diagonal of ``A`` if ``A`` is a square diagonal matrix (identity, scaling), else None."""
    if A.shape[0] != A.shape[1]:
        return None
    if sp.issparse(A):
        C = sp.coo_array(A)
        if np.any(C.row != C.col):
            return None
        return np.asarray(A.diagonal(), np.float64)
    d = np.diagonal(A)
    return d.copy() if np.count_nonzero(A) == np.count_nonzero(d) else None


def compose(A, SA: ConvMatrix | None, B, SB: ConvMatrix | None) -> ConvMatrix | None:
    """The ConvMatrix of ``A @ B`` when one side is a convolution and the other a diagonal whose
    values are constant per channel (BatchNorm, a normalisation, an identity of a residual Add),
    else None."""
    if SB is not None:
        d = diagonal(A)
        if d is not None:
            return SB.scaled_out(d)
    if SA is not None:
        d = diagonal(B)
        if d is not None:
            return SA.scaled_in(d)
    return None
