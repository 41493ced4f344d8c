"""What a run of the bound ladder reports: per-level counts and times, and the bounds themselves."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph import Graph, Relu
from ..ops.relu import masks


@dataclass
class LevelStats:
    """What one level achieved: per ReLU node ``i`` (keyed by its index), the counts of its neurons
    proved active (input lower >= 0), proved inactive (input upper <= 0) and still unstable; the
    wall time of the level; and level-specific counters (LP solves, timeouts …)."""
    level: str
    time_s: float = 0.0
    relu: dict = field(default_factory=dict)      # node index -> {"active", "inactive", "unstable"}
    extra: dict = field(default_factory=dict)
    margin_lower: np.ndarray | None = None        # margin bounds after this level (if C given)
    margin_upper: np.ndarray | None = None

    @property
    def unstable(self) -> int:
        return sum(v["unstable"] for v in self.relu.values())

    def to_dict(self) -> dict:
        out = {"level": self.level, "time_s": round(self.time_s, 6), "unstable": self.unstable,
               "relu": {str(k): dict(v) for k, v in self.relu.items()}, **self.extra}
        if self.margin_lower is not None:
            out["margin_lower"] = [float(v) for v in self.margin_lower]
            out["margin_upper"] = [float(v) for v in self.margin_upper]
        return out


@dataclass
class BoundsReport:
    """One ``LevelStats`` per level run (in order) plus the margin bounds if a ``C`` was given."""
    levels: list = field(default_factory=list)
    margin_lower: np.ndarray | None = None
    margin_upper: np.ndarray | None = None

    def to_dict(self) -> dict:
        out = {"levels": [s.to_dict() for s in self.levels]}
        if self.margin_lower is not None:
            out["margin_lower"] = [float(v) for v in self.margin_lower]
            out["margin_upper"] = [float(v) for v in self.margin_upper]
        return out

    def table(self) -> str:
        """A few lines for the CLI summary."""
        lines = []
        for s in self.levels:
            per = " ".join(f"n{k}:{v['active']}/{v['inactive']}/{v['unstable']}"
                           for k, v in s.relu.items())
            m = "" if s.margin_lower is None else f"  min margin >= {np.min(s.margin_lower):.6g}"
            lines.append(f"{s.level:<9} {s.time_s:8.3f}s  unstable {s.unstable:>6}{m}   "
                         f"(active/inactive/unstable) {per}")
        return "\n".join(lines)


@dataclass
class Bounds:
    """Sound per-node bounds: ``lower[i] <= value of node i <= upper[i]`` for every input in the box
    (exact arithmetic and float64 ``Graph.forward``).  ``margin_lower/upper`` (when ``C``, ``d`` were
    given) bound ``C @ y - d`` for the output ``y``, row by row."""
    lower: list
    upper: list
    level: str
    report: BoundsReport
    margin_lower: np.ndarray | None = None
    margin_upper: np.ndarray | None = None


def relu_stats(graph: Graph, lower: list, upper: list) -> dict:
    """Per Relu node: its entries proved active, proved inactive and still unstable."""
    out = {}
    for i, n in enumerate(graph.nodes):
        if isinstance(n, Relu):
            a, z, u = masks(lower[n.inputs[0]], upper[n.inputs[0]])
            out[i] = {"active": int(a.sum()), "inactive": int(z.sum()), "unstable": int(u.sum())}
    return out
