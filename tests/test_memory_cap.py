"""The memory cap of the bound engine (``Engine(memory_bytes=)``, ``Tuning.memory_gb``).

A cap below a layer's smallest block leaves that layer at interval bounds: still sound (sampled
points lie inside), never tighter than without the cap; a cap below one row of the output gives a
clear ``unknown`` with the reason, not a crash; the stats say what was bounded.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_conv import _resnet_block
from verifier import Options, verify
from verifier.bounds.engine import BLOCK_COPIES, Engine, MemoryCapError, domains
from verifier.config import OptionsError, Tuning
from verifier.onnx_loader import convert


def _net_and_box(seed=3, r=0.05):
    g = convert(_resnet_block())
    rng = np.random.default_rng(seed)
    c = rng.random(g.n_inputs)
    return g, c - r, c + r, rng


def test_cap_below_a_layers_block_gives_sound_looser_bounds():
    g, lo, hi, rng = _net_and_box()
    widest = int(max(n.size for n in g.nodes))
    # one output row fits, a lower/upper row pair of the widest nodes does not
    cap = 8.0 * BLOCK_COPIES * 1.5 * widest
    capped, free = Engine(g, memory_bytes=cap), Engine(g)
    a, b = capped.bound(domains(g, lo, hi)), free.bound(domains(g, lo, hi))
    assert capped.stats["interval_only"], "the cap must leave some node at interval bounds"
    assert not free.stats["interval_only"]
    assert capped.stats["max_block_bytes"] <= cap
    for i in capped.stats["interval_only"]:
        assert i not in capped.stats["rows_bounded"]
    X = np.vstack([lo + (hi - lo) * rng.random((600, lo.size)),
                   np.where(rng.random((100, lo.size)) < 0.5, lo, hi)])
    vals = g.forward_all(X)
    for i, v in enumerate(vals):
        assert np.all(v >= a.lower[i][0]) and np.all(v <= a.upper[i][0]), i
        assert np.all(a.lower[i] <= b.lower[i] + 1e-9) and np.all(a.upper[i] >= b.upper[i] - 1e-9)
    C = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    m_cap = capped.margins(a, C, np.zeros(2))
    m_free = free.margins(b, C, np.zeros(2))
    assert np.all(vals[g.output] @ C.T >= m_cap[0])
    assert np.all(m_cap <= m_free + 1e-9)


def test_cap_below_one_output_row_is_a_clear_error_in_the_engine():
    g, lo, hi, _ = _net_and_box()
    eng = Engine(g, memory_bytes=1000.0)
    dom = eng.bound(domains(g, lo, hi))               # every node keeps its interval bounds
    assert set(eng.stats["interval_only"]) >= set(eng.needed) - {g.output} - {
        i for i in eng.needed if eng.fits(i, 2)}
    with pytest.raises(MemoryCapError, match="memory cap"):
        eng.margins(dom, np.eye(3)[:1] - np.eye(3)[1:2], np.zeros(1))


def test_pipeline_answers_unknown_with_the_reason_when_nothing_fits():
    g, lo, hi, _ = _net_and_box()
    x = (lo + hi) / 2
    label = int(np.argmax(g.forward(x)))
    opts = Options(timeout=20, tuning=Tuning(memory_gb=1e-6))
    cert = verify(g, x, label=label, eps=0.001, options=opts)
    assert cert.status == "unknown"
    assert "memory cap" in cert.stats["unknown_reason"]
    out = json.loads(cert.to_json())
    assert out["status"] == cert.status
    # with the default cap the same case is bounded, and stats report the engine's cost
    cert = verify(g, x, label=label, eps=0.001, options=Options(timeout=20))
    e = cert.stats["per_case"][0]["engine"]
    assert e["max_block_bytes"] > 0 and sum(e["rows_bounded"].values()) > 0


def test_memory_gb_is_validated():
    with pytest.raises(OptionsError):
        Tuning(memory_gb=0)
    with pytest.raises(OptionsError):
        Tuning(memory_gb=float("inf"))


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "2"])
def test_pool_gb_is_validated(bad):
    with pytest.raises(OptionsError):
        Tuning(pool_gb=bad)
