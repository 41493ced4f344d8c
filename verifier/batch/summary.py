"""The summary of an instances run: counts by status, and correct / wrong / undecided."""
from __future__ import annotations

from dataclasses import dataclass, field

from .instances import Instance, judge
from .results import STATUSES


@dataclass
class Summary:
    """Counts over the instances of one instances file, from the results file (earlier runs
    included). ``judged`` counts are over instances with a known sat/unsat answer."""
    total: int
    counts: dict = field(default_factory=lambda: {s: 0 for s in STATUSES})
    missing: int = 0                # not in the results file (run interrupted)
    resumed: int = 0                # already in the results file when this run started
    correct: int = 0
    wrong: int = 0
    undecided: int = 0
    wrong_rows: list = field(default_factory=list)   # (onnx, vnnlib, status, expected)
    error_rows: list = field(default_factory=list)   # (onnx, vnnlib, note)
    out: str = ""
    wall_s: float = 0.0

    @classmethod
    def from_rows(cls, instances: list[Instance], rows: dict, resumed: int = 0, out="",
                  wall_s=0.0) -> "Summary":
        s = cls(total=len(instances), resumed=resumed, out=str(out), wall_s=wall_s)
        for inst in instances:
            r = rows.get(inst.key)
            if r is None:
                s.missing += 1
                continue
            status = r["status"]
            s.counts[status] += 1
            if status == "error":
                s.error_rows.append((inst.onnx, inst.vnnlib, r.get("note") or ""))
            verdict = judge(status, inst.expected)
            if verdict is not None:
                setattr(s, verdict, getattr(s, verdict) + 1)
            if verdict == "wrong":
                s.wrong_rows.append((inst.onnx, inst.vnnlib, status, inst.expected))
        return s

    @property
    def judged(self) -> int:
        return self.correct + self.wrong + self.undecided

    def table(self, max_listed: int = 20) -> str:
        lines = [f"instances {self.total}" + (f"  ({self.resumed} done in an earlier run)"
                                              if self.resumed else "")]
        lines += [f"  {s:<10}{self.counts[s]:>6}" for s in STATUSES]
        if self.missing:
            lines.append(f"  {'not run':<10}{self.missing:>6}")
        if self.judged:
            lines.append(f"against {self.judged} expected answers: correct {self.correct}, "
                         f"wrong {self.wrong}, undecided {self.undecided}")
        if self.wrong_rows:
            lines.append("WRONG answers:")
            lines += [f"  {o} {v}: {s}, expected {e}" for o, v, s, e in self.wrong_rows]
        if self.error_rows:
            lines.append("errors:")
            lines += [f"  {o} {v}: {n}" for o, v, n in self.error_rows[:max_listed]]
            if len(self.error_rows) > max_listed:
                lines.append(f"  ... and {len(self.error_rows) - max_listed} more "
                             f"(column note of {self.out})")
        if self.out:
            lines.append(f"results in {self.out}  (wall time {self.wall_s:.1f} s)")
        return "\n".join(lines)
