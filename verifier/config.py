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
class Tuning:
    """How the time of a property is shared out, and the knobs of each stage.  Each default says
    the measurement behind it; every field is validated once, here."""
    # shares of the time left when the stage starts
    alpha_share: float = 0.2    # slope optimisation: its margins on mnist_fc 256x4 come within the
                                # first 20 steps, 0.1-2 s (benchmarks/bench_bounds.py)
    lp_share: float = 0.3       # per-neuron LPs (--method lp): 10-20x slower than alpha for the
                                # same margins on mnist_fc 256x4
    split_share: float = 0.6    # input splitting in auto; the slowest ACAS Xu instance it decided
                                # in a full run took 35 % of its timeout
    bab_share: float = 0.6      # ReLU branch and bound in auto, the MILP gets the rest (mnist_fc
                                # 256x2 prop_9/10 at 0.05: bab 0.4 / 5.5 s, the MILP 3.4 / 6.1 s)
    min_stage: float = 0.05     # seconds below which a stage is not started at all
    # PGD steps of the first attack: one round of 16 restarts x 20 steps finds the same 17 of the
    # 18 sat mnist_fc instances and LP_d-CNN images 62 / 92 as 60 steps, at 0.98 s instead of
    # 2.6 s on a robust LP_d-CNN image (paid by every instance the bounds then prove)
    attack_steps: int = 20
    # the second, deeper attack on a case the bounds leave open (LP_d-CNN image 8: missed by the
    # first round in 0.3 s, found by this one within 9-13 s of a 60 s timeout)
    deep_attack_steps: int = 100
    deep_attack_rounds: int = 1000
    alpha_steps: int = 20       # per objective: most of the gain comes in the first 20
    milp_neuron_time: float = 10.0   # per-neuron MILP cap at the milp bound level
    bab_batch: int = 64         # ReLU domains split per round (128 children: 1-2 s per round on
                                # mnist_fc 256x4 with 10-20 steps)
    bab_steps: int = 20         # slope/multiplier steps per ReLU branch-and-bound round; mnist_fc
                                # 256x4 prop_11 at 0.05 needs them (19 s; 5 steps: timeout at 60 s)
    # ... and on large nets (more than large_net_relus ReLUs), where a step costs more: fewer steps,
    # more domains (--method bab, 100 s: ResNet-2B props 10 / 22 / 47 42 / 49 / 38 -> 34 / 41 /
    # 36 s, prop 35 timeout -> 87 s; oval21 base img8194 / img2578 timeout -> 47 s, 34 -> 25 s,
    # deep img7878 18 -> 16 s)
    bab_steps_large: int = 5
    # large nets (conv nets: oval21, cifar10_resnet, LP_d-CNN) also skip the MILP refinement: its
    # solves there take 0.25-0.4 s and rarely settle a neuron (oval21 wide img8517: 3 of 54 in 13
    # s; ResNet-2B prop_35: 13 of ~60 in 23 s), and ResNet-2B prop_35 was verified in 91 s
    # without it, a timeout with it (120 s)
    large_net_relus: int = 2000
    bab_fsb: int = 5            # filtered strong branching among this many BaBSR candidates (1:
                                # BaBSR alone); mnist_fc 256x2 prop_10 at 0.05: 5.8 s with 3,
                                # 15.4 s with BaBSR alone (both time out without split multipliers);
                                # with float32 trial estimates, oval21 base img2578 / img8194, deep
                                # img7878, ResNet-2B props 10 / 22 / 35: 102 s in all with 3, 83
                                # with 5, 93 with 8; mnist_fc 256x2 prop_10, 256x4 prop_11 / prop_3
                                # at 0.05 the same (1.0 / 9.2 / 1.8 s with 5)
    split_batch: int = 512      # boxes split per round by input splitting (ACAS Xu)
    # input splitting runs one search per entry, taking turns: each looks ahead among that many
    # of the most promising inputs (bounding both halves of each) before it splits (1: smart
    # branching alone).  ACAS Xu: 2 decides 1_1 / 1_7 prop_2 and 5_3 prop_2 in 2-3 s (1 and 5
    # taking turns: timeouts at 116 s); 5 alone decides prop_1 on 2_8, 4_7, 5_5, 5_7 in 4-14 s
    # (1 alone: a timeout at 30 s on 4_7; 2 then 1: timeouts at 116 s); 1 alone decides 1_1
    # prop_5, 3_3 prop_9 in 7-10 s (5 alone: timeouts at 40 s).  All 186 at 116 s: 181 decided
    # with (2, 1, 5), 177 with 2 for a third of the time then 1
    split_tops: tuple = (2, 1, 5)
    # per search of ``split_tops``: slope steps for the open boxes' intermediate bounds and rows
    # (0: CROWN).  Look-ahead among 5 alone, 60 s: 1_8 prop_2 verified in 5 s with 5 steps (a
    # timeout at 116 s without), 3_9 / 4_9 prop_1 at -8.5 / -9.7 (without: -33 / -47), 4_7 prop_1
    # verified in 8.7 s either way; smart branching with 5 steps: 1_1 prop_5 a timeout at 60 s
    # (verified in 9.6 s without: it needs many cheap boxes)
    split_steps: tuple = (0, 0, 5)
    split_slice: float = 1.0    # seconds of each search's first turn (the turns double)
    # auto gives the final MILP time only with at most this many unstable ReLUs after the bounds,
    # else branch and bound keeps it: ResNet-2B MILPs (450-1560 binaries) never finished in 120 s,
    # and branch and bound alone decided props 10, 22, 47 in 41 / 53 / 40 s where auto timed out;
    # mnist_fc 256x4 prop_14 at 0.05, decided by the MILP, has 288 unstable after alpha-CROWN
    milp_relus: int = 400
    leaf_relus: int = 4         # domains with at most this many free unstable ReLUs go to the MILP
    leaf_time: float = 2.0      # seconds for each such leaf MILP
    # short PGD inside the worst open domains of branch and bound, every domain_attack_every s
    domain_attack_every: float = 0.3   # ACAS Xu prop_2 1_2 / 1_5 (sat): 3.1 / 44 s without, 1.3 / 1.2 s
                                       # every 1 s, 0.4 / 0.5 s every 0.3 s; 2_7 prop_1 (unsat) 28 -> 29 s
    domain_attack_time: float = 0.1
    # MILP-refined intermediate bounds in auto, between a first and a second branch and bound
    # (nets of at most large_net_relus ReLUs with at most refine_relus unstable after the bounds;
    # see verifier/bounds/refine.py)
    refine_relus: int = 1000
    bab_first_share: float = 0.15   # the first branch and bound: what it decides stays fast
    # of the time left for the refinement (mnist_fc 256x4 eps 0.05 prop_0, one process: 203 ->
    # 173 unstable in 18 s); 256x4 at 0.05, 300 s: prop_5 timeout -> 132 s, prop_14 274 s (the
    # final MILP) -> 119 s, prop_0 125 -> 145 s, prop_10 a timeout either way with 0.6 for 0.3;
    # with 0.8 prop_5 is a timeout again
    refine_share: float = 0.6
    refine_neuron_time: float = 1.0  # per MILP side: a proof takes 0.16-0.3 s, a failed one
                                     # stops at the first crossing point
    memory_gb: float = 4.0      # cap on the coefficient blocks of one back-substitution (GiB):
                                # two workers stay well under 24 GB; the largest block on oval21
                                # and cifar10_resnet is 67 MB, so only wider nets feel it (nodes
                                # whose one row would not fit keep interval bounds; an output
                                # that does not fit is `unknown`, with the reason in stats)

    pool_gb: float = 2.0        # open domains of one branch-and-bound search (GiB): past it the
                                # search splits the domains closest to closing first, so the pool
                                # grows only by children that stay open (mnist_fc 256x6 prop_0 at
                                # 0.05, --method bab, 300 s: peak RSS 4.7 GB without, 2.8 GB with)

    def __post_init__(self):
        for name in ("alpha_share", "lp_share", "split_share", "bab_share", "bab_first_share",
                     "refine_share"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise OptionsError(f"{name} must lie in (0, 1], got {v!r}")
        for name in ("memory_gb", "pool_gb"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise OptionsError(f"{name} must be a positive number of GiB, got {v!r}")
        for name in ("min_stage", "milp_neuron_time", "leaf_time", "domain_attack_time",
                     "refine_neuron_time"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise OptionsError(f"{name} must be a number of seconds >= 0, got {v!r}")
        if not (isinstance(self.split_tops, tuple) and self.split_tops and all(
                isinstance(t, int) and t >= 1 for t in self.split_tops)):
            raise OptionsError(f"split_tops must be a tuple of integers >= 1, got "
                               f"{self.split_tops!r}")
        if not (isinstance(self.split_steps, tuple) and len(self.split_steps) == len(
                self.split_tops) and all(isinstance(t, int) and t >= 0 for t in self.split_steps)):
            raise OptionsError(f"split_steps must be a tuple of integers >= 0, one per entry of "
                               f"split_tops, got {self.split_steps!r}")
        if not (isinstance(self.split_slice, (int, float)) and math.isfinite(self.split_slice)
                and self.split_slice > 0):
            raise OptionsError(f"split_slice must be seconds > 0, got {self.split_slice!r}")
        if not (isinstance(self.domain_attack_every, (int, float))
                and self.domain_attack_every > 0):
            raise OptionsError("domain_attack_every must be seconds > 0 (inf: never), got "
                               f"{self.domain_attack_every!r}")
        for name in ("attack_steps", "deep_attack_steps", "deep_attack_rounds", "alpha_steps",
                     "bab_batch", "bab_steps", "bab_fsb", "split_batch", "leaf_relus",
                     "refine_relus", "milp_relus", "bab_steps_large", "large_net_relus"):
            v = getattr(self, name)
            low = 0 if name in ("alpha_steps", "leaf_relus", "bab_fsb", "refine_relus",
                                "milp_relus", "large_net_relus") else 1
            if not (isinstance(v, int) and v >= low):
                raise OptionsError(f"{name} must be an integer >= {low}, got {v!r}")

    def large_net(self, relu_count: int) -> bool:
        """A net above ``large_net_relus`` ReLUs: fewer branch-and-bound steps, no refinement."""
        return relu_count > self.large_net_relus


@dataclass(frozen=True)
class Options:
    """How to verify.

    method:   ``auto`` attack, CROWN and alpha-CROWN bounds, then branch and bound (input
              splitting on nets with at most 32 inputs, ReLU phases otherwise), then the exact
              MILP; ``bounds`` CROWN and alpha-CROWN only; ``lp`` bounds plus per-neuron LP
              tightening; ``milp`` bounds then the MILP (no attack); ``bab`` bounds then branch
              and bound (no attack); ``attack`` PGD only (falsified or unknown).
    timeout:  wall-clock seconds for the whole property.
    attack_share: fraction of the timeout the attack may use in ``auto``.
    arithmetic: what a ``verified`` answer covers: ``float32`` (default) the model as onnxruntime
              runs it, every affine op rounded in float32 in any summation order (and real and
              float64 arithmetic too); ``real`` real arithmetic (and float64) only.
    tuning:   the stages' shares of the time and their knobs (``Tuning``).
    """
    method: str = "auto"
    timeout: float = 60.0     # the one default timeout of the API and the CLI
    threads: int = 1
    attack_share: float = 0.1
    seed: int = 0
    arithmetic: str = "float32"
    tuning: Tuning = Tuning()

    def __post_init__(self):
        if not isinstance(self.tuning, Tuning):
            raise OptionsError(f"tuning must be a verifier.config.Tuning, got {self.tuning!r}")
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
