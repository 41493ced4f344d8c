"""Batch runner: results file, resume after kill -9, hard limits, summary, Dask, cactus plot.

Most tests use ``fake_verify`` below as the per-instance function (the worker imports it from this
file): it reads what to do from the first line of the .vnnlib file, so the expected row of every
instance is known exactly and hangs/crashes can be staged on purpose.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verifier.batch import BatchError, Summary, judge, read_instances, run_instances

ROOT = Path(__file__).resolve().parent.parent
FAKE = f"{Path(__file__).resolve()}:fake_verify"
FIELDS = ["onnx", "vnnlib", "status", "time_s", "margin_lower", "margin_upper", "method"]


# ------------------------------------------------------------------------------------------------
# the fake per-instance function (runs inside the worker processes)
# ------------------------------------------------------------------------------------------------
def fake_verify(onnx_path, vnnlib_path, *, timeout, method):
    """First line of the vnnlib file: ``; fake ACTION SECONDS``; ACTION a status, or hang / crash /
    kill / raise. Returns the worker's pid in ``method`` so tests can see which process ran it."""
    _, _, action, seconds = Path(vnnlib_path).read_text().splitlines()[0].split()
    time.sleep(float(seconds))
    if action == "hang":
        while True:
            time.sleep(100)
    if action == "crash":
        os._exit(7)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise FileNotFoundError(f"no such file: {vnnlib_path}")
    margin = {"verified": 0.5, "falsified": -0.25}.get(action)
    return {"status": action, "margin_lower": margin if action == "verified" else None,
            "margin_upper": margin if action == "falsified" else None,
            "method": f"fake@{os.getpid()}"}


def fake_threads(onnx_path, vnnlib_path, *, timeout, method, threads):
    """Says which ``threads`` reached the worker."""
    return {"status": "unknown", "margin_lower": None, "margin_upper": None,
            "method": f"threads={threads}"}


# (name, action, seconds, expected answer or None) -> what the row must say
SUITE = [
    ("p0", "verified", 0.3, "unsat"),      # correct
    ("p1", "falsified", 0.3, "sat"),       # correct
    ("p2", "unknown", 0.3, "unsat"),       # undecided
    ("p3", "verified", 0.3, "sat"),        # WRONG
    ("p4", "falsified", 0.3, "unknown"),   # no known answer
    ("p5", "verified", 0.3, None),         # not in expected.csv
    ("p6", "raise", 0.0, "sat"),           # error (undecided)
    ("p7", "timeout", 0.3, "unsat"),       # the runner's own timeout (undecided)
]
STATUS = {"raise": "error", "hang": "timeout", "crash": "error", "kill": "error"}


def make_suite(folder: Path, suite=SUITE, timeout=20, gz_vnnlib=()) -> Path:
    (folder / "onnx").mkdir(parents=True)
    (folder / "vnnlib").mkdir()
    lines, expected = [], ["onnx,vnnlib,expected"]
    for i, (name, action, seconds, exp) in enumerate(suite):
        onnx = f"onnx/net{i % 2}.onnx"
        (folder / onnx).write_bytes(b"not really onnx")
        vnn = f"vnnlib/{name}.vnnlib"
        (folder / vnn).write_text(f"; fake {action} {seconds}\n")
        lines.append(f"{onnx},{vnn},{timeout}")
        if exp is not None:
            expected.append(f"{onnx},{vnn},{exp}")
    (folder / "instances.csv").write_text("\n".join(lines) + "\n")
    (folder / "expected.csv").write_text("\n".join(expected) + "\n")
    return folder / "instances.csv"


