"""What ``musicrl toyworld judge``, ``sweep`` and ``adherence`` play.

A module of its own: the CLI's parser imports it, and not torch.
"""

from dataclasses import dataclass

from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest


_SERVED = SamplingParams()  # what the generator plays when a request names no setting


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """What to compare, and on what.

    Attributes:
        policy_uri: The finetuned policy.
        baseline_uri: What it was finetuned from.
        text_adherence_uri: The CLAP whose text adherence is reported.
        quality_uri: The quality head whose score is reported.
        prompts: Test-split captions to play (each policy plays each once).
        seed: The corpus seed of the captions and the first generation seed.
        temperature: Sampling temperature of both policies.
        guidance_scale: Classifier-free guidance of both policies.
    """

    policy_uri: str
    baseline_uri: str = "toy://musicgen"
    text_adherence_uri: str = "toy://clap"
    quality_uri: str = "toy://quality"
    prompts: int = 96
    seed: int = 0
    temperature: float = 1.0
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.prompts < 2:
            raise InvalidRequest(f"prompts={self.prompts}: a paired comparison needs at least 2")


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """What ``musicrl toyworld sweep`` plays: one policy at temperatures 0.5, 1, 1.5 and guidance 1, 3, 5.

    Attributes:
        policy_uri: The policy.
        prompts: Test-split captions, each played once per setting.
        seed: The corpus seed of the captions and the first generation seed.
    """

    policy_uri: str = "toy://musicgen"
    prompts: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise InvalidRequest(f"prompts={self.prompts}: the sweep needs at least one")


@dataclass(frozen=True, slots=True)
class AdherenceConfig:
    """What ``musicrl toyworld adherence`` plays: one policy on held-out captions at one sampling setting.

    Attributes:
        policy_uri: The policy.
        prompts: Test-split captions, each played once.
        seed: The corpus seed of the captions and the first generation seed.
        temperature: Sampling temperature.
        top_k: Tokens kept per codebook (0 keeps all).
        guidance_scale: Classifier-free guidance (1 turns it off).
    """

    policy_uri: str = "toy://musicgen"
    prompts: int = 120  # what `musicrl toyworld train` judges a policy on
    seed: int = 0
    temperature: float = _SERVED.temperature
    top_k: int = _SERVED.top_k
    guidance_scale: float = _SERVED.guidance_scale

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise InvalidRequest(f"prompts={self.prompts}: adherence needs at least one caption")
        self.sampling()  # refuses an impossible setting before any model loads

    def sampling(self) -> SamplingParams:
        """The sampling setting, for clips as long as the world's."""
        from musicrl.toyworld.world import CLIP_S  # NumPy, which the CLI's parser does not load

        return SamplingParams(
            duration_s=CLIP_S, temperature=self.temperature, top_k=self.top_k, guidance_scale=self.guidance_scale
        )
