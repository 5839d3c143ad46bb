"""Configuration of the offline gate: which policies, which held-out prompts, which judges, which thresholds.

The gate compares a candidate policy with the stable one before a canary (DESIGN.md §2, issue 10). Its scalar
settings (sampling, device, thresholds, bootstrap) are config dataclasses whose flags ``musicrl.settings``
derives; the list-valued ones (rewards, prompts, per-reward thresholds) are parsed here, because the settings
module maps one flag to one scalar field.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from musicrl.config import EngineConfig, SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.settings import add_config_flags, config_from


PREFERENCE_KINDS = ("preference", "clap-preference")  # trained on listener feedback: never independent judges
MIN_PROMPTS = 2  # the bootstrap resamples prompts: one prompt would give a zero-width, meaningless interval


@dataclass(frozen=True, slots=True)
class GateReward:
    """One reward the gate scores both policies with.

    Attributes:
        name: The reward kind, as in ``musicrl.rewards.registry`` (``text-adherence``, ``loudness``, ...).
        uri: Its model URI (``tiny://clap?seed=0``, ``analytic://loudness``, a checkpoint folder).
        min_diff: Lowest accepted lower confidence bound of the mean paired difference (candidate − stable),
            in the reward's own units; None falls back to :attr:`GateThresholds.min_reward_diff`.
    """

    name: str
    uri: str
    min_diff: float | None = None

    def __post_init__(self) -> None:
        # here, not at the top: the registry imports numpy, and the `musicrl` parser reads this module's flags in
        # images without it
        from musicrl.rewards.registry import REWARD_KINDS

        if self.name not in REWARD_KINDS:
            raise InvalidRequest(f"unknown reward {self.name!r} for the gate; known: {sorted(REWARD_KINDS)}")
        if not self.uri.strip():
            raise InvalidRequest(f"the gate's {self.name} reward needs a model URI, e.g. {self.name}=URI")
        if self.min_diff is not None and not math.isfinite(self.min_diff):
            raise InvalidRequest(f"the minimum difference of {self.name} must be a finite number, got {self.min_diff}")

    @classmethod
    def parse(cls, spec: str) -> "GateReward":
        """Parse ``NAME=URI``, e.g. ``text-adherence=tiny://clap?seed=0``.

        Raises:
            InvalidRequest: No ``=``, or an unknown name or empty URI.
        """
        name, sep, uri = spec.partition("=")
        if not sep:
            raise InvalidRequest(f"--reward takes NAME=URI, e.g. text-adherence=tiny://clap?seed=0; got {spec!r}")
        return cls(name.strip(), uri.strip())


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """What the candidate must reach to pass. A threshold left at None is measured and reported, not gated.

    Attributes:
        min_reward_diff: Lowest accepted lower confidence bound of mean(candidate − stable), for every reward
            without its own :attr:`GateReward.min_diff`.
        max_kl_to_stable: Highest accepted KL(candidate ‖ stable), nats per token, on the candidate's samples.
        min_win_rate_preference: Lowest accepted share of paired clips the preference judge scores higher for
            the candidate (ties count half); applies only when there is a preference judge.
        min_win_rate_independent: The same under the independent judges' mean standardised score; applies only
            when there are independent judges.
    """

    min_reward_diff: float | None = field(
        default=None,  # reward scales differ (cosine, MOS, BT logit): no common default
        metadata={"help": "lowest lower CI bound of mean(candidate − stable) for every reward; empty: not gated"},
    )
    max_kl_to_stable: float | None = field(
        default=None,  # the KL a stage may reach depends on its α: the pipeline sets it
        metadata={"help": "highest KL(candidate ‖ stable), nats per token; empty: not gated"},
    )
    min_win_rate_preference: float | None = field(
        default=0.5,  # the listeners' model must not prefer the stable policy more often
        metadata={"help": "lowest win rate under the preference judge; empty: not gated"},
    )
    min_win_rate_independent: float | None = field(
        default=None,  # not gated by default: a candidate as good as stable scores 0.5 ± noise
        metadata={"help": "lowest win rate under the independent judges; empty: not gated"},
    )

    def __post_init__(self) -> None:
        if self.min_reward_diff is not None and not math.isfinite(self.min_reward_diff):
            raise InvalidRequest(f"min_reward_diff must be a finite number, got {self.min_reward_diff}")
        if self.max_kl_to_stable is not None and not (
            math.isfinite(self.max_kl_to_stable) and self.max_kl_to_stable >= 0
        ):
            raise InvalidRequest(f"max_kl_to_stable must be >= 0 nats per token, got {self.max_kl_to_stable}")
        for name in ("min_win_rate_preference", "min_win_rate_independent"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidRequest(f"{name} is a share of clip pairs and must lie in [0, 1], got {value}")


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    """The bootstrap behind every confidence interval of the gate (prompts are resampled, with their clips).

    Attributes:
        bootstrap_resamples: Number of resamples.
        confidence_level: Two-sided coverage of each interval.
    """

    bootstrap_resamples: int = field(
        default=2000,  # percentile intervals at 95% settle within ~0.01 of their limit by 2000
        metadata={"help": "bootstrap resamples of the prompts"},
    )
    confidence_level: float = field(default=0.95, metadata={"help": "two-sided coverage of every interval"})

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 100:
            raise InvalidRequest(
                f"bootstrap_resamples must be >= 100 for a percentile interval to mean anything, "
                f"got {self.bootstrap_resamples}"
            )
        if not 0.0 < self.confidence_level < 1.0:
            raise InvalidRequest(f"confidence_level must lie strictly between 0 and 1, got {self.confidence_level}")


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Everything one gate run needs.

    Attributes:
        candidate_uri: The policy that would go to canary (a checkpoint folder, ``tiny://musicgen?seed=N``, ...).
        stable_uri: The policy serving now.
        rewards: The rewards both policies are scored with (unique names).
        prompts: The held-out prompts, or empty to read :attr:`prompts_file`.
        prompts_file: Path or fsspec URL of a file of held-out prompts, one per line (blank lines skipped).
        clips_per_prompt: Clips per prompt and policy; clip j of a prompt has the same seed for both policies.
        seed: Derives every clip's sampling seed and the bootstrap's resamples.
        preference_judge: The reward trained on listener feedback whose win rate is gated; None picks the
            first reward of kind ``preference`` or ``clap-preference``, if any.
        independent_judges: The rewards behind the independent win rate; empty means every reward except the
            preference judge and other rewards trained on listener feedback.
        batch_size: Clips generated, teacher-forced and scored together per policy.
        sampling: How both policies sample (the served settings, so the gate sees what listeners would hear).
        engine: Device and precision of both policies (the rewards run on the same device).
        thresholds: What the candidate must reach.
        bootstrap: The confidence intervals.
    """

    candidate_uri: str
    stable_uri: str
    rewards: tuple[GateReward, ...]
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    clips_per_prompt: int = 4  # averages sampling noise within a prompt without paying for more prompts
    seed: int = 0
    preference_judge: str | None = None
    independent_judges: tuple[str, ...] = ()
    batch_size: int = 8  # per policy; bounds the [2B, K, P, V] logits of the KL's teacher-forced passes
    sampling: SamplingParams = field(default_factory=SamplingParams)
    engine: EngineConfig = field(default_factory=EngineConfig)
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        # tuples, so that a caller's later change to its own list cannot change a frozen config
        for name in ("rewards", "prompts", "independent_judges"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.candidate_uri.strip() or not self.stable_uri.strip():
            raise InvalidRequest("the gate needs a candidate_uri and a stable_uri (model URIs of both policies)")
        if self.clips_per_prompt < 1 or self.batch_size < 1:
            raise InvalidRequest(
                f"clips_per_prompt and batch_size must be >= 1, got {self.clips_per_prompt} and {self.batch_size}"
            )
        if self.seed < 0:
            raise InvalidRequest(f"seed must be >= 0, got {self.seed}")
        self._check_prompts()
        self._check_rewards()

    def _check_prompts(self) -> None:
        if bool(self.prompts) == bool(self.prompts_file):
            raise InvalidRequest("give the gate's held-out prompts as a list or as prompts_file (one of them)")
        if any(not p.strip() for p in self.prompts):
            raise InvalidRequest("a held-out prompt is empty; every prompt must describe some music")
        if self.prompts and len(self.prompts) < MIN_PROMPTS:
            raise InvalidRequest(
                f"the gate needs at least {MIN_PROMPTS} held-out prompts (its intervals resample prompts), "
                f"got {len(self.prompts)}"
            )

    def _check_rewards(self) -> None:
        names = [r.name for r in self.rewards]
        if not names:
            raise InvalidRequest("the gate needs at least one reward, e.g. text-adherence=tiny://clap?seed=0")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"each reward may appear once in the gate, got {names}")
        if self.preference_judge is not None and self.preference_judge not in names:
            raise InvalidRequest(
                f"the preference judge {self.preference_judge!r} is not among the gate's rewards {names}; "
                f"add it with --reward {self.preference_judge}=URI or name one of them"
            )
        unknown = [n for n in self.independent_judges if n not in names]
        if unknown:
            raise InvalidRequest(f"the independent judges {unknown} are not among the gate's rewards {names}")
        judge = self.judge()
        if judge is not None and judge in self.independent_judges:
            raise InvalidRequest(f"{judge!r} is the preference judge, so it cannot also be an independent judge")
        if len(set(self.independent_judges)) != len(self.independent_judges):
            raise InvalidRequest(f"each independent judge may be named once, got {list(self.independent_judges)}")

    def reward_names(self) -> tuple[str, ...]:
        """The rewards' names, in the order given."""
        return tuple(r.name for r in self.rewards)

    def judge(self) -> str | None:
        """The preference judge: :attr:`preference_judge`, else the first listener-trained reward, else None."""
        if self.preference_judge is not None:
            return self.preference_judge
        return next((n for n in self.reward_names() if n in PREFERENCE_KINDS), None)

    def independents(self) -> tuple[str, ...]:
        """The independent judges: :attr:`independent_judges`, else every reward not trained on listeners."""
        if self.independent_judges:
            return self.independent_judges
        judge = self.judge()
        return tuple(n for n in self.reward_names() if n != judge and n not in PREFERENCE_KINDS)

    def min_diff(self, reward: str) -> float | None:
        """The gated lower bound of ``reward``'s mean paired difference (its own, else the common one)."""
        own = next(r.min_diff for r in self.rewards if r.name == reward)
        return own if own is not None else self.thresholds.min_reward_diff


_SCALAR_FLAGS = {  # GateConfig's own integer fields, each with its flag's help
    "clips_per_prompt": "clips per prompt and policy",
    "seed": "seed of the clips and of the bootstrap",
    "batch_size": "clips per policy per batch",
}


def add_gate_flags(parser: argparse.ArgumentParser) -> None:
    """Add the ``musicrl gate`` flags: the run's own and ``--out-url``, then those of the nested config dataclasses.

    Args:
        parser: The ``gate`` sub-parser.
    """
    parser.add_argument("--candidate-uri", required=True, help="the policy that would go to canary")
    parser.add_argument("--stable-uri", required=True, help="the policy serving now")
    parser.add_argument("--out-url", required=True, help="folder (path or fsspec URL) for gate_report.json and .md")
    parser.add_argument("--prompts-file", default=None, help="held-out prompts, one per line (path or fsspec URL)")
    parser.add_argument("--prompt", dest="prompts", action="append", default=[], help="a held-out prompt (repeat)")
    parser.add_argument(
        "--reward", dest="rewards", action="append", default=[], metavar="NAME=URI", help="a reward (repeat)"
    )
    parser.add_argument(
        "--min-diff", action="append", default=[], metavar="NAME=VALUE", help="one reward's own minimum difference"
    )
    parser.add_argument("--preference-judge", default=None, help="the reward trained on listener feedback")
    parser.add_argument(
        "--independent-judge", dest="independent_judges", action="append", default=[], help="an independent judge"
    )
    defaults = {f.name: f.default for f in dataclasses.fields(GateConfig)}  # one place for each default
    for name, help_text in _SCALAR_FLAGS.items():
        default = defaults[name]
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=default, help=f"{help_text} (default: {default})"
        )
    for cls in (SamplingParams, EngineConfig, GateThresholds, BootstrapConfig):
        add_config_flags(parser, cls)


