"""Side by side: this project vs. the tools a user would otherwise pick, same machine, same run.

    PYTHONPATH=. python benchmarks/side_by_side.py [--suite acasxu mnist_fc] [--every 6]
        [--offset 0] [--timeout 60] [--tools ours,textbook,marabou] [--parallel 2]
        [--out /tmp/sbs.csv] [--resume] [--bigm VALUE] [--markdown]

Subset: for each suite, the rows of ``benchmarks/vnncomp2022/SUITE/instances.csv`` (in file order,
0-based) with ``row % every == offset``; the SAME subset for every tool.  Each instance's timeout is
``min(its instances.csv timeout, --timeout)``.

Every (tool, instance) run is a fresh process (``benchmarks/peers.py``, which documents each tool
and its exact settings) in its own process group, killed at ``timeout + --grace`` seconds if it has
not answered.  At most ``--parallel`` runs at once (default 2); the queue is ordered instance by
instance, so the tools on one instance run at about the same time and see about the same machine
load.  Time = wall time inside the run after the imports (loading model and property included).

Each answer is compared with the suite's ``expected.csv`` (sat <-> falsified, unsat <-> verified).
Printed per tool: decided, correct, WRONG (listed by name), unknown, timeout, not loadable, error,
total time, and the time ratio tool / ours on the instances both decided and over all instances.
Rows are appended to ``--out`` as they finish (``--resume`` skips the rows already there).
Optional peers (abcrown, auto_LiRPA, nnenum) are reported as skipped when not importable.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE / "vnncomp2022"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from peers import OPTIONAL, TOOLS, installed  # noqa: E402

FIELDS = ("tool", "suite", "onnx", "vnnlib", "timeout", "status", "time_s", "expected",
          "verdict", "replayed", "note")
ANSWER = {"sat": "sat", "unsat": "unsat"}


def select(suites, every: int, offset: int, cap: float) -> list[dict]:
    out = []
    for suite in suites:
        folder = ROOT / suite
        expected = {}
        with open(folder / "expected.csv", newline="") as f:
            for r in csv.DictReader(f):
                expected[(r["onnx"].strip(), r["vnnlib"].strip())] = r["expected"].strip().lower()
        with open(folder / "instances.csv", newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].startswith("#")]
        for i, (onnx, vnnlib, t) in enumerate(rows):
            if i % every != offset:
                continue
            onnx, vnnlib = onnx.strip(), vnnlib.strip()
            out.append({"suite": suite, "onnx": onnx, "vnnlib": vnnlib,
                        "onnx_path": str(folder / onnx), "vnnlib_path": str(folder / vnnlib),
                        "timeout": min(float(t), cap), "expected": expected.get((onnx, vnnlib))})
    return out


def verdict(status: str, expected: str | None) -> str:
    if expected not in ("sat", "unsat"):
        return "no_answer_known"
    if status not in ANSWER:
        return "undecided"
    return "correct" if status == expected else "WRONG"


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, tool, inst, grace, bigm, tmpdir, log):
        self.tool, self.inst = tool, inst
        self.out = Path(tmpdir) / f"{os.getpid()}_{id(self)}.json"
        cmd = [sys.executable, str(HERE / "peers.py"), tool, inst["onnx_path"],
               inst["vnnlib_path"], str(inst["timeout"]), str(self.out)]
        if tool == "textbook" and bigm:
            cmd.append(str(bigm))
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        self.start = time.monotonic()
        self.deadline = self.start + inst["timeout"] + grace
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)    # the group: CBC is a child of the run
        except ProcessLookupError:
            pass
        self.proc.wait()

    def row(self, killed: bool) -> dict:
        if killed:
            res = {"status": "timeout", "time_s": round(time.monotonic() - self.start, 4),
                   "note": "killed at the hard limit"}
        else:
            try:
                res = json.loads(self.out.read_text())
            except (OSError, ValueError):
                res = {"status": "error", "time_s": round(time.monotonic() - self.start, 4),
                       "note": f"run died (exit code {self.proc.returncode}), no result"}
        self.out.unlink(missing_ok=True)
        i = self.inst
        return {"tool": self.tool, "suite": i["suite"], "onnx": i["onnx"], "vnnlib": i["vnnlib"],
                "timeout": i["timeout"], "status": res["status"], "time_s": res["time_s"],
                "expected": i["expected"] or "", "verdict": verdict(res["status"], i["expected"]),
                "replayed": res.get("replayed", ""),
                "note": str(res.get("note", "")).replace("\n", " ")}


def run_all(jobs, parallel, grace, bigm, out_path, log_path, on_row):
    with tempfile.TemporaryDirectory(prefix="sbs_") as tmp, open(log_path, "ab") as log, \
            open(out_path, "a", newline="") as out:
        writer = csv.DictWriter(out, FIELDS)
        if out.tell() == 0:
            writer.writeheader()
        running: list[Run] = []
        queue = list(jobs)
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    tool, inst = queue.pop(0)
                    running.append(Run(tool, inst, grace, bigm, tmp, log))
                time.sleep(0.1)
                for r in list(running):
                    done = r.proc.poll() is not None
                    killed = not done and time.monotonic() > r.deadline
                    if killed:
                        r.kill()
                    if done or killed:
                        running.remove(r)
                        row = r.row(killed)
                        writer.writerow(row)
                        out.flush()
                        on_row(row)
        finally:
            for r in running:
                r.kill()


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def summarise(rows: list[dict], tools) -> tuple[list[dict], dict]:
    by = {(r["tool"], r["onnx"], r["vnnlib"]): r for r in rows}
    keys = sorted({(r["suite"], r["onnx"], r["vnnlib"]) for r in rows})
    table, wrong = [], defaultdict(list)
    for tool in tools:
        s = {"tool": tool, "n": 0, "decided": 0, "correct": 0, "wrong": 0, "unknown": 0,
             "timeout": 0, "not_loadable": 0, "error": 0, "time": 0.0, "t_both": 0.0,
             "o_both": 0.0, "o_all": 0.0, "both": 0, "unreplayed": 0}
        for suite, onnx, vnnlib in keys:
            r, o = by.get((tool, onnx, vnnlib)), by.get(("ours", onnx, vnnlib))
            if r is None:
                continue
            s["n"] += 1
            st, t = r["status"], float(r["time_s"])
            s["time"] += t
            s["decided"] += st in ANSWER
            s["correct"] += r["verdict"] == "correct"
            if r["verdict"] == "WRONG":
                s["wrong"] += 1
                wrong[tool].append(f"{suite}/{onnx} {vnnlib}: {st}, expected {r['expected']}")
            s["unreplayed"] += r.get("replayed") == "no"
            if st in ("unknown", "timeout", "not_loadable", "error"):
                s[st] += 1
            if o is not None:
                s["o_all"] += float(o["time_s"])
                if st in ANSWER and o["status"] in ANSWER:
                    s["both"] += 1
                    s["t_both"] += t
                    s["o_both"] += float(o["time_s"])
        s["ratio_both"] = s["t_both"] / s["o_both"] if s["o_both"] > 0 else None
        s["ratio_all"] = s["time"] / s["o_all"] if s["o_all"] > 0 else None
        table.append(s)
    return table, wrong


def fmt_table(table, markdown: bool) -> str:
    head = ["tool", "instances", "decided", "correct", "WRONG", "unknown", "timeout",
            "not loadable", "error", "sat not replayed", "total time (s)",
            "ratio (both decided)", "ratio (all)"]

    def ratio(s, k):
        return "-" if s[k] is None else f"{s[k]:.2f}x"
    body = [[s["tool"], s["n"], s["decided"], s["correct"], s["wrong"], s["unknown"],
             s["timeout"], s["not_loadable"], s["error"], s["unreplayed"], f"{s['time']:.1f}",
             f"{ratio(s, 'ratio_both')} ({s['both']})", ratio(s, "ratio_all")] for s in table]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in b) + " |" for b in body]
        return "\n".join(lines)
    w = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).rjust(n) for c, n in zip(r, w)) for r in [head] + body)


def report(rows, tools, suites, markdown) -> str:
    out = []
    for name, sub in [(s, [r for r in rows if r["suite"] == s]) for s in suites] + \
            ([("all", rows)] if len(suites) > 1 else []):
        if not sub:
            continue
        table, wrong = summarise(sub, tools)
        out += [f"\n{name}:", fmt_table(table, markdown)]
        for tool, names in wrong.items():
            out.append(f"WRONG answers of {tool}:")
            out += [f"  {n}" for n in names]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", nargs="+", default=["acasxu", "mnist_fc"])
    p.add_argument("--every", type=int, default=1, help="keep every N-th row of instances.csv")
    p.add_argument("--offset", type=int, default=0, help="... starting at this 0-based row")
    p.add_argument("--timeout", type=float, default=60.0, help="cap on every instance's timeout")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--parallel", type=int, default=2, help="runs at once (all tools together)")
    p.add_argument("--grace", type=float, default=15.0, help="hard kill at timeout + grace")
    p.add_argument("--bigm", type=float, help="textbook: fixed M instead of the interval max")
    p.add_argument("--out", default="/tmp/side_by_side.csv")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    a = p.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad or not 0 <= a.offset < a.every:
        p.error(f"unknown tool {bad[0]!r}" if bad else "--offset must lie in [0, --every)")
    for name, mods in OPTIONAL.items():
        if not installed(mods):
            print(f"{name}: skipped: not installed")
    if "marabou" in tools and not installed(("maraboupy",)):
        print("marabou: skipped: not installed (pip install maraboupy)")
        tools.remove("marabou")
    insts = select(a.suite, a.every, a.offset, a.timeout)
    out = Path(a.out)
    if out.exists() and out.stat().st_size and not a.resume:
        p.error(f"{out} exists: pass --resume or another --out")
    old = list(csv.DictReader(open(out, newline=""))) if out.exists() and a.resume else []
    done = {(r["tool"], r["onnx"], r["vnnlib"]) for r in old}
    jobs = [(t, i) for i in insts for t in tools if (t, i["onnx"], i["vnnlib"]) not in done]
    print(f"{len(insts)} instances x {len(tools)} tools, {len(jobs)} runs to do, "
          f"at most {a.parallel} at once; results -> {out}", flush=True)
    wanted = {(i["onnx"], i["vnnlib"]) for i in insts}
    rows = [r for r in old if (r["onnx"], r["vnnlib"]) in wanted and r["tool"] in tools]
    t0 = time.monotonic()

    def on_row(r):
        rows.append(r)
        flag = "  <-- WRONG" if r["verdict"] == "WRONG" else ""
        print(f"[{len(rows):4d} {time.monotonic() - t0:7.1f}s] {r['tool']:<9} {r['suite']}/"
              f"{Path(r['onnx']).stem} {Path(r['vnnlib']).stem}: {r['status']} "
              f"{float(r['time_s']):.2f}s (expected {r['expected'] or '?'}){flag}", flush=True)
    try:
        run_all(jobs, max(1, a.parallel), a.grace, a.bigm, out, str(out) + ".log", on_row)
    except KeyboardInterrupt:
        print("interrupted: finished rows are saved, --resume continues", file=sys.stderr)
    print(f"\nwall time {time.monotonic() - t0:.1f} s; timeout cap {a.timeout:g} s; subset: "
          f"{', '.join(a.suite)}, rows with index % {a.every} == {a.offset}")
    print(report(rows, tools, a.suite, a.markdown))
    ours_wrong = [r for r in rows if r["tool"] == "ours" and r["verdict"] == "WRONG"]
    return 1 if ours_wrong else 0


if __name__ == "__main__":
    sys.exit(main())
