"""Options of a verification run: one frozen dataclass, validated once when it is made."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .fp import ARITHMETICS

METHODS = ("auto", "bounds", "lp", "milp", "bab", "attack")


class OptionsError(ValueError):
    """A bad option or combination of options; the message is one line for the user."""


@dataclass(frozen=True)
class Options:
    """How to verify.

    method:   ``auto`` attack, then bounds, then LP-tightened bounds, then the exact MILP;
              ``bounds`` symbolic bounds only; ``lp`` bounds plus per-neuron LP tightening;
              ``milp`` bounds then the MILP (no attack); ``attack`` PGD only (falsified or unknown).
    timeout:  wall-clock seconds for the whole property.
    attack_share: fraction of the timeout the attack may use in ``auto``.
    arithmetic: what a ``verified`` answer covers: ``float32`` (default) the model as onnxruntime
              runs it, every affine op rounded in float32 in any summation order (and real and
              float64 arithmetic too); ``real`` real arithmetic (and float64) only.
    """
    method: str = "auto"
    timeout: float = 60.0     # the one default timeout of the API and the CLI
    threads: int = 1
    attack_share: float = 0.1
    seed: int = 0
    arithmetic: str = "float32"

    def __post_init__(self):
        if self.method not in METHODS:
            raise OptionsError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
                and self.timeout > 0):
            raise OptionsError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise OptionsError(f"threads must be a positive integer, got {self.threads!r}")
        if self.arithmetic not in ARITHMETICS:
            raise OptionsError(f"unknown arithmetic {self.arithmetic!r}: choose one of "
                               f"{', '.join(ARITHMETICS)}")
        if not 0.0 <= self.attack_share < 1.0:
            raise OptionsError(f"attack_share must lie in [0, 1), got {self.attack_share!r}")

    def override(self, **changes) -> "Options":
        """These options with the given fields changed; a field given as None keeps its value
        (so optional arguments and unset command-line flags pass straight through)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


def check_eps(eps) -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise OptionsError(f"eps must be a number, got {eps!r}") from None
    if not math.isfinite(eps) or eps < 0:
        raise OptionsError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_domain(domain) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise OptionsError(f"domain must be two numbers LO HI, got {domain!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise OptionsError(f"domain must satisfy LO <= HI with finite values, got {lo} {hi}")
    return lo, hi
