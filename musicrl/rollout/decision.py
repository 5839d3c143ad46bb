"""The rollout's decision rule: from the evidence so far to wait, promote or roll back, with its reason.

A pure function, so the controller, ``musicrl rollout analyse`` and the simulations that check its error rates
all judge the same way. The win-rate test is the mixture SPRT of :mod:`musicrl.rollout.sequential`, valid
however often it is evaluated; the guardrails (error rate, latency) are judged by the controller's probe and
arrive here as a count of failed checks. A timeout, of votes or of time, never promotes.
"""

import enum
import math
from dataclasses import dataclass

from musicrl.errors import InvalidRequest


class Action(enum.StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLL_BACK = "rollback"


@dataclass(frozen=True, slots=True)
class DecisionRule:
    """When the evidence is enough.

    Attributes:
        alpha: Chance of promoting a canary that listeners do not prefer (win rate ≤ ½), in (0, 0.5).
        beta: Chance of rolling back on the win-rate test a canary that listeners do prefer, in (0, 0.5).
        min_votes: Votes before a promotion, however strong the evidence.
        max_votes: Votes after which an undecided rollout is rolled back.
        deadline_s: Seconds of counting after which an undecided rollout is rolled back.
        failure_limit: Failed guardrail checks that roll back.
    """

    alpha: float = 0.05
    beta: float = 0.05
    min_votes: int = 50  # a promotion on a handful of votes would ship a policy few people heard
    max_votes: int = 2000  # at α = 0.05 a canary preferred 55% of the time is promoted within it in 92% of rollouts
    deadline_s: float = 7 * 24 * 3600.0  # a week of listening; a quiet deployment should not keep a canary forever
    failure_limit: int = 3  # one failed check is noise; three are a broken canary

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 < value < 0.5):
                raise InvalidRequest(f"{name} must be between 0 and 0.5 (exclusive), got {value!r}")
        if self.min_votes < 1:
            raise InvalidRequest(f"min_votes must be at least 1, got {self.min_votes}")
        if self.max_votes < self.min_votes:
            raise InvalidRequest(
                f"max_votes ({self.max_votes}) must be at least min_votes ({self.min_votes}); raise max_votes"
            )
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise InvalidRequest(f"deadline_s must be a positive number of seconds, got {self.deadline_s}")
        if self.failure_limit < 1:
            raise InvalidRequest(f"failure_limit must be at least 1, got {self.failure_limit}")

    @property
    def log_promote_threshold(self) -> float:
        return -math.log(self.alpha)

    @property
    def log_rollback_threshold(self) -> float:
        return -math.log(self.beta)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a rollout has seen since it started counting.

    Attributes:
        canary_wins: Votes for the canary's clip in stable-vs-canary comparisons.
        stable_wins: Votes for the stable policy's clip.
        ties: Ties (count toward neither).
        nones: "Neither" answers (count toward neither).
        elapsed_s: Seconds since counting started (the canary ready, plus the warm-up).
        guardrail_failures: Failed guardrail checks so far.
        guardrails_failing: The guardrails that failed at the latest check, as sentences (empty: passing).
        promote_crossed: Whether E_promote has already reached 1/α at an earlier vote: the test may stop then,
            and a promotion held back by ``min_votes`` or a guardrail is still owed.
    """

    canary_wins: int = 0
    stable_wins: int = 0
    ties: int = 0
    nones: int = 0
    elapsed_s: float = 0.0
    guardrail_failures: int = 0
    guardrails_failing: tuple[str, ...] = ()
    promote_crossed: bool = False

    @property
    def votes(self) -> int:
        """Votes that count: a win for either side."""
        return self.canary_wins + self.stable_wins


@dataclass(frozen=True, slots=True)
class Decision:
    """The rule's answer and everything it read.

    Attributes:
        action: Wait, promote or roll back.
        reason: Why, in a sentence a person reads in the event and the CLI.
        log_e_promote: log of the statistic for "the canary is preferred".
        log_e_rollback: log of the mirror statistic.
        win_rate: The canary's share of wins (NaN with no votes).
        interval: An anytime-valid (1 − α) interval for the win rate.
        promote_crossed: Whether E_promote has reached 1/α by now (carry it into the next evidence).
    """

    action: Action
    reason: str
    log_e_promote: float
    log_e_rollback: float
    win_rate: float
    interval: tuple[float, float]
    promote_crossed: bool


def decide(evidence: Evidence, rule: DecisionRule) -> Decision:
    """Judge the evidence: roll back on a broken canary or on evidence against it, promote on evidence for it."""
    # here, not at the top: DecisionRule is part of the controller's config, which the `musicrl` parser reads in
    # images without scipy
    from musicrl.rollout.sequential import log_e_promote, log_e_rollback, win_rate_interval

    s, f = evidence.canary_wins, evidence.stable_wins
    up, down = log_e_promote(s, f), log_e_rollback(s, f)
    crossed = evidence.promote_crossed or up >= rule.log_promote_threshold

    def answer(action: Action, reason: str) -> Decision:
        win_rate = s / evidence.votes if evidence.votes else math.nan
        return Decision(action, reason, up, down, win_rate, win_rate_interval(s, f, rule.alpha), crossed)

    counts = f"{s} canary and {f} stable wins"
    if evidence.guardrail_failures >= rule.failure_limit:
        failing = "; ".join(evidence.guardrails_failing) or "see the earlier checks"
        return answer(Action.ROLL_BACK, f"guardrails failed {evidence.guardrail_failures} times ({failing})")
    if down >= rule.log_rollback_threshold:
        return answer(
            Action.ROLL_BACK, f"listeners prefer the stable policy: E = {math.exp(down):.3g} ≥ 1/β after {counts}"
        )
    if crossed and evidence.votes >= rule.min_votes and not evidence.guardrails_failing:
        return answer(Action.PROMOTE, f"listeners prefer the canary: E reached 1/α = {1 / rule.alpha:.3g} ({counts})")
    if evidence.votes >= rule.max_votes:
        return answer(Action.ROLL_BACK, f"no decision within max_votes = {rule.max_votes} ({counts})")
    if evidence.elapsed_s >= rule.deadline_s:
        return answer(Action.ROLL_BACK, f"no decision within the deadline of {rule.deadline_s:.0f} s ({counts})")
    return answer(Action.WAIT, _why_wait(evidence, rule, crossed, counts))


def _why_wait(evidence: Evidence, rule: DecisionRule, crossed: bool, counts: str) -> str:
    if crossed and evidence.votes < rule.min_votes:
        return f"the canary leads, but promotion needs {rule.min_votes} votes ({counts})"
    if crossed:
        return f"the canary leads, but a guardrail fails: {'; '.join(evidence.guardrails_failing)}"
    return f"not enough evidence yet ({counts})"
