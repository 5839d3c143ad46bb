"""The generator's V2 contract (DESIGN.md §4): request tensors in, clips out.

Inputs: ``prompt`` BYTES [B]; optional per-row ``duration_s``, ``temperature``, ``top_k``,
``guidance_scale``, ``seed`` tensors of shape [B]. The same names are accepted as request parameters
(one value for every row; a request-level ``seed`` s gives row i the seed s + i), plus ``audio_format``:
``pcm`` (FP32 [B, S], zero-padded), ``wav`` (BYTES [B]) or ``uri`` (BYTES [B] clip-store URIs).

Outputs: ``audio``, ``codes`` INT64 [B, K, T] (padded with -1), ``sample_rate`` INT32 [B], ``seed``
INT64 [B], ``num_frames`` INT64 [B], ``num_samples`` INT64 [B], and ``audio_uri`` in ``uri`` mode.
A gRPC reply that would exceed the message cap switches to ``uri`` mode when a clip store is set.
"""

import dataclasses
import enum
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicrl.config import GenerationLimits, SamplingParams
from musicrl.data.clips import ClipStore
from musicrl.errors import InvalidRequest
from musicrl.models.audio import encode_wav
from musicrl.models.engine import GeneratedClip, GenerationRequest
from musicrl.serving import v2
from musicrl.serving.kserve_compat import InferOutput, InferRequest, InferResponse


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
INPUTS = ("prompt", *SAMPLING_FIELDS, "seed")
PARAMETERS = (*SAMPLING_FIELDS, "seed", "audio_format")
OUTPUTS = ("audio", "codes", "sample_rate", "seed", "num_frames", "num_samples", "audio_uri")
MAX_SEED = 2**63 - 1  # seeds travel as INT64
_FIELD_TYPES = {"duration_s": float, "temperature": float, "top_k": int, "guidance_scale": float, "seed": int}


class AudioFormat(enum.StrEnum):
    """How the reply carries the audio."""

    PCM = "pcm"  # FP32 [B, S]
    WAV = "wav"  # BYTES [B], 16-bit PCM WAV files
    URI = "uri"  # BYTES [B], URIs of WAV files in the clip store


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """One parsed V2 generation request.

    Attributes:
        requests: One engine request per prompt.
        audio_format: How to return the audio.
        outputs: The output tensors to return, in order.
    """

    requests: list[GenerationRequest]
    audio_format: AudioFormat
    outputs: tuple[str, ...]


def metadata_inputs() -> list[dict[str, Any]]:
    """Input tensor metadata for the V2 model metadata endpoint."""
    per_row = [{"name": n, "datatype": "FP32", "shape": [-1]} for n in SAMPLING_FIELDS]
    for entry in per_row:
        if entry["name"] == "top_k":
            entry["datatype"] = "INT32"
    return [
        {"name": "prompt", "datatype": "BYTES", "shape": [-1]},
        *per_row,
        {"name": "seed", "datatype": "INT64", "shape": [-1]},
    ]


def metadata_outputs() -> list[dict[str, Any]]:
    """Output tensor metadata for the V2 model metadata endpoint."""
    return [
        {"name": "audio", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "codes", "datatype": "INT64", "shape": [-1, -1, -1]},
        {"name": "sample_rate", "datatype": "INT32", "shape": [-1]},
        {"name": "seed", "datatype": "INT64", "shape": [-1]},
        {"name": "num_frames", "datatype": "INT64", "shape": [-1]},
        {"name": "num_samples", "datatype": "INT64", "shape": [-1]},
        {"name": "audio_uri", "datatype": "BYTES", "shape": [-1]},
    ]


