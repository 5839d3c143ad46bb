"""The settings of ``musicrl toyworld train``, apart from the trainers so the CLI parser stays light."""

from dataclasses import dataclass

from musicrl.errors import InvalidRequest
from musicrl.toyworld.shipped import CHECKPOINTS_DIR


MODELS = ("musicgen", "clap", "quality")  # training order: the quality head reads the CLAP


@dataclass(frozen=True, slots=True)
class ToyWorldTrainConfig:
    """What ``musicrl toyworld train`` builds.

    Attributes:
        seed: Seeds every corpus, crop, dropout and initial weight.
        out_dir: Where the model folders and the manifest go (default: the package's own, which ``toy://`` reads).
        quick: A few steps of each model on a small corpus: for tests of the command, not for use.
        threads: Torch intra-op threads (the same count gives the same weights).
        models: Which models to train, comma-separated, in training order; the others keep their folders.
        keep_codec: Retrain the policy over the codec of the existing ``musicgen`` folder instead of training a
            codec first (the codec's metrics, history and plot carry over, and so do its commands).
    """

    seed: int = 0
    out_dir: str = str(CHECKPOINTS_DIR)
    quick: bool = False
    threads: int = 2
    models: str = ",".join(MODELS)
    keep_codec: bool = False

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise InvalidRequest(f"seed={self.seed} must be >= 0")
        if self.threads < 1:
            raise InvalidRequest(f"threads={self.threads} must be >= 1")
        unknown = sorted(set(self.chosen()) - set(MODELS))
        if unknown or not self.chosen():
            raise InvalidRequest(f"models={self.models!r} must name some of {', '.join(MODELS)}; unknown: {unknown}")
        if self.keep_codec and "musicgen" not in self.chosen():
            raise InvalidRequest("keep_codec keeps the codec of a policy being retrained: add musicgen to models")

    def chosen(self) -> list[str]:
        """The models to train, in training order."""
        named = {name.strip() for name in self.models.split(",") if name.strip()}
        return [name for name in MODELS if name in named] + sorted(named - set(MODELS))
