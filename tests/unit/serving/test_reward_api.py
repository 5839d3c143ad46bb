"""The reward service's V2 parsing: the generator's reply tensors are accepted as they are."""

import numpy as np
import pytest
import torch

from musicrl.config import GenerationLimits, SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.models.engine import GeneratedClip
from musicrl.serving.generation_api import build_generation_response, parse_generation_call
from musicrl.serving.kserve_compat import InferInput, InferRequest
from musicrl.serving.reward_api import parse_reward_call


RATE = 32_000  # the tiny MusicGen's EnCodec rate
LENGTHS = (16_000, 24_000, 8_000)  # three clips of different lengths, so the audio is zero-padded


def _tensor(name: str, array: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor


def _generator_outputs(rates: tuple[int, ...]) -> dict[str, InferInput]:
    """The generator's own reply for three clips (built by its response code), turned into request inputs."""
    prompts = [f"prompt {i}".encode() for i in range(len(rates))]
    request = InferRequest("generator", [_tensor("prompt", np.array(prompts, dtype=np.object_), "BYTES")])
    call = parse_generation_call(request, GenerationLimits(), SamplingParams())
    rng = np.random.default_rng(0)
    clips = [
        GeneratedClip(
            codes=torch.zeros(4, n // 640, dtype=torch.int64),  # [K, T]: the tiny model's hop is 640 samples
            audio=torch.from_numpy((0.1 * rng.standard_normal(n)).astype(np.float32)),  # [S]
            sample_rate=rate,
            seed=i,
        )
        for i, (n, rate) in enumerate(zip(LENGTHS, rates, strict=True))
    ]
    reply = build_generation_response(
        request, call, clips, model_name="generator", clip_store=None, max_message_bytes=2**30
    )
    tensors = {o.name: _tensor(o.name, o.as_numpy(), o.datatype) for o in reply.outputs}
    tensors["prompt"] = request.inputs[0]
    return tensors


def _reward_request(tensors: dict[str, InferInput], names: tuple[str, ...]) -> InferRequest:
    return InferRequest("quality", [tensors[n] for n in names])


def test_the_generators_audio_num_samples_and_sample_rate_pass_unchanged():
    tensors = _generator_outputs((RATE, RATE, RATE))
    assert (tensors["sample_rate"].datatype, tensors["sample_rate"].shape) == ("INT32", [3])  # [B], not [1]
    items = parse_reward_call(_reward_request(tensors, ("prompt", "audio", "num_samples", "sample_rate")), 8)
    assert [i.sample_rate for i in items] == [RATE] * 3
    assert [len(i.audio) for i in items] == list(LENGTHS)  # the padding is cut by num_samples
    padded = tensors["audio"].as_numpy()  # [B, S]
    for row, item in enumerate(items):
        np.testing.assert_array_equal(item.audio, padded[row, : LENGTHS[row]])


def test_one_sample_rate_for_the_whole_request_still_works():
    tensors = _generator_outputs((RATE, RATE, RATE))
    tensors["sample_rate"] = _tensor("sample_rate", np.array([RATE], dtype=np.int32), "INT32")  # [1]
    items = parse_reward_call(_reward_request(tensors, ("prompt", "audio", "num_samples", "sample_rate")), 8)
    assert [i.sample_rate for i in items] == [RATE] * 3


def test_differing_sample_rates_are_refused_naming_the_rates():
    tensors = _generator_outputs((RATE, 16_000, RATE))
    with pytest.raises(InvalidRequest, match="same sample_rate, got 16000 Hz, 32000 Hz"):
        parse_reward_call(_reward_request(tensors, ("prompt", "audio", "num_samples", "sample_rate")), 8)


def test_a_sample_rate_of_another_length_is_refused():
    tensors = _generator_outputs((RATE, RATE, RATE))
    tensors["sample_rate"] = _tensor("sample_rate", np.array([RATE, RATE], dtype=np.int32), "INT32")  # [2] for B=3
    with pytest.raises(InvalidRequest, match=r"'sample_rate' must have shape \[3\]"):
        parse_reward_call(_reward_request(tensors, ("prompt", "audio", "num_samples", "sample_rate")), 8)
