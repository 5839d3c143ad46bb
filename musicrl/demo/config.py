"""What ``musicrl demo`` runs (a module of its own: the CLI's parser imports it, not torch or kfp)."""

from dataclasses import dataclass

from musicrl.errors import InvalidRequest
from musicrl.pipeline.params import RetrainingParams


PORTS = (
    "gateway_port",
    "generator_http_port",
    "generator_grpc_port",
    "nats_port",
    "recorder_metrics_port",
    "rollout_metrics_port",
)
UNCOUNTED_MARGIN = 0.9  # ties, and votes the controller does not count (per-listener cap), are a few percent
PIPELINE = RetrainingParams()  # the pipeline's defaults, which the demo's own start from
MIN_EXPECTED_RATINGS = 40  # the quality head's min_ratings is 20 training ratings; the snapshot holds out ~20%


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """One closed-loop demo: who listens, how much, and how the platform is set up to learn from them.

    Attributes:
        taste: The listeners' hidden taste, a name of :data:`musicrl.sim.tastes.TASTES`; ``random`` likes
            nothing systematically (the control).
        rounds: Times the loop runs: collect, retrain, canary; each round starts from the stable policy the
            last one left.
        comparisons: Stable-vs-stable comparisons the listeners judge per round (the training data).
        canary_comparisons: Most stable-vs-canary comparisons per round; the controller usually decides first.
        listener_temperature: The panel's Bradley–Terry temperature, in spreads of the taste within a prompt.
        inattentive_share: Share of the panel who vote without listening (they report no playback).
        rating_share: Share of heard clips a listener also rates 1–5 (the quality head's labels).
        concurrency: Listeners in flight at once; the generator batches what arrives together.
        policy_uri: The stable policy of round 1 (``toy://musicgen``; ``tiny://musicgen`` is the untrained
            fallback, whose sound no prompt changes).
        clap_uri: The CLAP of text adherence and of the quality head.
        clip_duration_s: Length of every comparison clip.
        rl_config_dir: Folder of the RL stage configs.
        rl_config_prefix: The U stage's config is ``<rl_config_dir>/<prefix>-u.yaml``.
        rl_steps: RL steps of the U stage.
        validation_fraction: Share of prompts whose preferences choose the preference model's epoch.
        test_fraction: Share of prompts its reported accuracy is measured on.
        gate_prompts: Held-out prompts of the offline gate (the first of the measured ones).
        gate_clips_per_prompt: Clips per prompt and policy in the offline gate.
        gate_min_reward_diff: Lowest accepted lower bound of (candidate − stable) per gate reward.
        gate_max_kl: Highest accepted KL of the candidate to the stable policy, nats per token.
        gate_min_win_rate: Lowest accepted win rate under the gate's rewards.
        min_votes: Votes before the controller may promote.
        max_votes: Votes after which an undecided rollout is rolled back.
        alpha: The controller's chance of promoting a canary listeners do not prefer.
        measure_prompts: Held-out prompts on which the stable policy's hidden-taste score is measured.
        measure_clips: Clips per measured prompt.
        seed: Seed of the prompts and of the listeners' draws.
        out_dir: Where the report, the plots and the platform's state go.
        first_port: The platform's ports are this one and the next ones (clear of ``musicrl up``'s).
    """

    taste: str = "brightness"
    rounds: int = 2  # the on-policy loop: round 2 retrains from what round 1 promoted (~5 min a round)
    comparisons: int = 400
    canary_comparisons: int = 300
    listener_temperature: float = 0.3
    inattentive_share: float = 0.05
    rating_share: float = 0.1
    concurrency: int = 4
    policy_uri: str = "toy://musicgen"
    clap_uri: str = "toy://clap"
    clip_duration_s: float = 2.0
    rl_config_dir: str = "configs/rl"
    rl_config_prefix: str = "demo"
    rl_steps: int = 30  # at the config's lr: +0.36 octave of brightness in round 1 of the default run
    validation_fraction: float = PIPELINE.validation_fraction  # a short demo (a hundred comparisons) wants more
    test_fraction: float = PIPELINE.test_fraction
    gate_prompts: int = 12
    gate_clips_per_prompt: int = 2
    # Brightness ignores the prompt, so finetuning toward it costs text adherence on prompts that ask for a
    # dark sound (measured: -0.06 [-0.15, +0.01], independent win rate 0.42 after 15 steps). The demo's gate
    # lets such a cost through to the listeners' canary; the pipeline's own defaults (-0.02, 0.5) do not.
    gate_min_reward_diff: float = -0.2
    gate_max_kl: float = 0.5
    gate_min_win_rate: float = 0.3
    min_votes: int = 30
    max_votes: int = 250
    alpha: float = 0.05
    measure_prompts: int = 24
    measure_clips: int = 2
    seed: int = 0
    out_dir: str = "out/demo"
    first_port: int = 18100

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise InvalidRequest(f"rounds must be at least 1, got {self.rounds}")
        if self.comparisons < 20:
            raise InvalidRequest(
                f"comparisons must be at least 20 (the preference model needs data), got {self.comparisons}"
            )
        if self.canary_comparisons < self.min_votes:
            raise InvalidRequest(
                f"canary_comparisons ({self.canary_comparisons}) must be at least min_votes ({self.min_votes}): "
                "no promotion could happen"
            )
        counted = int(self.canary_comparisons * (1 - self.inattentive_share) * UNCOUNTED_MARGIN)
        if self.max_votes > counted:
            raise InvalidRequest(
                f"max_votes ({self.max_votes}) must be at most {counted}: {self.canary_comparisons} canary "
                "comparisons leave about that many counted votes, and the controller must decide before the "
                "listeners stop"
            )
        if not 0 <= self.rating_share <= 1:
            raise InvalidRequest(f"rating_share is a probability and must be in [0, 1], got {self.rating_share}")
        expected_ratings = 2 * self.comparisons * self.rating_share * (1 - self.inattentive_share)
        if expected_ratings < MIN_EXPECTED_RATINGS:
            raise InvalidRequest(
                f"{self.comparisons} comparisons at rating_share {self.rating_share} give about "
                f"{expected_ratings:.0f} ratings; the quality head needs about {MIN_EXPECTED_RATINGS} (20 after the "
                "snapshot's split): raise rating_share or comparisons"
            )
        # the pipeline's own rule, here so a bad split fails before the listeners spend a round on it
        RetrainingParams(validation_fraction=self.validation_fraction, test_fraction=self.test_fraction).check()
        if self.concurrency < 1:
            raise InvalidRequest(f"concurrency must be at least 1, got {self.concurrency}")
        if not 0 < self.clip_duration_s <= 30:
            raise InvalidRequest(f"clip_duration_s must be in (0, 30] seconds, got {self.clip_duration_s}")
        if self.rl_steps < 1:
            raise InvalidRequest(f"rl_steps must be at least 1, got {self.rl_steps}")
        if self.measure_prompts < 2 or self.measure_clips < 1:
            raise InvalidRequest(
                f"measure_prompts must be >= 2 and measure_clips >= 1, got {self.measure_prompts} and "
                f"{self.measure_clips}"
            )
        if not 1024 <= self.first_port <= 65535 - 20:
            raise InvalidRequest(f"first_port must be between 1024 and 65515, got {self.first_port}")

    def port(self, name: str) -> int:
        """The port of ``name`` (one of :data:`PORTS`, or ``canary_first_port``)."""
        return self.first_port + (PORTS.index(name) if name in PORTS else len(PORTS))