def parse_generation_call(payload: InferRequest, limits: GenerationLimits, defaults: SamplingParams) -> GenerationCall:
    """Validate a V2 request and turn it into engine requests.

    Args:
        payload: The V2 request.
        limits: Prompt length, duration and batch limits.
        defaults: Sampling settings for whatever the request leaves out.

    Returns:
        The parsed call.

    Raises:
        InvalidRequest: With a sentence naming the problem.
    """
    parameters = v2.request_parameters(payload, PARAMETERS)
    tensors = v2.inputs_by_name(payload, INPUTS, required=("prompt",))
    both = sorted(set(parameters) & set(tensors))
    if both:
        raise InvalidRequest(f"{both} given both as parameter and as input tensor; give each once")
    prompts = _checked_prompts(v2.utf8_strings(tensors["prompt"]), limits)
    rows: dict[str, list[Any]] = {}
    for name in (*SAMPLING_FIELDS, "seed"):
        if name in tensors:
            rows[name] = v2.per_row_numbers(tensors[name], len(prompts), _FIELD_TYPES[name])
        elif name in parameters:
            rows[name] = [_typed_parameter(name, parameters[name])] * len(prompts)
    seeds = _seeds(rows.pop("seed", None), "seed" in parameters, len(prompts))
    requests = []
    for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        overrides = {name: values[index] for name, values in rows.items()}
        params = dataclasses.replace(defaults, **overrides)
        if params.duration_s > limits.max_duration_s:
            raise InvalidRequest(f"duration_s {params.duration_s} is above the maximum of {limits.max_duration_s} s")
        requests.append(GenerationRequest(prompt=prompt, params=params, seed=seed))
    audio_format = _audio_format(parameters)
    if audio_format is AudioFormat.WAV and not _binary_audio(payload):
        raise InvalidRequest(
            "audio_format 'wav' returns file bytes, which a JSON reply cannot carry: request binary outputs "
            "(parameter binary_data_output: true), or use gRPC, or audio_format 'pcm'"
        )
    return GenerationCall(requests, audio_format, _requested_outputs(payload))


def _binary_audio(payload: InferRequest) -> bool:
    """Whether the reply's ``audio`` travels as raw bytes (always over gRPC; opt-in over REST)."""
    if payload.from_grpc:
        return True
    for output in payload.request_outputs or ():
        if output.name == "audio":
            return bool(output.binary_data)
    return payload.use_binary_outputs


def _checked_prompts(prompts: list[str], limits: GenerationLimits) -> list[str]:
    if not prompts:
        raise InvalidRequest("input 'prompt' holds no prompts")
    if len(prompts) > limits.max_prompts_per_request:
        raise InvalidRequest(f"{len(prompts)} prompts in one request; the maximum is {limits.max_prompts_per_request}")
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise InvalidRequest(f"prompt[{index}] is empty")
        if len(prompt) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"prompt[{index}] has {len(prompt)} characters; the maximum is {limits.max_prompt_chars}"
            )
    return prompts


def _typed_parameter(name: str, value: Any) -> Any:
    """A numeric parameter; strings are parsed too, since V2 gRPC parameters cannot carry doubles."""
    kind = _FIELD_TYPES[name]
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError as e:
            raise InvalidRequest(f"parameter {name!r} must be {expected}, got {value!r}") from e
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"parameter {name!r} must be {expected}, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise InvalidRequest(f"parameter {name!r} must be {expected}, got {value!r}")
    return kind(value)


def _seeds(given: list[int] | None, from_parameter: bool, rows: int) -> list[int]:
    if given is None:
        return [secrets.randbelow(MAX_SEED) for _ in range(rows)]
    if from_parameter:
        given = [given[0] + i for i in range(rows)]  # one request seed → distinct, reproducible row seeds
    for seed in given:
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    return given


def _audio_format(parameters: dict[str, Any]) -> AudioFormat:
    raw = parameters.get("audio_format", AudioFormat.PCM.value)
    try:
        return AudioFormat(raw)
    except ValueError as e:
        raise InvalidRequest(f"audio_format must be one of {[f.value for f in AudioFormat]}, got {raw!r}") from e


def _requested_outputs(payload: InferRequest) -> tuple[str, ...]:
    requested = tuple(o.name for o in payload.request_outputs or ())
    unknown = sorted(set(requested) - set(OUTPUTS))
    if unknown:
        raise InvalidRequest(f"unknown requested output(s) {unknown}; this model returns {list(OUTPUTS)}")
    return requested