def read_rows(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n"), "half row at the end of the results file"
    rows = list(csv.DictReader(text.splitlines()))
    header = text.splitlines()[0].split(",")
    assert header[:7] == FIELDS
    for r in rows:
        assert None not in r and all(v is not None for v in r.values()), f"malformed row {r}"
    return rows


def check_suite_rows(rows, suite=SUITE):
    by_name = {Path(r["vnnlib"]).stem: r for r in rows}
    assert sorted(Path(r["vnnlib"]).stem for r in rows) == sorted(s[0] for s in suite), \
        "every instance exactly once"
    for name, action, _, exp in suite:
        r = by_name[name]
        assert r["status"] == STATUS.get(action, action), (name, r)
        assert r["expected"] == (exp or "")
        assert r["correct"] == {"correct": "yes", "wrong": "no"}.get(judge(r["status"], exp), "")
    assert float(by_name["p0"]["margin_lower"]) == 0.5
    assert float(by_name["p1"]["margin_upper"]) == -0.25
    assert "FileNotFoundError" in by_name["p6"]["note"]
    return by_name


def pids(rows):
    return {int(r["method"].split("@")[1]) for r in rows if "@" in r["method"]}


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# ------------------------------------------------------------------------------------------------
# correctness logic and summary
# ------------------------------------------------------------------------------------------------
def test_judge_truth_table():
    assert judge("verified", "unsat") == "correct" and judge("falsified", "sat") == "correct"
    assert judge("verified", "sat") == "wrong" and judge("falsified", "unsat") == "wrong"
    for s in ("unknown", "timeout", "error"):
        assert judge(s, "sat") == "undecided" and judge(s, " UNSAT ") == "undecided"
    for e in (None, "", "unknown", "timeout"):
        assert judge("verified", e) is None and judge("falsified", e) is None


def test_summary_counts_and_wrong_list(tmp_path):
    inst = read_instances(make_suite(tmp_path))
    assert [i.expected for i in inst] == [s[3] for s in SUITE]
    status = {"p0": "verified", "p1": "falsified", "p2": "unknown", "p3": "verified",
              "p4": "falsified", "p5": "verified", "p6": "error", "p7": "timeout"}
    rows = {i.key: {"status": status[Path(i.vnnlib).stem], "note": "boom"} for i in inst
            if Path(i.vnnlib).stem != "p5"}                          # p5 not run yet
    s = Summary.from_rows(inst, rows, resumed=3, out="r.csv")
    assert s.counts == {"verified": 2, "falsified": 2, "unknown": 1, "timeout": 1, "error": 1}
    assert (s.missing, s.total, s.resumed) == (1, 8, 3)
    # judged: p0 p1 correct, p3 wrong, p2 p6 p7 undecided; p4 (unknown) and p5 not judged
    assert (s.correct, s.wrong, s.undecided) == (2, 1, 3)
    assert s.wrong_rows == [("onnx/net1.onnx", "vnnlib/p3.vnnlib", "verified", "sat")]
    assert s.error_rows == [("onnx/net0.onnx", "vnnlib/p6.vnnlib", "boom")]
    table = s.table()
    assert "wrong 1" in table and "vnnlib/p3.vnnlib: verified, expected sat" in table


def test_instances_file_parsing(tmp_path):
    (tmp_path / "a.onnx.gz").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.vnnlib").write_text("")
    f = tmp_path / "inst.csv"
    f.write_text("\n# comment\n a.onnx , sub/p.vnnlib , 12.5 \r\na.onnx,sub/p.vnnlib,3\n\n")
    (inst,) = read_instances(f)                     # the repeated pair keeps its first row
    assert (inst.onnx, inst.vnnlib, inst.timeout) == ("a.onnx", "sub/p.vnnlib", 12.5)
    assert inst.onnx_path == str(tmp_path / "a.onnx.gz")      # gzipped file found
    assert inst.vnnlib_path == str(tmp_path / "sub" / "p.vnnlib") and inst.expected is None
    for bad, msg in [("a.onnx,p.vnnlib\n", "fields"), ("a.onnx,p.vnnlib,soon\n", "not a number"),
                     ("a.onnx,p.vnnlib,0\n", "> 0"), ("", "no instances")]:
        f.write_text(bad)
        with pytest.raises(BatchError, match=msg):
            read_instances(f)
    with pytest.raises(BatchError, match="not found"):
        read_instances(tmp_path / "nope.csv")


def test_existing_results_need_resume(tmp_path):
    csv_path = make_suite(tmp_path / "s", suite=SUITE[:1])
    out = tmp_path / "r.csv"
    out.write_text("something,else\n1,2\n")
    with pytest.raises(BatchError, match="--resume"):
        run_instances(csv_path, out=out, runner=FAKE, progress=False)
    with pytest.raises(BatchError, match="not a results file"):
        run_instances(csv_path, out=out, runner=FAKE, progress=False, resume=True)
    with pytest.raises(BatchError, match="method"):
        run_instances(csv_path, out=tmp_path / "x.csv", method="magic", progress=False)


# ------------------------------------------------------------------------------------------------
# kill -9 mid-run, resume
# ------------------------------------------------------------------------------------------------
def test_kill_and_resume(tmp_path):
    csv_path = make_suite(tmp_path / "suite")
    out = tmp_path / "results.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (f"from verifier.batch import run_instances; run_instances({str(csv_path)!r}, "
            f"jobs=2, out={str(out)!r}, runner={FAKE!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end:
        if out.exists() and out.read_text().count("\n") >= 3:     # header + 2 rows
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)             # the whole run, mid-way
    proc.wait()
    proc.stderr.close()
    first = read_rows(out)
    assert 2 <= len(first) < len(SUITE)
    # the workers die with the run (they are in their own process groups: PR_SET_PDEATHSIG)
    time.sleep(0.5)
    assert all(process_gone(p) for p in pids(first))
    # a row cut short by the kill must be dropped on resume, not kept or completed
    with open(out, "a") as f:
        f.write("onnx/net0.onnx,vnnlib/p")
    s = run_instances(csv_path, jobs=2, out=out, resume=True, runner=FAKE, progress=False)
    rows = read_rows(out)
    assert rows[:len(first)] == first               # earlier rows untouched
    by_name = check_suite_rows(rows)
    assert s.resumed == len(first) and s.missing == 0 and s.total == len(SUITE)
    assert s.counts == {"verified": 3, "falsified": 2, "unknown": 1, "timeout": 1, "error": 1}
    assert (s.correct, s.wrong, s.undecided) == (2, 1, 3)
    assert s.wrong_rows == [("onnx/net1.onnx", "vnnlib/p3.vnnlib", "verified", "sat")]
    # warm workers: the resumed part ran in at most 2 processes
    assert len(pids(rows[len(first):])) <= 2
    assert by_name["p0"]["status"] == "verified"
    # resuming a complete file runs nothing and changes nothing
    before = out.read_bytes()
    s2 = run_instances(csv_path, jobs=2, out=out, resume=True, runner=FAKE, progress=False)
    assert out.read_bytes() == before and s2.resumed == len(SUITE) and s2.counts == s.counts


# ------------------------------------------------------------------------------------------------
# hard limits: a stuck instance is killed, a crash is an error, the rest completes
# ------------------------------------------------------------------------------------------------
STUCK = [
    ("s0", "verified", 0.1, "unsat"),
    ("s1", "hang", 0.0, "unsat"),          # killed at timeout + grace -> timeout
    ("s2", "falsified", 0.1, "sat"),
    ("s3", "crash", 0.0, None),            # worker exits -> error, replaced
    ("s4", "kill", 0.0, None),             # worker SIGKILLed -> error, replaced
    ("s5", "verified", 0.1, "unsat"),
    ("s6", "falsified", 0.1, None),
]


def check_stuck_rows(rows):
    by_name = {Path(r["vnnlib"]).stem: r for r in rows}
    assert sorted(by_name) == sorted(s[0] for s in STUCK) and len(rows) == len(STUCK)
    for name, action, _, _ in STUCK:
        assert by_name[name]["status"] == STATUS.get(action, action), by_name[name]
    assert 1.4 <= float(by_name["s1"]["time_s"]) < 5, by_name["s1"]
    assert "hard limit" in by_name["s1"]["note"]
    assert "exit code 7" in by_name["s3"]["note"]
    assert "signal 9" in by_name["s4"]["note"]
    return by_name


def test_stuck_instance_killed_at_hard_limit(tmp_path):
    csv_path = make_suite(tmp_path / "suite", suite=STUCK, timeout=1)
    out = tmp_path / "r.csv"
    t0 = time.monotonic()
    s = run_instances(csv_path, jobs=2, out=out, runner=FAKE, grace=0.5, progress=False)
    # without the hard kill the hung instance would never end; 60 s leaves room for replacing
    # three workers on a loaded machine (22 s measured at nice 19 on 2 busy cores)
    assert time.monotonic() - t0 < 60
    rows = read_rows(out)
    by_name = check_stuck_rows(rows)
    # 3 workers died (hang, crash, kill) and were replaced; the others were reused
    assert 2 <= len(pids(rows)) <= 5
    assert s.counts == {"verified": 2, "falsified": 2, "unknown": 0, "timeout": 1, "error": 2}
    assert (s.correct, s.wrong, s.undecided) == (3, 0, 1)
    assert by_name["s0"]["correct"] == "yes" and by_name["s1"]["correct"] == ""


def test_json_lines_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    csv_path = make_suite(tmp_path / "suite", suite=SUITE[:3])
    out, png = tmp_path / "r.csv", tmp_path / "cactus.png"
    run_instances(csv_path, jobs=1, out=out, runner=FAKE, progress=False, json_lines=True,
                  plot=png)
    import json
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(o["status"] for o in objs) == ["falsified", "unknown", "verified"]
    assert all({"onnx", "vnnlib", "time_s", "margin_lower", "counterexample"} <= set(o)
               for o in objs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # overlay of two runs with labels
    from verifier.batch.plots import plot_cactus, solved_times
    times, total = solved_times(out)
    assert total == 3 and len(times) == 2 and times == sorted(times)
    plot_cactus([out, out], tmp_path / "two.png", labels=["a", "b"])
    assert (tmp_path / "two.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# Dask: same answers as the local path, same resume semantics
# ------------------------------------------------------------------------------------------------
def test_dask_matches_local(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    csv_path = make_suite(tmp_path / "suite", suite=STUCK, timeout=1)
    local, remote = tmp_path / "local.csv", tmp_path / "dask.csv"
    run_instances(csv_path, jobs=2, out=local, runner=FAKE, grace=0.5, progress=False)
    # a row already in the Dask results file must be kept and not run again
    first = read_rows(local)[0]
    remote.write_text(",".join(read_rows(local)[0].keys()) + "\n" +
                      ",".join(first.values()) + "\n")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as cluster:
        s = run_instances(csv_path, out=remote, resume=True, runner=FAKE, grace=0.5,
                          progress=False, scheduler=cluster.scheduler_address)
    rows = read_rows(remote)
    assert rows[0] == first
    check_stuck_rows(rows)
    key = lambda r: (r["onnx"], r["vnnlib"], r["status"], r["expected"], r["correct"])  # noqa
    assert sorted(map(key, rows)) == sorted(map(key, read_rows(local)))
    assert s.resumed == 1 and s.missing == 0


# ------------------------------------------------------------------------------------------------
# the real per-instance function: VNN-COMP 2022 mnist_fc, answers checked against its expected.csv
# ------------------------------------------------------------------------------------------------
MNIST_FC = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"


def test_real_pipeline_mnist_fc(tmp_path):
    if not (MNIST_FC / "expected.csv").is_file():
        pytest.skip("benchmarks/vnncomp2022/mnist_fc not present")
    props = [f"vnnlib/prop_{i}_0.03.vnnlib" for i in range(5)]
    onnx = "onnx/mnist-net_256x2.onnx"
    with open(MNIST_FC / "expected.csv") as f:
        truth = {(r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(f)}
    lines = [f"{MNIST_FC / onnx},{MNIST_FC / p},30" for p in props]
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "expected.csv").write_text(
        "onnx,vnnlib,expected\n" + "".join(f"{MNIST_FC / onnx},{MNIST_FC / p},"
                                           f"{truth[(onnx, p)]}\n" for p in props))
    assert {truth[(onnx, p)] for p in props} == {"sat", "unsat"}     # both kinds present
    s = run_instances(tmp_path / "instances.csv", jobs=2, out=tmp_path / "r.csv", progress=False)
    rows = read_rows(tmp_path / "r.csv")
    assert s.wrong == 0 and s.counts["error"] == 0, rows
    assert s.correct == len(props), rows
    for r in rows:
        assert r["correct"] == "yes"
        if r["status"] == "verified":
            assert float(r["margin_lower"]) > 0
        else:
            assert float(r["margin_upper"]) <= 0


def test_graph_cache_in_worker(tmp_path, monkeypatch):
    """The default runner loads each model once per worker process (same path, same file)."""
    from verifier import api
    from verifier.batch import runners
    from verifier.certificate import Certificate
    loads = []
    monkeypatch.setattr(api, "load", lambda p: loads.append(p) or object())
    monkeypatch.setattr(api, "verify_vnnlib", lambda net, v, options: Certificate(
        "unknown", method=f"{id(net)}:{options.timeout > 0}"))
    monkeypatch.setattr(runners, "_GRAPHS", type(runners._GRAPHS)())
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    m = [runners.verify_instance(str(p), "x.vnnlib", timeout=5.0).method
         for p in (a, a, b, a)]
    assert loads == [str(a), str(b)] and m[0] == m[1] == m[3] != m[2]
    os.utime(a, ns=(0, 0))                      # a changed file is loaded again
    runners.verify_instance(str(a), "x.vnnlib", timeout=5.0)
    assert loads == [str(a), str(b), str(a)]


# ------------------------------------------------------------------------------------------------
# bad and hostile input (issue 13 item 6): one line, exit 2, nothing run, no input overwritten
# ------------------------------------------------------------------------------------------------
def cli(capsys, *args):
    from verifier.cli import main
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_huge_timeouts_do_not_overflow_the_waits(tmp_path):
    """select/poll take int milliseconds: a wait of more than 2.1e6 s used to raise
    OverflowError; the loop and the Dask path's Worker.run both wait in pieces."""
    csv_path = make_suite(tmp_path / "s", suite=SUITE[:2], timeout=3e6)
    s = run_instances(csv_path, jobs=1, out=tmp_path / "r.csv", runner=FAKE, progress=False)
    assert s.counts["verified"] == 1 and s.counts["falsified"] == 1
    from verifier.batch.worker import Worker
    w = Worker(FAKE)
    try:
        inst = read_instances(csv_path)[0]
        assert w.run(inst.task("auto", 1e9), grace=5.0)["status"] == "verified"
    finally:
        w.kill()


@pytest.mark.parametrize("make, needle", [
    (lambda f: f.write_bytes(b"onnx/a.onnx,vnnlib/\xff\xfe.vnnlib,10\n"), "not UTF-8"),
    (lambda f: f.write_text("onnx/a.onnx," + "v" * 140_000 + ",10\n"), "line 1"),
    (lambda f: f.write_bytes(b"onnx/a.onnx,vnn\x00lib,10\n"), "line 1"),
])
def test_unreadable_instances_csv_is_bad_input(capsys, tmp_path, make, needle):
    f = tmp_path / "instances.csv"
    make(f)
    code, out, err = cli(capsys, "--instances", f, "--out", tmp_path / "r.csv")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert needle in err and "internal error" not in err
    assert not (tmp_path / "r.csv").exists()


def test_non_utf8_expected_csv_is_bad_input(tmp_path):
    csv_path = make_suite(tmp_path / "s", suite=SUITE[:1])
    (tmp_path / "s" / "expected.csv").write_bytes(b"onnx,vnnlib,expected\n\xc3\x28,b,sat\n")
    with pytest.raises(BatchError, match="expected.csv: not UTF-8"):
        read_instances(csv_path)


@pytest.mark.parametrize("flag, name, needle", [
    ("--plot", "cactus.txt", ".png"),            # a suffix matplotlib does not write
    ("--plot", "nowhere/cactus.png", "does not exist"),
    ("--plot", "r.csv", "results file"),         # the plot would overwrite the results
    ("--out", "instances.csv", "instances file"),
    ("--out", "onnx/net0.onnx", "a file of the instances"),
    ("--plot", "vnnlib/p0.vnnlib", "a file of the instances"),
])
def test_bad_outputs_fail_before_any_work(capsys, tmp_path, flag, name, needle):
    pytest.importorskip("matplotlib")
    csv_path = make_suite(tmp_path / "s", suite=SUITE[:1])
    folder = csv_path.parent
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    args = {"--out": folder / "r.csv", flag: folder / name}
    code, out, err = cli(capsys, "--instances", csv_path, *[a for kv in args.items() for a in kv])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert needle in err
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before                      # nothing written, every input intact


def test_second_run_on_a_locked_results_file_is_refused(tmp_path):
    import fcntl
    csv_path = make_suite(tmp_path / "s", suite=SUITE[:2])
    out = tmp_path / "r.csv"
    run_instances(csv_path, jobs=1, out=out, runner=FAKE, progress=False)
    before = out.read_bytes()
    with open(out, "a") as held:                 # another run has the file open
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BatchError, match="in use by another run"):
            run_instances(csv_path, jobs=1, out=out, resume=True, runner=FAKE, progress=False)
    assert out.read_bytes() == before
    s = run_instances(csv_path, jobs=1, out=out, resume=True, runner=FAKE, progress=False)
    assert s.resumed == 2 and out.read_bytes() == before     # released: resume works again


def test_concurrent_resume_runs_write_each_row_once(tmp_path):
    """Two runs started on one results file: the second is refused while the first holds it."""
    suite = [("c0", "verified", 2.0, None), ("c1", "falsified", 2.0, None)]
    csv_path = make_suite(tmp_path / "s", suite=suite)
    out = tmp_path / "r.csv"
    code = (f"from verifier.batch import run_instances; run_instances({str(csv_path)!r}, "
            f"jobs=1, out={str(out)!r}, runner={FAKE!r}, progress=False, resume=True)")
    first = subprocess.Popen([sys.executable, "-c", code], env={**os.environ,
                             "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 30
    while not (out.exists() and out.stat().st_size) and time.monotonic() < t_end:
        time.sleep(0.05)                         # the header is written once it holds the lock
    with pytest.raises(BatchError, match="in use"):
        run_instances(csv_path, jobs=1, out=out, resume=True, runner=FAKE, progress=False)
    assert first.wait(60) == 0, first.stderr.read().decode()
    first.stderr.close()
    assert sorted(r["vnnlib"] for r in read_rows(out)) == ["vnnlib/c0.vnnlib", "vnnlib/c1.vnnlib"]


def test_interrupt_says_resume_continues(capsys, monkeypatch, tmp_path):
    import verifier.batch

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(verifier.batch, "run_instances", interrupted)
    code, out, err = cli(capsys, "--instances", tmp_path / "i.csv", "--out", tmp_path / "r.csv")
    assert code == 130 and out == ""
    assert "interrupted" in err and "--resume" in err and str(tmp_path / "r.csv") in err


def test_threads_reach_every_instance_and_bad_ones_are_refused(tmp_path):
    csv_path = make_suite(tmp_path / "suite", suite=SUITE[:2])
    runner = f"{Path(__file__).resolve()}:fake_threads"
    run_instances(csv_path, jobs=1, out=tmp_path / "r.csv", runner=runner, threads=2,
                  progress=False)
    assert {r["method"] for r in read_rows(tmp_path / "r.csv")} == {"threads=2"}
    with pytest.raises(BatchError, match="--threads"):
        run_instances(csv_path, jobs=1, out=tmp_path / "r2.csv", runner=runner, threads=0,
                      progress=False)
