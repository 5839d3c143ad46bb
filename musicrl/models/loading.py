"""Load a MusicGen policy and its tokenizer from any model URI."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, MusicgenForConditionalGeneration, PreTrainedTokenizerBase

from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.checkpoint import CheckpointMetadata, read_metadata
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.tiny import TinyMusicgenSpec, build_tiny_musicgen
from musicrl.models.uri import ModelURI, Scheme


logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class MusicgenBundle:
    """A loaded policy: the model, its tokenizer, where it came from.

    Attributes:
        model: The composite MusicGen (text encoder, EnCodec, decoder), in eval mode.
        tokenizer: The text tokenizer of its text encoder.
        uri: The URI it was loaded from.
        metadata: Its ``musicrl.json``, or None for a checkpoint that has none.
    """

    model: MusicgenForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    uri: ModelURI
    metadata: CheckpointMetadata | None


def load_musicgen(uri: str | ModelURI, *, device: str = "cpu", dtype: str = "float32") -> MusicgenBundle:
    """Load a MusicGen checkpoint by URI.

    Args:
        uri: ``tiny://musicgen?seed=N``, ``hf://org/name[@rev]``, a path, ``file://`` or an fsspec URL.
        device: Torch device to move the model to.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        The loaded bundle.

    Raises:
        InvalidRequest: Malformed URI or unknown dtype.
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: The checkpoint is not a mono MusicGen.
    """
    parsed = uri if isinstance(uri, ModelURI) else ModelURI.parse(uri)
    if dtype not in DTYPES:
        raise InvalidRequest(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if parsed.scheme is Scheme.TINY:
        if parsed.location != "musicgen":
            raise IncompatibleModel(f"{parsed} is not a MusicGen; use tiny://musicgen?seed=N")
        model, tokenizer = build_tiny_musicgen(TinyMusicgenSpec.from_params(parsed.params))
        metadata = None
    else:
        model, tokenizer, metadata = _load_pretrained(resolve_local_dir(parsed))
    _check_supported(model, parsed)
    model = model.to(device=torch.device(device)).eval()
    for name, part in model.named_children():
        # EnCodec stays float32 whatever the serving dtype: it runs once per clip, not once per step, so it
        # costs little, and its convolutions and LSTM lose audible detail in half precision
        if name != "audio_encoder":
            part.to(DTYPES[dtype])
    model.requires_grad_(False)
    logger.info("loaded %s (%.1fM parameters) on %s/%s", parsed, _millions(model), device, dtype)
    return MusicgenBundle(model=model, tokenizer=tokenizer, uri=parsed, metadata=metadata)


def _load_pretrained(
    directory: Path,
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerBase, CheckpointMetadata | None]:
    # transformers builds a default-size MusicGen from any config.json, and an empty tokenizer from a
    # directory without tokenizer files, so both are checked before loading rather than after.
    model_type = _model_type(directory)
    if model_type != "musicgen":
        raise IncompatibleModel(f"{directory} holds a {model_type!r} model, not a MusicGen")
    if not any((directory / name).exists() for name in TOKENIZER_FILES):
        raise IncompatibleModel(
            f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer with the model"
        )
    try:
        model = MusicgenForConditionalGeneration.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as e:
        raise IncompatibleModel(f"{directory} does not hold a loadable MusicGen checkpoint: {e}") from e
    return model, tokenizer, read_metadata(directory)


def _model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise IncompatibleModel(f"{directory} has no readable config.json: {e}") from e


def _check_supported(model: MusicgenForConditionalGeneration, uri: ModelURI) -> None:
    if not isinstance(model, MusicgenForConditionalGeneration):
        raise IncompatibleModel(f"{uri} is a {type(model).__name__}, not a MusicGen")
    if model.config.decoder.audio_channels != 1:
        raise IncompatibleModel(f"{uri} is a stereo MusicGen; only mono checkpoints are served")


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
