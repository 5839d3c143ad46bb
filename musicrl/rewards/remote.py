"""A reward scored by the reward service over V2 (tritonclient), behind the same interface as a local one.

The RL trainer and the canary analysis can then switch between in-process models and the shared service
by configuration.
"""

from collections.abc import Sequence

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from musicrl.errors import InvalidRequest, UpstreamUnavailable
from musicrl.rewards.base import ClipBatch, ClipInput, finite_scores


class RemoteReward:
    """One model of the reward service.

    Args:
        url: ``host:port`` of the service's V2 REST endpoint.
        name: The model's name there (``text-adherence``, ``quality``, ``preference``).
        reads: What the model scores (sent as ``audio`` or as ``codes``).
        timeout_s: Network timeout of one request.
    """

    def __init__(self, url: str, name: str, reads: ClipInput, timeout_s: float = 300.0) -> None:
        self.url = url
        self.name = name
        self.reads = reads
        self.timeout_s = timeout_s

    def score(self, batch: ClipBatch) -> np.ndarray:
        """Scores float32 [B], computed by the service."""
        batch.require(self.reads, self.name)
        inputs = [_bytes_tensor("prompt", [p.encode() for p in batch.prompts])]
        if self.reads is ClipInput.AUDIO:
            assert batch.audio is not None and batch.sample_rate is not None  # checked by require()
            inputs += _audio_tensors(batch.audio, batch.sample_rate)
        else:
            assert batch.codes is not None
            inputs.append(_codes_tensor(batch.codes))
        client = httpclient.InferenceServerClient(self.url, network_timeout=self.timeout_s)
        try:
            result = client.infer(self.name, inputs, outputs=[httpclient.InferRequestedOutput("score")])
        except InferenceServerException as e:
            if e.status() == "400":
                raise InvalidRequest(f"the {self.name} reward service refused the clips: {e.message()}") from e
            raise UpstreamUnavailable(f"the {self.name} reward service at {self.url} failed: {e.message()}") from e
        except OSError as e:
            raise UpstreamUnavailable(f"the reward service at {self.url} is unreachable: {e}") from e
        finally:
            client.close()
        return finite_scores(result.as_numpy("score"), self.name)


def _bytes_tensor(name: str, values: list[bytes]) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_))
    return tensor


def _audio_tensors(audio: Sequence[np.ndarray], sample_rate: int) -> list[httpclient.InferInput]:
    """``audio`` FP32 [B, S] zero-padded, ``num_samples`` INT64 [B], ``sample_rate`` INT32 [1]."""
    lengths = np.array([len(a) for a in audio], dtype=np.int64)
    padded = np.zeros((len(audio), int(lengths.max())), dtype=np.float32)  # [B, S]
    for row, clip in enumerate(audio):
        padded[row, : len(clip)] = clip
    tensors = []
    for name, array, datatype in (
        ("audio", padded, "FP32"),
        ("num_samples", lengths, "INT64"),
        ("sample_rate", np.array([sample_rate], dtype=np.int32), "INT32"),
    ):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _codes_tensor(codes: Sequence[np.ndarray]) -> httpclient.InferInput:
    """``codes`` INT64 [B, K, T], padded with -1 (the generator's convention)."""
    frames = max(c.shape[1] for c in codes)
    padded = np.full((len(codes), codes[0].shape[0], frames), -1, dtype=np.int64)  # [B, K, T]
    for row, grid in enumerate(codes):
        padded[row, :, : grid.shape[1]] = grid
    tensor = httpclient.InferInput("codes", list(padded.shape), "INT64")
    tensor.set_data_from_numpy(padded)
    return tensor
