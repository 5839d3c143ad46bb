"""A simulated listener panel: Bradley–Terry votes on a hidden taste, with the faults real listeners have.

For a pair shown as (A, B), let Δ = (s_A − s_B) / scale be the taste's score difference in units of its
spread over the clip pool. An attentive listener picks A with the Bradley–Terry probability σ(Δ / τ)
(Bradley & Terry 1952; MusicRL, Cideron et al. 2024, §3.2 fits the same model), at temperature τ. Faults:

* **inattention**: a share of the panel votes without listening, a fair coin between A and B;
* **position bias**: with probability ``position_bias`` an attentive listener picks slot A without comparing;
* **ties**: a pair closer than ``tie_margin`` is a tie, and any answer is a tie at ``tie_rate``.

Each vote goes to a panel member drawn uniformly, so the vote probabilities are exact mixtures, and the
listener can state its own **agreement ceiling**: the expected share of decisive votes (not ties) that
name the truly better clip, the accuracy a perfect reward model would reach against these votes:

    ceiling = Σ_pairs P(vote = better clip) / Σ_pairs P(vote is decisive)

which without faults is the mean over pairs of max(p, 1 − p), p = σ(Δ / τ).
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from musicrl.errors import InvalidRequest
from musicrl.sim.tastes import Taste


CHOICES = ("a", "b", "tie")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """How a panel of simulated listeners votes.

    Attributes:
        temperature: τ of P(A ≻ B) = σ(Δ / τ), Δ in standard deviations of the taste over the pool; 0 votes
            for the better clip every time.
        inattentive_share: Share of the panel who vote without listening (a fair coin); rounded to whole
            members of ``panel_size``.
        position_bias: Probability that an attentive listener picks slot A without comparing.
        tie_margin: Pairs with |Δ| below this are ties (standard deviations).
        tie_rate: Probability that any answer is a tie regardless of the clips.
        panel_size: Listeners in the panel; votes are spread uniformly over them.
    """

    temperature: float = 0.3  # in pool standard deviations: a ceiling near 0.8 on clips of one prompt
    inattentive_share: float = 0.0
    position_bias: float = 0.0
    tie_margin: float = 0.0
    tie_rate: float = 0.0
    panel_size: int = 20  # enough members that a share of 5% is one listener

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidRequest(f"temperature must be >= 0 (0 never errs), got {self.temperature}")
        for name in ("inattentive_share", "position_bias", "tie_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InvalidRequest(f"{name} is a probability and must be in [0, 1], got {value}")
        if not (np.isfinite(self.tie_margin) and self.tie_margin >= 0):
            raise InvalidRequest(f"tie_margin must be >= 0 standard deviations, got {self.tie_margin}")
        if self.panel_size < 1:
            raise InvalidRequest(f"panel_size must be >= 1, got {self.panel_size}")
        if self.tie_rate == 1:
            raise InvalidRequest("tie_rate 1 makes every answer a tie: nothing could be learned or measured")

    @property
    def inattentive_members(self) -> int:
        """How many panel members vote without listening (members 0 .. n − 1)."""
        return int(round(self.inattentive_share * self.panel_size))


@dataclass(frozen=True, slots=True)
class Votes:
    """A panel's answers to N pairs.

    Attributes:
        choices: ``a``, ``b`` or ``tie`` per pair, str [N].
        users: The panel member who answered each pair, int64 [N].
        listened: Whether that member listened (inattentive members did not), bool [N].
    """

    choices: np.ndarray
    users: np.ndarray
    listened: np.ndarray


@dataclass(frozen=True, slots=True)
class VoteProbabilities:
    """P(a), P(b) and P(tie) of each pair, float64 [N] each, over the panel's members."""

    a: np.ndarray
    b: np.ndarray
    tie: np.ndarray


