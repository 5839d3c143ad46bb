"""The decision rule: its table of cases, its statistic, and its error rates under simulated listeners."""

import math

import numpy as np
import pytest
from scipy import integrate

from musicrl.errors import InvalidRequest
from musicrl.rollout.decision import Action, DecisionRule, Evidence, decide
from musicrl.rollout.sequential import log_e_promote, log_e_rollback, win_rate_interval
from musicrl.rollout.simulate import boundaries, simulate, simulate_naive_z_test


RULE = DecisionRule(alpha=0.05, beta=0.05, min_votes=50, max_votes=2000, deadline_s=3600.0, failure_limit=3)


# --- the decision table ----------------------------------------------------------------------------------


def test_too_few_votes_wait_even_when_every_one_is_for_the_canary() -> None:
    decision = decide(Evidence(canary_wins=20, stable_wins=0), RULE)
    assert decision.action is Action.WAIT
    assert decision.promote_crossed  # 2^20 · ... is far past 1/α: only min_votes holds it back
    assert "50 votes" in decision.reason


def test_no_votes_wait() -> None:
    decision = decide(Evidence(), RULE)
    assert decision.action is Action.WAIT
    assert decision.log_e_promote == pytest.approx(0.0) and decision.log_e_rollback == pytest.approx(0.0)
    assert math.isnan(decision.win_rate)


def test_a_clearly_better_canary_is_promoted() -> None:
    decision = decide(Evidence(canary_wins=70, stable_wins=30), RULE)
    assert decision.action is Action.PROMOTE
    assert decision.log_e_promote >= -math.log(RULE.alpha)
    assert decision.interval[0] > 0.5


def test_a_clearly_worse_canary_is_rolled_back() -> None:
    decision = decide(Evidence(canary_wins=30, stable_wins=70), RULE)
    assert decision.action is Action.ROLL_BACK
    assert "stable" in decision.reason


def test_failed_guardrails_roll_back_whatever_the_win_rate() -> None:
    failing = ("the canary's error rate 0.2 is over 0.05",)
    evidence = Evidence(canary_wins=90, stable_wins=10, guardrail_failures=3, guardrails_failing=failing)
    decision = decide(evidence, RULE)
    assert decision.action is Action.ROLL_BACK
    assert "error rate" in decision.reason


def test_a_failing_guardrail_holds_a_promotion_back_before_the_limit() -> None:
    failing = ("p95 latency 3.0× stable",)
    evidence = Evidence(canary_wins=90, stable_wins=10, guardrail_failures=1, guardrails_failing=failing)
    assert decide(evidence, RULE).action is Action.WAIT


def test_the_deadline_rolls_back_and_never_promotes() -> None:
    decision = decide(Evidence(canary_wins=30, stable_wins=25, elapsed_s=3600.0), RULE)
    assert decision.action is Action.ROLL_BACK
    assert "deadline" in decision.reason


def test_max_votes_rolls_back_an_undecided_rollout() -> None:
    decision = decide(Evidence(canary_wins=1000, stable_wins=1000), RULE)
    assert decision.action is Action.ROLL_BACK
    assert "max_votes" in decision.reason


def test_ties_and_nones_count_toward_neither_side() -> None:
    with_ties = decide(Evidence(canary_wins=10, stable_wins=5, ties=40, nones=40), RULE)
    without = decide(Evidence(canary_wins=10, stable_wins=5), RULE)
    assert with_ties.log_e_promote == without.log_e_promote
    assert with_ties.action is Action.WAIT  # 15 votes, not 95


def test_a_crossing_is_remembered_after_the_statistic_falls_back() -> None:
    # E fell below 1/α at 55 votes, but it had crossed earlier: Ville's bound covers stopping at the crossing
    evidence = Evidence(canary_wins=34, stable_wins=21, promote_crossed=True)
    assert decide(evidence, RULE).action is Action.PROMOTE
    assert decide(Evidence(canary_wins=34, stable_wins=21), RULE).action is Action.WAIT


