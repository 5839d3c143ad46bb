"""Load a CLAP text–audio model, its feature extractor and its tokenizer from any model URI.

CLAP scores text adherence (cosine of prompt and audio embeddings) and embeds audio for the quality
model. The same loader serves ``tiny://clap?seed=N`` (offline, for tests and the local run),
``hf://laion/larger_clap_music`` (production), a saved directory, or an fsspec URL.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerBase

from musicrl.errors import IncompatibleModel
from musicrl.models.checkpoint import CheckpointMetadata, read_metadata
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.tiny_clap import TinyClapSpec, build_tiny_clap
from musicrl.models.uri import ModelURI, Scheme


logger = logging.getLogger(__name__)

FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")  # FE alone, or a ClapProcessor
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # fast tokenizer, or RoBERTa's vocab.json + merges.txt


@dataclass(frozen=True, slots=True)
class ClapBundle:
    """A loaded CLAP: the model, its feature extractor and tokenizer, where it came from.

    Attributes:
        model: The CLAP model, in eval mode with gradients off.
        feature_extractor: Turns 48 kHz (``sample_rate``) waveforms into log-mel spectrograms.
        tokenizer: The text tower's tokenizer.
        uri: The URI it was loaded from.
        metadata: Its ``musicrl.json``, or None for a checkpoint that has none.
    """

    model: ClapModel
    feature_extractor: ClapFeatureExtractor
    tokenizer: PreTrainedTokenizerBase
    uri: ModelURI
    metadata: CheckpointMetadata | None

    @property
    def sample_rate(self) -> int:
        """Samples per second the audio tower expects (48 kHz for every laion CLAP)."""
        return int(self.feature_extractor.sampling_rate)

    @property
    def max_audio_s(self) -> float:
        """Longest audio the feature extractor takes whole, in seconds; longer audio is cropped at random."""
        return float(self.feature_extractor.nb_max_samples) / self.sample_rate

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device


def load_clap(uri: str | ModelURI, *, device: str = "cpu") -> ClapBundle:
    """Load a CLAP checkpoint by URI.

    Args:
        uri: ``tiny://clap?seed=N``, ``hf://org/name[@rev]``, a path, ``file://`` or an fsspec URL.
        device: Torch device to move the model to.

    Returns:
        The loaded bundle, frozen (eval mode, ``requires_grad`` off).

    Raises:
        InvalidRequest: Malformed URI or ``tiny://`` parameters.
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: The checkpoint is not a CLAP, or lacks its feature extractor or tokenizer files.
    """
    parsed = uri if isinstance(uri, ModelURI) else ModelURI.parse(uri)
    metadata: CheckpointMetadata | None = None
    if parsed.scheme is Scheme.TINY:
        if parsed.location != "clap":
            raise IncompatibleModel(f"{parsed} is not a CLAP; use tiny://clap?seed=N")
        model, feature_extractor, tokenizer = build_tiny_clap(TinyClapSpec.from_params(parsed.params))
    else:
        model, feature_extractor, tokenizer, metadata = _load_pretrained(resolve_local_dir(parsed))
    model = model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    logger.info("loaded CLAP %s (%.2fM parameters) on %s", parsed, _millions(model), device)
    return ClapBundle(
        model=model, feature_extractor=feature_extractor, tokenizer=tokenizer, uri=parsed, metadata=metadata
    )


def _load_pretrained(
    directory: Path,
) -> tuple[ClapModel, ClapFeatureExtractor, PreTrainedTokenizerBase, CheckpointMetadata | None]:
    # transformers builds a default-size model from any config.json, and an empty tokenizer or a default
    # feature extractor from a directory without their files, so all three are checked before loading.
    model_type = _model_type(directory)
    if model_type != "clap":
        raise IncompatibleModel(f"{directory} holds a {model_type!r} model, not a CLAP")
    for what, names in (("feature extractor", FEATURE_EXTRACTOR_FILES), ("tokenizer", TOKENIZER_FILES)):
        if not any((directory / name).exists() for name in names):
            raise IncompatibleModel(
                f"{directory} has no {what} files ({' or '.join(names)}); save the processor with the model"
            )
    try:
        model = ClapModel.from_pretrained(directory)
        feature_extractor = AutoFeatureExtractor.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as e:
        raise IncompatibleModel(f"{directory} does not hold a loadable CLAP checkpoint: {e}") from e
    if not isinstance(feature_extractor, ClapFeatureExtractor):
        raise IncompatibleModel(f"{directory} has a {type(feature_extractor).__name__}, not a ClapFeatureExtractor")
    return model, feature_extractor, tokenizer, read_metadata(directory)


def _model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise IncompatibleModel(f"{directory} has no readable config.json: {e}") from e


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
