"""The result of a robustness curve: per ε, how many samples were verified, falsified or left
undecided, and the accuracies a model owner reads off it.

- clean accuracy: samples the model classifies correctly (onnxruntime, float32);
- certified robust accuracy at ε: samples verified at ε (proved: a lower bound);
- empirical robust accuracy at ε: samples not falsified at ε (an upper bound: every falsified
  sample has a replayed counterexample).
The true robust accuracy at ε lies between the two; the gap is the undecided samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UNDECIDED = ("unknown", "timeout", "error")


@dataclass
class RobustnessCurve:
    """``points[i][k]`` is the row of sample ``i`` at ``eps[k]`` (status, margins, method, ...),
    or None where the run stopped before it (interrupted)."""
    model: str
    eps: tuple
    labels: list
    clean: list                     # per sample: classified correctly without perturbation
    points: list                    # per sample: one row dict (or None) per ε
    dataset: str = ""
    out: str = ""
    wall_s: float = 0.0
    made: dict = field(default_factory=dict)    # rows made by this call: run / implied / clean

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def clean_accuracy(self) -> float:
        return sum(self.clean) / max(self.n, 1)

    def count(self, k: int) -> dict:
        """Status -> number of samples at ``eps[k]`` (``missing``: not answered yet)."""
        c = {s: 0 for s in ("verified", "falsified", *UNDECIDED, "missing")}
        for row in (p[k] for p in self.points):
            c["missing" if row is None else row["status"]] += 1
        return c

    def certified(self, k: int) -> float:
        return self.count(k)["verified"] / max(self.n, 1)

    def empirical(self, k: int) -> float:
        return (self.n - self.count(k)["falsified"]) / max(self.n, 1)

    def title(self) -> str:
        on = f" on {self.dataset}" if self.dataset else ""
        return f"{self.model}{on}, {self.n} samples"

    def table(self) -> str:
        lines = [f"robustness of {self.title()}: clean accuracy {self.clean_accuracy:.1%} "
                 f"({sum(self.clean)} of {self.n})",
                 f"{'eps':>8}  {'verified':>8}  {'falsified':>9}  {'unknown':>7}  "
                 f"{'certified':>9}  {'empirical':>9}"]
        for k, e in enumerate(self.eps):
            c = self.count(k)
            unknown = sum(c[s] for s in UNDECIDED) + c["missing"]
            lines.append(f"{e:>8g}  {c['verified']:>8}  {c['falsified']:>9}  {unknown:>7}  "
                         f"{self.certified(k):>9.1%}  {self.empirical(k):>9.1%}")
        lines.append("robust accuracy lies between certified (verified) and empirical "
                     "(not falsified)")
        missing = sum(self.count(k)["missing"] for k in range(len(self.eps)))
        if missing:
            lines.append(f"{missing} points not answered (interrupted); --resume continues")
        words = {"run": "run", "implied": "implied by nested boxes",
                 "clean": "misclassified as given", "resumed": "resumed"}
        made = ", ".join(f"{v} {words.get(k, k)}" for k, v in self.made.items() if v)
        where = f"results in {self.out}: " if self.out else ""
        lines.append(f"{where}{made or 'no points'}  (wall time {self.wall_s:.1f} s)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "n": self.n,
                "clean_accuracy": self.clean_accuracy,
                "eps": [{"eps": e, **self.count(k), "certified": self.certified(k),
                         "empirical": self.empirical(k)} for k, e in enumerate(self.eps)]}