@pytest.mark.parametrize("field", ["alpha", "beta"])
@pytest.mark.parametrize("value", [0.0, 0.5, 0.7, -0.1, math.nan])
def test_error_levels_outside_the_open_half_interval_are_refused(field: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=field):
        DecisionRule(**{field: value})  # type: ignore[arg-type]


def test_max_votes_below_min_votes_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="max_votes"):
        DecisionRule(min_votes=100, max_votes=50)


# --- the statistic -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wins", "losses"), [(0, 0), (7, 3), (3, 7), (40, 38), (0, 12)])
def test_the_closed_form_equals_the_mixture_integral(wins: int, losses: int) -> None:
    def ratio(p: float) -> float:  # the likelihood ratio of p against ½
        return 2.0 ** (wins + losses) * p**wins * (1 - p) ** losses

    up = integrate.quad(lambda p: 2 * ratio(p), 0.5, 1.0)[0]  # Uniform(½, 1) has density 2
    down = integrate.quad(lambda p: 2 * ratio(p), 0.0, 0.5)[0]
    assert math.exp(log_e_promote(wins, losses)) == pytest.approx(up, rel=1e-9)
    assert math.exp(log_e_rollback(wins, losses)) == pytest.approx(down, rel=1e-9)


def test_the_statistic_stays_finite_after_thousands_of_votes() -> None:
    assert math.isfinite(log_e_promote(3000, 2000)) and log_e_promote(3000, 2000) > 90


def test_the_interval_holds_the_observed_rate_and_narrows() -> None:
    wide, narrow = win_rate_interval(6, 4, 0.05), win_rate_interval(600, 400, 0.05)
    assert wide[0] < 0.6 < wide[1] and narrow[0] < 0.6 < narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3


def test_the_boundaries_agree_with_decide() -> None:
    rule = DecisionRule(min_votes=1, max_votes=300)
    b = boundaries(rule)
    for n in (1, 10, 50, 120, 299):
        for wins in range(n + 1):
            action = decide(Evidence(canary_wins=wins, stable_wins=n - wins), rule).action
            assert (action is Action.PROMOTE) == (wins >= b.promote_at[n] and wins > b.rollback_at[n]), (n, wins)
            assert (action is Action.ROLL_BACK) == (wins <= b.rollback_at[n]), (n, wins)


# --- error rates, looking after every vote -------------------------------------------------------------------


def test_coin_flip_listeners_get_a_canary_promoted_in_at_most_alpha_of_rollouts() -> None:
    runs = simulate(0.5, RULE, runs=2000, seed=11)
    assert runs.share(Action.PROMOTE) <= RULE.alpha
    # the naive z-test, peeked at after every vote, is the baseline the sequential test is built to beat
    naive = simulate_naive_z_test(0.5, RULE, runs=2000, seed=11)
    assert naive.share(Action.PROMOTE) > 3 * RULE.alpha


def test_a_canary_preferred_60_percent_of_the_time_is_promoted_in_95_percent_of_rollouts() -> None:
    runs = simulate(0.6, RULE, runs=2000, seed=12)
    assert runs.share(Action.PROMOTE) >= 0.95
    assert runs.median_votes(Action.PROMOTE) < RULE.max_votes / 4


def test_a_worse_canary_is_almost_never_promoted_and_rolled_back_early() -> None:
    runs = simulate(0.4, RULE, runs=2000, seed=13)
    assert runs.share(Action.PROMOTE) < 0.01
    assert runs.median_votes(Action.ROLL_BACK) < 400


def test_the_simulation_decides_as_decide_does_on_one_walk() -> None:
    rule = DecisionRule(min_votes=20, max_votes=400)
    runs = simulate(0.58, rule, runs=1, seed=5)
    votes = np.random.default_rng(5).random((1, rule.max_votes))[0] < 0.58
    wins = crossed = 0
    for n, vote in enumerate(votes, start=1):
        wins += int(vote)
        decision = decide(Evidence(canary_wins=wins, stable_wins=n - wins, promote_crossed=bool(crossed)), rule)
        crossed = decision.promote_crossed
        if decision.action is not Action.WAIT:
            break
    assert (decision.action.value, n) == (runs.actions[0], runs.votes[0])
