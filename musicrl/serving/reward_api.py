"""The reward service's V2 contract: prompts plus audio or codes in, ``score`` FP32 [B] out.

Inputs: ``prompt`` BYTES [B]; and ``audio`` FP32 [B, S] (zero-padded; ``num_samples`` INT64 [B] gives each
clip's length) with ``sample_rate`` (an integer tensor of shape [1], or [B] whose values all agree, or a
request parameter), or ``codes`` INT64 [B, K, T] (padded with -1). The generator's outputs (``sample_rate``
INT32 [B] among them) can be passed on unchanged.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicrl.errors import InvalidRequest
from musicrl.rewards.base import ClipBatch, RewardModel
from musicrl.serving import v2
from musicrl.serving.kserve_compat import InferInput, InferRequest, InferResponse


INPUTS = ("prompt", "audio", "num_samples", "sample_rate", "codes")
PARAMETERS = ("sample_rate",)
OUTPUTS = ("score",)
MIN_SAMPLE_RATE = 8_000  # below telephone quality no music reward means anything
MAX_SAMPLE_RATE = 192_000
AUDIO_TYPES = ("FP16", "FP32", "FP64")
CODE_TYPES = ("INT16", "INT32", "INT64")


@dataclass(frozen=True, slots=True)
class RewardItem:
    """One clip of a request: what the batcher queues."""

    prompt: str
    audio: np.ndarray | None = None  # float32 [S]
    sample_rate: int | None = None
    codes: np.ndarray | None = None  # int64 [K, T]


def metadata_inputs() -> list[dict[str, Any]]:
    """Input tensor metadata for the V2 model metadata endpoint."""
    return [
        {"name": "prompt", "datatype": "BYTES", "shape": [-1]},
        {"name": "audio", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "num_samples", "datatype": "INT64", "shape": [-1]},
        {"name": "sample_rate", "datatype": "INT32", "shape": [-1]},  # [1] or [B], as the generator returns it
        {"name": "codes", "datatype": "INT64", "shape": [-1, -1, -1]},
    ]


def metadata_outputs() -> list[dict[str, Any]]:
    """Output tensor metadata for the V2 model metadata endpoint."""
    return [{"name": "score", "datatype": "FP32", "shape": [-1]}]


def parse_reward_call(payload: InferRequest, max_clips: int) -> list[RewardItem]:
    """Validate a V2 request into one item per clip.

    Args:
        payload: The V2 request.
        max_clips: The most clips one request may carry.

    Returns:
        One item per prompt, in request order.

    Raises:
        InvalidRequest: With a sentence naming the problem.
    """
    parameters = v2.request_parameters(payload, PARAMETERS)
    tensors = v2.inputs_by_name(payload, INPUTS, required=("prompt",))
    prompts = v2.utf8_strings(tensors["prompt"])
    if not prompts or len(prompts) > max_clips:
        raise InvalidRequest(f"send between 1 and {max_clips} clips per request, got {len(prompts)}")
    if "audio" not in tensors and "codes" not in tensors:
        raise InvalidRequest("send 'audio' (FP32 [B, S]) with its 'sample_rate', or 'codes' (INT64 [B, K, T])")
    audio = _audio(tensors, parameters, len(prompts)) if "audio" in tensors else None
    sample_rate = _sample_rate(tensors, parameters, len(prompts)) if audio is not None else None
    codes = _codes(tensors["codes"], len(prompts)) if "codes" in tensors else None
    ClipBatch(prompts, audio, sample_rate, codes)  # shapes, NaN, sample rate: refused before queueing
    return [
        RewardItem(
            prompt=prompt,
            audio=audio[i] if audio is not None else None,
            sample_rate=sample_rate,
            codes=codes[i] if codes is not None else None,
        )
        for i, prompt in enumerate(prompts)
    ]


def _audio(tensors: dict[str, InferInput], parameters: dict[str, Any], rows: int) -> list[np.ndarray]:
    tensor = tensors["audio"]
    if tensor.datatype not in AUDIO_TYPES:
        raise InvalidRequest(f"input 'audio' must be one of {AUDIO_TYPES}, got {tensor.datatype}")
    array = v2.as_numpy(tensor)
    if array.ndim != 2 or array.shape[0] != rows:
        raise InvalidRequest(f"input 'audio' must have shape [{rows}, S], got {list(array.shape)}")
    lengths = [array.shape[1]] * rows
    if "num_samples" in tensors:
        lengths = v2.per_row_numbers(tensors["num_samples"], rows, int)
        if any(not 0 < n <= array.shape[1] for n in lengths):
            raise InvalidRequest(f"num_samples must lie in [1, {array.shape[1]}], got {lengths}")
    return [array[i, : lengths[i]].astype(np.float32) for i in range(rows)]


def _sample_rate(tensors: dict[str, InferInput], parameters: dict[str, Any], rows: int) -> int:
    if "sample_rate" in tensors:
        # [1] for the whole request, or [B] as the generator returns it; one model call takes one rate
        rates = sorted(set(v2.per_row_numbers(tensors["sample_rate"], rows, int)))
        if len(rates) != 1:
            raise InvalidRequest(
                f"every clip of a request must have the same sample_rate, got {', '.join(f'{r} Hz' for r in rates)}; "
                "send clips of different rates in separate requests"
            )
        (rate,) = rates
    elif "sample_rate" in parameters:
        rate = parameters["sample_rate"]
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if not isinstance(rate, int) or isinstance(rate, bool):
            raise InvalidRequest(f"parameter 'sample_rate' must be an integer, got {rate!r}")
    else:
        raise InvalidRequest("audio needs its 'sample_rate' (an INT32 [1] or [B] input, or a request parameter)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidRequest(f"sample_rate {rate} Hz is not supported; use {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    return int(rate)


def _codes(tensor: InferInput, rows: int) -> list[np.ndarray]:
    if tensor.datatype not in CODE_TYPES:
        raise InvalidRequest(f"input 'codes' must be one of {CODE_TYPES}, got {tensor.datatype}")
    array = v2.as_numpy(tensor).astype(np.int64)
    if array.ndim != 3 or array.shape[0] != rows:
        raise InvalidRequest(f"input 'codes' must have shape [{rows}, K, T], got {list(array.shape)}")
    grids = []
    for row in range(rows):
        grid = array[row]  # [K, T]
        valid = ~(grid == -1).all(axis=0)  # frames that are not padding
        frames = int(np.nonzero(valid)[0].max()) + 1 if valid.any() else 0
        if frames == 0:
            raise InvalidRequest(f"codes[{row}] holds only padding (-1)")
        grids.append(grid[:, :frames])
    return grids


def score_items(reward: RewardModel, items: Sequence[RewardItem]) -> list[float | InvalidRequest]:
    """Score queued items with ``reward``, one model call per kind of input; results in item order.

    Items come from several requests. If the model refuses a group (say, codes outside its vocabulary),
    the group's items are scored one by one, so that only the offending request gets the error.
    """
    results: list[float | InvalidRequest] = [0.0] * len(items)
    groups: dict[tuple[int | None, bool, bool], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((item.sample_rate, item.audio is not None, item.codes is not None), []).append(index)
    for indices in groups.values():
        try:
            scores = reward.score(_batch([items[i] for i in indices]))
        except InvalidRequest:
            for index in indices:
                try:
                    results[index] = float(reward.score(_batch([items[index]]))[0])
                except InvalidRequest as e:
                    results[index] = e
            continue
        for index, score in zip(indices, scores, strict=True):
            results[index] = float(score)
    return results


def _batch(items: Sequence[RewardItem]) -> ClipBatch:
    first = items[0]
    return ClipBatch(
        prompts=[i.prompt for i in items],
        audio=[i.audio for i in items if i.audio is not None] if first.audio is not None else None,
        sample_rate=first.sample_rate,
        codes=[i.codes for i in items if i.codes is not None] if first.codes is not None else None,
    )


def build_reward_response(payload: InferRequest, scores: Sequence[float], model_name: str) -> InferResponse:
    """The V2 reply: ``score`` FP32 [B]."""
    binary = payload.use_binary_outputs
    output = v2.output_tensor("score", np.asarray(scores, dtype=np.float32), "FP32", binary)
    return InferResponse(
        response_id=payload.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=[output],
        use_binary_outputs=binary,
        requested_outputs=payload.request_outputs,
    )