def build_generation_response(
    payload: InferRequest,
    call: GenerationCall,
    clips: Sequence[GeneratedClip],
    *,
    model_name: str,
    clip_store: ClipStore | None,
    max_message_bytes: int,
) -> InferResponse:
    """Assemble the V2 reply for ``clips``.

    Raises:
        InvalidRequest: ``uri`` mode without a clip store, or a gRPC reply over the cap with no store to fall
            back to.
    """
    audio_format = call.audio_format
    if (
        payload.from_grpc
        and audio_format is not AudioFormat.URI
        and _reply_bytes(clips, audio_format) > max_message_bytes
    ):
        if clip_store is None:
            raise InvalidRequest(
                f"the reply would be {_reply_bytes(clips, audio_format) / 2**20:.1f} MiB, above the gRPC message cap "
                f"of {max_message_bytes / 2**20:.1f} MiB; ask for fewer or shorter clips, or use REST"
            )
        audio_format = AudioFormat.URI
    arrays = reply_arrays(call, clips, audio_format, clip_store)
    binary = payload.use_binary_outputs
    outputs: list[InferOutput] = [v2.output_tensor(n, a, datatype, binary) for n, (a, datatype) in arrays.items()]
    return InferResponse(
        response_id=payload.id or str(uuid.uuid4()),  # tritonclient fails on a null id
        model_name=model_name,
        infer_outputs=outputs,
        use_binary_outputs=binary,
        requested_outputs=payload.request_outputs,
    )


def reply_arrays(
    call: GenerationCall, clips: Sequence[GeneratedClip], audio_format: AudioFormat, clip_store: ClipStore | None
) -> dict[str, tuple[np.ndarray, str]]:
    """The reply's outputs, name → (array, V2 datatype), in reply order: those asked for, else all produced.

    Raises:
        InvalidRequest: ``uri`` mode without a clip store, or an output the audio format does not produce.
    """
    if audio_format is AudioFormat.URI and clip_store is None:
        raise InvalidRequest("audio_format 'uri' needs a clip store, and this server has none configured")
    tensors = _output_arrays(clips, audio_format, clip_store)
    names = call.outputs or tuple(n for n in OUTPUTS if n in tensors)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InvalidRequest(f"output(s) {missing} are not produced with audio_format {audio_format.value!r}")
    return {n: tensors[n] for n in names}


def _reply_bytes(clips: Sequence[GeneratedClip], audio_format: AudioFormat) -> int:
    samples = max(int(c.audio.shape[-1]) for c in clips)
    codes = sum(int(c.codes.numel()) * 8 for c in clips)
    bytes_per_sample = 2 if audio_format is AudioFormat.WAV else 4
    return len(clips) * samples * bytes_per_sample + codes


def _output_arrays(
    clips: Sequence[GeneratedClip], audio_format: AudioFormat, clip_store: ClipStore | None
) -> dict[str, tuple[np.ndarray, str]]:
    frames = np.array([c.codes.shape[-1] for c in clips], dtype=np.int64)
    samples = np.array([c.audio.shape[-1] for c in clips], dtype=np.int64)
    codes = np.full((len(clips), clips[0].codes.shape[0], int(frames.max())), -1, dtype=np.int64)  # [B, K, T]
    for row, clip in enumerate(clips):
        codes[row, :, : frames[row]] = clip.codes.numpy()
    arrays: dict[str, tuple[np.ndarray, str]] = {
        "codes": (codes, "INT64"),
        "sample_rate": (np.array([c.sample_rate for c in clips], dtype=np.int32), "INT32"),
        "seed": (np.array([c.seed for c in clips], dtype=np.int64), "INT64"),
        "num_frames": (frames, "INT64"),
        "num_samples": (samples, "INT64"),
    }
    if audio_format is AudioFormat.PCM:
        audio = np.zeros((len(clips), int(samples.max())), dtype=np.float32)  # [B, S]
        for row, clip in enumerate(clips):
            audio[row, : samples[row]] = clip.audio.numpy()
        arrays["audio"] = (audio, "FP32")
    elif audio_format is AudioFormat.WAV:
        wavs = [encode_wav(c.audio.numpy(), c.sample_rate) for c in clips]
        arrays["audio"] = (np.array(wavs, dtype=np.object_), "BYTES")
    else:
        assert clip_store is not None  # checked by the caller
        uris = [clip_store.put_wav(uuid.uuid4().hex, encode_wav(c.audio.numpy(), c.sample_rate)) for c in clips]
        arrays["audio_uri"] = (np.array([u.encode() for u in uris], dtype=np.object_), "BYTES")
    return arrays
