"""An anytime-valid test of a canary's win rate: mixture sequential probability ratio tests (e-processes).

Each stable-vs-canary vote is a coin flip with unknown p = P(canary wins). After S canary wins and F stable
wins, the likelihood ratio of a win rate p against ½ is ``L(p) = 2^(S+F) · p^S · (1 − p)^F``. Mixed over
p ~ Uniform(½, 1) (density 2 on that half),

    E_promote = ∫_½^1 2 · L(p) dp = 2^(S+F+1) · B(S+1, F+1) · (1 − I_½(S+1, F+1)),

and its mirror over Uniform(0, ½) is ``E_rollback = 2^(S+F+1) · B(S+1, F+1) · I_½(S+1, F+1)``. Both start at 1
before any vote. Under p = ½ each ``L(p)`` is a martingale, and under any p ≤ ½ each ``L(p)`` with p ≥ ½ is a
supermartingale (its expected factor per vote is 2(p·q + (1 − p)(1 − q)) ≤ 1 for q ≥ ½), so their mixture is one
too. Ville's inequality then bounds the chance that ``E_promote`` *ever* reaches 1/α by α, however often it is
looked at: peeking after every vote is free, which is what a controller watching live votes does.

Everything is computed in logs: after thousands of votes ``2^(S+F)`` overflows a float.
"""

import math
from collections.abc import Callable

from scipy import special


LOG_2 = math.log(2.0)


def _log_mixture_norm(wins: int, losses: int) -> float:
    """log(2^(S+F+1) · B(S+1, F+1)): the likelihood ratio mixed over the whole of Uniform(0, 1), times 2."""
    return (wins + losses + 1) * LOG_2 + float(special.betaln(wins + 1, losses + 1))


def _check_counts(wins: int, losses: int) -> None:
    if wins < 0 or losses < 0:
        raise ValueError(f"vote counts must be non-negative, got {wins} canary and {losses} stable wins")


def log_e_promote(canary_wins: int, stable_wins: int) -> float:
    """log E_promote: evidence that the canary wins more than half of its votes."""
    _check_counts(canary_wins, stable_wins)
    # 1 − I_½(a, b) = I_½(b, a): the upper tail without cancellation when it is tiny
    upper = float(special.betainc(stable_wins + 1, canary_wins + 1, 0.5))
    return _log_mixture_norm(canary_wins, stable_wins) + math.log(upper) if upper > 0 else -math.inf


def log_e_rollback(canary_wins: int, stable_wins: int) -> float:
    """log E_rollback: evidence that the canary wins less than half of its votes (the mirror statistic)."""
    return log_e_promote(stable_wins, canary_wins)


def win_rate_interval(canary_wins: int, stable_wins: int, alpha: float) -> tuple[float, float]:
    """An anytime-valid (1 − α) confidence sequence for the canary's win rate.

    Robbins' mixture: the set of p0 against which the likelihood ratio of p, mixed over Uniform(0, 1), is still
    below 1/α. That ratio is a martingale under p0, so by Ville's inequality the set holds the true win rate at
    every vote at once with probability at least 1 − α: the interval can be printed after each vote.
    Returned as (low, high).
    """
    _check_counts(canary_wins, stable_wins)
    n = canary_wins + stable_wins
    # p is inside when p^S (1 − p)^F ≥ α · B(S+1, F+1), i.e. when the mixture's likelihood ratio at p is ≤ 1/α
    log_threshold = math.log(alpha) + float(special.betaln(canary_wins + 1, stable_wins + 1))

    def inside(p: float) -> bool:
        return _log_likelihood(p, canary_wins, stable_wins) >= log_threshold

    mode = canary_wins / n if n else 0.5
    return _bisect_edge(inside, mode, 0.0), _bisect_edge(inside, mode, 1.0)


def _log_likelihood(p: float, wins: int, losses: int) -> float:
    if p <= 0.0:
        return 0.0 if wins == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if losses == 0 else -math.inf
    return wins * math.log(p) + losses * math.log1p(-p)


def _bisect_edge(inside: Callable[[float], bool], start: float, outward: float, steps: int = 50) -> float:
    """The edge of the interval between ``start`` (inside: the likelihood's mode) and ``outward``."""
    if inside(outward):
        return outward
    lo, hi = start, outward
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) else (lo, mid)
    return lo
