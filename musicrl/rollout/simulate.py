"""Simulated rollouts: how often, and how fast, the decision rule promotes under listeners of a known win rate.

The win-rate test depends on the votes only through (S, F), and E_promote grows with S at a fixed number of
votes, so the rule is two boundaries per vote count: the fewest canary wins that reach 1/α, and the most that
still reach the mirror's 1/β. Computing them once makes thousands of simulated rollouts, each looked at after
every vote, a matter of milliseconds. The tests check the boundaries against :func:`decide` itself.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from musicrl.rollout.decision import Action, DecisionRule


NO_BOUNDARY = -1


@dataclass(frozen=True, slots=True)
class Boundaries:
    """Per vote count n (index 0 to max_votes): the win counts where the test stops.

    Attributes:
        promote_at: The fewest canary wins with E_promote ≥ 1/α after n votes (n + 1 when none is enough).
        rollback_at: The most canary wins with E_rollback ≥ 1/β after n votes (``NO_BOUNDARY`` when none).
    """

    promote_at: np.ndarray
    rollback_at: np.ndarray


@functools.lru_cache(maxsize=8)  # a second of scipy per rule: simulations reuse it
def boundaries(rule: DecisionRule) -> Boundaries:
    """The stopping boundaries of the mixture SPRT, for every vote count up to ``rule.max_votes``."""
    promote_at = np.empty(rule.max_votes + 1, dtype=np.int64)
    rollback_at = np.empty(rule.max_votes + 1, dtype=np.int64)
    for n in range(rule.max_votes + 1):
        wins = np.arange(n + 1)
        log_norm = (n + 1) * math.log(2.0) + special.betaln(wins + 1, n - wins + 1)
        with np.errstate(divide="ignore"):  # a tail of 0 is "no evidence": log 0 = -inf
            up = log_norm + np.log(special.betainc(n - wins + 1, wins + 1, 0.5))
            down = log_norm + np.log(special.betainc(wins + 1, n - wins + 1, 0.5))
        reach_up = np.flatnonzero(up >= rule.log_promote_threshold)
        reach_down = np.flatnonzero(down >= rule.log_rollback_threshold)
        promote_at[n] = reach_up[0] if reach_up.size else n + 1
        rollback_at[n] = reach_down[-1] if reach_down.size else NO_BOUNDARY
    return Boundaries(promote_at, rollback_at)


@dataclass(frozen=True, slots=True)
class SimulatedRollouts:
    """The outcome of each simulated rollout.

    Attributes:
        actions: Per rollout, ``promote`` or ``rollback`` (a rollout reaching max_votes rolls back).
        votes: Per rollout, the votes it took to decide.
    """

    actions: np.ndarray
    votes: np.ndarray

    def share(self, action: Action) -> float:
        return float(np.mean(self.actions == action.value))

    def median_votes(self, action: Action | None = None) -> float:
        """Median votes to a decision (of one kind, if given); NaN when no rollout ended that way."""
        chosen = self.votes if action is None else self.votes[self.actions == action.value]
        return float(np.median(chosen)) if chosen.size else math.nan


def _walks(win_rate: float, rule: DecisionRule, runs: int, seed: int) -> np.ndarray:
    """Canary wins after each vote, [runs, max_votes + 1] (column 0: no votes yet)."""
    votes = np.random.default_rng(seed).random((runs, rule.max_votes)) < win_rate
    return np.concatenate([np.zeros((runs, 1), dtype=np.int64), np.cumsum(votes, axis=1)], axis=1)


def _first_stop(stop: np.ndarray) -> np.ndarray:
    """Per row, the first column where ``stop`` holds (a huge number when it never does)."""
    return np.where(stop.any(axis=1), stop.argmax(axis=1), np.iinfo(np.int64).max)


def _outcomes(promote: np.ndarray, rollback: np.ndarray, rule: DecisionRule) -> SimulatedRollouts:
    first_promote, first_rollback = _first_stop(promote), _first_stop(rollback)
    promoted = first_promote < np.minimum(first_rollback, rule.max_votes + 1)
    decided_at = np.minimum(np.where(promoted, first_promote, first_rollback), rule.max_votes)
    actions = np.where(promoted, Action.PROMOTE.value, Action.ROLL_BACK.value)
    return SimulatedRollouts(actions, decided_at)


def simulate(win_rate: float, rule: DecisionRule, runs: int, seed: int = 0) -> SimulatedRollouts:
    """Roll out ``runs`` times against listeners who prefer the canary with probability ``win_rate``.

    The rule is looked at after every vote, as the controller does: promotion once E_promote has reached 1/α
    and at least ``min_votes`` votes are in; roll back on the mirror statistic or at ``max_votes``. No
    guardrail fails and the deadline never comes.
    """
    wins = _walks(win_rate, rule, runs, seed)
    b = boundaries(rule)
    n = np.arange(rule.max_votes + 1)
    crossed = np.maximum.accumulate(wins >= b.promote_at, axis=1)  # the crossing is remembered
    return _outcomes(crossed & (n >= rule.min_votes), wins <= b.rollback_at, rule)


def simulate_naive_z_test(win_rate: float, rule: DecisionRule, runs: int, seed: int = 0) -> SimulatedRollouts:
    """The same rollouts judged by a one-sided z-test at level α (and β for roll back) after every vote.

    The fixed-horizon test that dashboards and threshold-based canary tools apply, peeked at continually:
    each look is another chance to cross by luck, so its real error rate is far above α.
    """
    wins = _walks(win_rate, rule, runs, seed)
    n = np.maximum(np.arange(rule.max_votes + 1), 1)
    z = (wins - n / 2) / np.sqrt(n / 4)
    counted = np.arange(rule.max_votes + 1) >= rule.min_votes
    promote = counted & (z >= stats.norm.ppf(1 - rule.alpha))
    rollback = counted & (z <= -stats.norm.ppf(1 - rule.beta))
    return _outcomes(promote, rollback, rule)