class Listener:
    """A panel voting on one hidden taste.

    Args:
        taste: What the panel likes.
        config: How it votes.
        scale: The taste's spread over the clip pool (Δ = score difference / scale); > 0.

    Raises:
        InvalidRequest: ``scale`` is not a positive number.
    """

    def __init__(self, taste: Taste, config: ListenerConfig, scale: float) -> None:
        if not (np.isfinite(scale) and scale > 0):
            raise InvalidRequest(f"scale must be a positive number, got {scale}: does the taste vary over the pool?")
        self.taste = taste
        self.config = config
        self.scale = float(scale)

    @classmethod
    def calibrated(
        cls, taste: Taste, config: ListenerConfig, pool_scores: np.ndarray, groups: np.ndarray
    ) -> "Listener":
        """A listener whose Δ is in pooled within-group standard deviations of the taste over the pool.

        Pairs are of clips of one prompt, so the spread that matters is the one within a prompt: for the
        prompt-dependent taste, the spread over the whole pool is mostly the sign the prompt flips.

        Args:
            taste: What the panel likes.
            config: How it votes.
            pool_scores: The taste's score of every clip, [C].
            groups: The prompt (any integer label) of every clip, [C].

        Raises:
            InvalidRequest: The taste does not vary within any prompt.
        """
        return cls(taste, config, within_group_std(pool_scores, groups))

    def margins(self, scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
        """Δ = (s_A − s_B) / scale of each pair, float64 [N]."""
        return (np.asarray(scores_a, np.float64) - np.asarray(scores_b, np.float64)) / self.scale

    def probabilities(self, delta: np.ndarray) -> VoteProbabilities:
        """What the panel answers to pairs of margins ``delta`` [N], averaged over its members."""
        config = self.config
        delta = np.asarray(delta, np.float64)
        if config.temperature > 0:
            bt = expit(delta / config.temperature)  # [N]: σ(Δ / τ)
        else:
            bt = (np.sign(delta) + 1) / 2
        close = np.abs(delta) < config.tie_margin  # [N]: attentive listeners hear these as equal
        tie_attentive = np.where(close, 1.0, config.tie_rate)
        a_attentive = (1 - tie_attentive) * (config.position_bias + (1 - config.position_bias) * bt)
        share = config.inattentive_members / config.panel_size
        tie = share * config.tie_rate + (1 - share) * tie_attentive
        a = share * (1 - config.tie_rate) / 2 + (1 - share) * a_attentive
        return VoteProbabilities(a=a, b=1 - a - tie, tie=tie)

    def ceiling(self, scores_a: np.ndarray, scores_b: np.ndarray) -> float:
        """Expected share of decisive votes on these pairs that name the better clip (see the module docstring).

        Returns:
            The ceiling in [0, 1], or NaN when no vote can be decisive.
        """
        delta = self.margins(scores_a, scores_b)
        p = self.probabilities(delta)
        right = np.where(delta > 0, p.a, np.where(delta < 0, p.b, (p.a + p.b) / 2))  # exact ties count half
        decisive = p.a + p.b
        return float(right.sum() / decisive.sum()) if decisive.sum() > 0 else float("nan")

    def vote(
        self, scores_a: np.ndarray, scores_b: np.ndarray, rng: np.random.Generator, users: np.ndarray | None = None
    ) -> Votes:
        """The panel's answers to pairs (A, B) of these scores, each from a uniformly drawn member.

        Args:
            scores_a: Taste scores of clip A, [N].
            scores_b: Taste scores of clip B, [N].
            rng: Source of every random draw (member, attention, choice).
            users: The member who answers each pair, int [N] (drawn uniformly when None): a caller that
                acts as that member before the vote (requests a comparison in its name) draws it first.

        Returns:
            One answer per pair.
        """
        config = self.config
        delta = self.margins(scores_a, scores_b)
        if users is None:
            users = rng.integers(0, config.panel_size, size=len(delta))  # [N]
        listened = users >= config.inattentive_members
        attentive = Listener(self.taste, _attentive(config), self.scale).probabilities(delta)
        coin = VoteProbabilities(
            a=np.full(len(delta), (1 - config.tie_rate) / 2),
            b=np.full(len(delta), (1 - config.tie_rate) / 2),
            tie=np.full(len(delta), config.tie_rate),
        )
        p_a = np.where(listened, attentive.a, coin.a)
        p_tie = np.where(listened, attentive.tie, coin.tie)
        u = rng.random(len(delta))
        choices = np.where(u < p_a, "a", np.where(u < p_a + p_tie, "tie", "b"))
        return Votes(choices=choices, users=users.astype(np.int64), listened=listened)


def _attentive(config: ListenerConfig) -> ListenerConfig:
    return ListenerConfig(
        temperature=config.temperature,
        position_bias=config.position_bias,
        tie_margin=config.tie_margin,
        tie_rate=config.tie_rate,
        panel_size=config.panel_size,
    )


def agreement(delta: np.ndarray, choices: np.ndarray) -> tuple[float, int]:
    """Measured share of decisive votes that name the better clip (an exact tie in Δ counts half).

    Args:
        delta: Δ of each pair (or any number with the sign of s_A − s_B), [N].
        choices: ``a``, ``b`` or ``tie`` per pair, [N].

    Returns:
        The share and the number of decisive votes it is over (NaN and 0 when none is).
    """
    delta, choices = np.asarray(delta), np.asarray(choices)
    decisive = choices != "tie"
    if not decisive.any():
        return float("nan"), 0
    said = np.where(choices[decisive] == "a", 1.0, -1.0)
    right = (np.sign(delta[decisive]) * said + 1) / 2  # 1 right, 0 wrong, 0.5 when Δ = 0
    return float(right.mean()), int(decisive.sum())


def within_group_std(values: np.ndarray, groups: np.ndarray) -> float:
    """The pooled standard deviation of ``values`` [C] around their group means (groups: labels [C])."""
    values = np.asarray(values, np.float64)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=values) / counts  # [G]
    dof = len(values) - len(counts)
    return float(np.sqrt(np.sum((values - means[inverse]) ** 2) / dof)) if dof > 0 else float("nan")