def gate_config_from_args(args: argparse.Namespace) -> GateConfig:
    """Build the :class:`GateConfig` from flags parsed with :func:`add_gate_flags`.

    Raises:
        InvalidRequest: A malformed ``--reward`` or ``--min-diff``, or a failed config check.
    """
    rewards = [GateReward.parse(spec) for spec in args.rewards]
    own = _min_diffs(args.min_diff, [r.name for r in rewards])
    return GateConfig(
        candidate_uri=args.candidate_uri,
        stable_uri=args.stable_uri,
        rewards=tuple(GateReward(r.name, r.uri, own.get(r.name)) for r in rewards),
        prompts=tuple(args.prompts),
        prompts_file=args.prompts_file,
        clips_per_prompt=args.clips_per_prompt,
        seed=args.seed,
        preference_judge=args.preference_judge or None,
        independent_judges=tuple(args.independent_judges),
        batch_size=args.batch_size,
        sampling=config_from(SamplingParams, args=args),
        engine=config_from(EngineConfig, args=args),
        thresholds=config_from(GateThresholds, args=args),
        bootstrap=config_from(BootstrapConfig, args=args),
    )


def _min_diffs(specs: list[str], rewards: list[str]) -> dict[str, float]:
    parsed: dict[str, float] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            sep = ""
        if not sep:
            raise InvalidRequest(f"--min-diff takes NAME=NUMBER, e.g. text-adherence=-0.01; got {spec!r}")
        if name not in rewards:
            raise InvalidRequest(f"--min-diff names {name!r}, which is not among the gate's rewards {rewards}")
        parsed[name] = value
    return parsed
