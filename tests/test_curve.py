"""Robustness curves (``verify MODEL --dataset D --eps E1 E2 ...``, ``verifier.robustness_curve``):
the schedule that uses nested boxes, answers that agree with single runs and replay, resume, the
table, the plot, and bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import verifier
from verifier.batch.curve import CURVE_FIELDS, _Sample, _Schedule
from verifier.batch.errors import BatchError
from verifier.cli import main
from verifier.replay import replay
from verifier.spec import robustness_property

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "digits_mlp.onnx")
CNN = str(ROOT / "models" / "digits_cnn.onnx")
DATASET = ROOT / "models" / "digits_samples.npz"
EPS = [0.005, 0.01, 0.02, 0.05]


def data():
    d = np.load(DATASET)
    return d["x"], d["y"]


def compatible(a: str, b: str) -> bool:
    """Two answers for one point that do not contradict: equal, or one undecided (a MILP near its
    timeout may end either way on a busy machine)."""
    return a == b or "verified" not in (a, b) or "falsified" not in (a, b)


# ------------------------------------------------------------------------------------------------
# the schedule, with answers known by hand
# ------------------------------------------------------------------------------------------------
def schedule_runs(answer_at, n_eps):
    """Drive one sample through the schedule; ``answer_at(k)`` is the status a run at ε_k gives.
    Returns the positions run (in order) and the final status per position."""
    s = _Sample(0, np.zeros(1), 0, "", [None] * n_eps, list(range(n_eps)))
    sched = _Schedule(list(range(n_eps)), lambda s, k: {"k": k})
    sched.ready.append(s)
    ran = []
    while sched.pending():
        (s, k), task = sched.take(None)
        assert task == {"k": k} and s.busy
        ran.append(k)
        status = answer_at(k)
        sched.record(s, k, {"status": status, "margin_lower": 1.0 if status == "verified"
                            else None, "margin_upper": -1.0 if status == "falsified" else None,
                            "cert": {"counterexample": [0.5]}})
    return ran, [p["status"] for p in s.points]


def test_schedule_bisects_on_decided_answers():
    # robust up to position 4, falsified from 5 on: 8 radii decided by 3 runs, not 8
    ran, final = schedule_runs(lambda k: "verified" if k <= 4 else "falsified", 8)
    assert final == ["verified"] * 5 + ["falsified"] * 3
    assert ran == [4, 6, 5]
    ran, final = schedule_runs(lambda k: "falsified", 4)       # falsified everywhere
    assert ran == [2, 1, 0] and final == ["falsified"] * 4
    ran, final = schedule_runs(lambda k: "verified", 4)
    assert ran == [2, 3] and final == ["verified"] * 4


def test_schedule_undecided_answers_imply_nothing():
    # unknown at 2: the radii on both sides still run; timeouts likewise
    answers = ["verified", "verified", "unknown", "timeout", "falsified"]
    ran, final = schedule_runs(lambda k: answers[k], 5)
    assert final == answers
    assert sorted(ran) == [1, 2, 3, 4] and ran[0] == 2       # 0 is implied by 1


def test_implied_rows_carry_only_the_bound_that_holds():
    s = _Sample(0, np.zeros(1), 0, "", [None] * 3, [0, 1, 2])
    sched = _Schedule([0.1, 0.2, 0.3], lambda s, k: {})
    got = sched.record(s, 1, {"status": "verified", "margin_lower": 0.5, "margin_upper": 0.7,
                              "cert": {}})
    (k, implied), = got[1:]
    assert k == 0 and implied["method"] == "implied" and implied["margin_lower"] == 0.5
    assert implied["margin_upper"] is None         # an upper bound at 0.2 says nothing at 0.1
    got = sched.record(s, 2, {"status": "falsified", "margin_lower": -3.0, "margin_upper": -1.0,
                              "cert": {"counterexample": [0.25], "output": [1.0, 2.0]}})
    assert got[1:] == [] and s.open == []


# ------------------------------------------------------------------------------------------------
# the real thing on a shipped model
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_curve(tmp_path_factory):
    out = tmp_path_factory.mktemp("curve") / "curve.csv"
    xs, ys = data()
    rows = []
    curve = verifier.robustness_curve(MLP, xs, ys, list(reversed(EPS)), timeout=5, jobs=2,
                                      out=out, on_row=lambda i, e, r: rows.append((i, e, r)))
    return curve, rows, out


def test_curve_table_counts_and_monotonicity(mlp_curve):
    curve, rows, out = mlp_curve
    assert curve.eps == tuple(EPS) and curve.n == 20 and curve.clean_accuracy == 1.0
    counts = [curve.count(k) for k in range(len(EPS))]
    assert all(sum(c.values()) == 20 for c in counts)
    ver = [c["verified"] for c in counts]
    fal = [c["falsified"] for c in counts]
    assert ver == sorted(ver, reverse=True) and fal == sorted(fal)
    assert fal[-1] > 0 and ver[0] == 20           # digits_mlp: robust at 0.005, not at 0.05
    for k in range(len(EPS)):
        assert curve.certified(k) <= curve.empirical(k) <= curve.clean_accuracy
    # nested boxes saved work: fewer runs than points, and every point answered once
    assert curve.made["run"] + curve.made["implied"] == 80 and curve.made["implied"] > 0
    assert len(rows) == 80 and len({(i, e) for i, e, _ in rows}) == 80
    text = curve.table()
    assert "clean accuracy 100.0%" in text and "certified" in text and "0.005" in text


def test_curve_csv_one_row_per_point(mlp_curve):
    curve, _, out = mlp_curve
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0].keys()) == CURVE_FIELDS and len(table) == 80
    assert {(r["index"], float(r["eps"])) for r in table} == \
        {(str(i), e) for i in range(20) for e in EPS}
    for r in table:
        assert r["status"] == curve.points[int(r["index"])][EPS.index(float(r["eps"]))]["status"]
        if r["status"] == "verified":
            assert float(r["margin_lower"]) > 0
        if r["method"] == "implied":
            assert r["note"].startswith(r["status"] + " at eps ")


def test_every_falsified_point_replays_at_its_own_eps(mlp_curve):
    """An implied 'falsified' reuses a counterexample found at a smaller ε: it must lie inside
    the larger box and still violate the property there (onnxruntime, float32)."""
    _, rows, _ = mlp_curve
    xs, ys = data()
    falsified = [(i, e, r) for i, e, r in rows if r["status"] == "falsified"]
    assert any(r["method"] == "implied" for _, _, r in falsified)
    for i, e, r in falsified:
        cx = np.asarray(r["cert"]["counterexample"])
        prop = robustness_property(xs[i].reshape(-1), int(ys[i]), e, n_outputs=10)
        assert replay(MLP, cx, prop).ok, (i, e, r["method"])


def test_implied_answers_agree_with_single_runs(mlp_curve):
    """Points the curve never ran, checked with a run of their own: never the opposite answer."""
    _, rows, _ = mlp_curve
    xs, ys = data()
    implied = [(i, e, r["status"]) for i, e, r in rows if r["method"] == "implied"]
    picked = implied[:: max(1, len(implied) // 6)]
    for i, e, status in picked:
        direct = verifier.verify(MLP, xs[i], int(ys[i]), e, timeout=10).status
        assert direct in (status, "unknown", "timeout"), (i, e, status, direct)


def test_resume_keeps_rows_and_refuses_other_models(mlp_curve, tmp_path):
    curve, _, out = mlp_curve
    xs, ys = data()
    lines = out.read_text().splitlines(keepends=True)
    part = tmp_path / "part.csv"
    part.write_text("".join(lines[:31]) + lines[31][:17])     # 30 rows and a torn line
    made, announced = [], []
    again = verifier.robustness_curve(MLP, xs, ys, EPS, timeout=5, jobs=1, out=part,
                                      resume=True, on_row=lambda i, e, r: made.append(i),
                                      on_sample=lambda i, y, st: announced.append((i, y, st)))
    assert again.made["resumed"] == 30 and len(made) == 50
    # each sample this run touched is announced once, with all its answers (resumed ones too)
    assert sorted(i for i, _, _ in announced) == sorted(set(made))
    for i, y, statuses in announced:
        assert y == int(ys[i]) and statuses == [p["status"] for p in again.points[i]]
    for i in range(20):
        for k in range(4):
            assert compatible(again.points[i][k]["status"], curve.points[i][k]["status"])
    with open(part, newline="") as f:
        keys = [(r["index"], r["eps"]) for r in csv.DictReader(f)]
    assert len(keys) == 80 == len(set(keys))
    # the rows of digits_mlp do not count for another model: nothing resumed, all answered
    other = verifier.robustness_curve(CNN, xs[:3], ys[:3], [0.005], timeout=10, out=part,
                                      resume=True)
    assert other.made["resumed"] == 0 and other.count(0)["missing"] == 0
    with pytest.raises(BatchError, match="--resume"):
        verifier.robustness_curve(MLP, xs, ys, EPS, out=part)


def test_misclassified_samples_are_falsified_everywhere_without_a_run(tmp_path):
    xs, ys = data()
    ys = ys.copy()
    ys[3] = (ys[3] + 1) % 10                       # a wrong label: the sample itself violates
    rows = []
    curve = verifier.robustness_curve(MLP, xs[:5], ys[:5], [0.001, 0.002], timeout=10,
                                      on_row=lambda i, e, r: rows.append((i, e, r)))
    assert curve.clean_accuracy == 0.8 and curve.clean == [True, True, True, False, True]
    mine = [r for i, _, r in rows if i == 3]
    assert [r["method"] for r in mine] == ["clean", "clean"]
    assert all(r["status"] == "falsified" for r in mine)
    assert curve.made["clean"] == 2 and curve.made["run"] + curve.made["implied"] == 8
    prop = robustness_property(xs[3].reshape(-1), int(ys[3]), 0.0, n_outputs=10)
    assert replay(MLP, np.asarray(mine[0]["cert"]["counterexample"]), prop).ok


def test_jobs_do_not_change_answers(mlp_curve):
    curve, _, _ = mlp_curve
    xs, ys = data()
    one = verifier.robustness_curve(MLP, xs[:8], ys[:8], EPS, timeout=5, jobs=1)
    for i in range(8):
        for k in range(4):
            assert compatible(one.points[i][k]["status"], curve.points[i][k]["status"])
    assert sum(p["status"] in ("verified", "falsified") for row in one.points for p in row) >= 30


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_curve_table_json_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    code, out, err = run(capsys, MLP, "--dataset", DATASET, "--eps", 0.01, 0.02, "--jobs", 2,
                         "--timeout", 10, "--plot", png)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "label", "0.01", "0.02"]
    assert sum(1 for ln in lines if ln.split()[-2:] in (["V", "V"], ["V", "F"], ["F", "F"],
                                                        ["V", "?"], ["V", "T"])) == 20
    assert any("clean accuracy 100.0%" in ln for ln in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(capsys, MLP, "--dataset", DATASET, "--eps", 0.01, 0.02, "--json",
                         "--timeout", 10)
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert code == 0 and len(objs) == 40
    assert {(o["index"], o["eps"]) for o in objs} == \
        {(i, e) for i in range(20) for e in (0.01, 0.02)}
    assert all({"status", "margin_lower", "counterexample", "method"} <= set(o) for o in objs)
    assert "certified" in err                      # the table goes to stderr with --json


@pytest.mark.parametrize("extra, needle", [
    (["--eps", "0.01", "0.02", "--input", "models/digits_sample0.npy", "--label", "1"],
     "need --dataset"),
    (["--eps", "0.01", "--dataset", str(DATASET), "--scheduler", "tcp://x:1"], "--instances"),
    (["--eps", "0.01", "--dataset", str(DATASET), "--jobs", "0"], "--jobs"),
    (["--eps", "0.01", "0.02", "--dataset", str(DATASET), "--plot", "c.bmpx"], ".png"),
    (["--eps", "0.01", "0.02", "--dataset", str(DATASET), "--out", MLP], "the model"),
    (["--eps", "0.01", "--dataset", str(DATASET), "--plot", str(DATASET)], "the data set"),
    (["--eps", "0.01", "-1", "--dataset", str(DATASET)], "eps"),
    (["--eps", "0.01", "--dataset", str(DATASET), "--resume"], "--out"),
])
def test_cli_curve_bad_input(capsys, extra, needle):
    before = Path(MLP).read_bytes(), DATASET.read_bytes()
    code, out, err = run(capsys, MLP, *extra, "--timeout", 5)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert (Path(MLP).read_bytes(), DATASET.read_bytes()) == before
