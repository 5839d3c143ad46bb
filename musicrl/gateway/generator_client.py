"""Call policy endpoints over the V2 protocol with tritonclient's asyncio HTTP client."""

import dataclasses
import logging
from dataclasses import dataclass

import aiohttp
import numpy as np
import tritonclient.http.aio as httpclient
from prometheus_client import Gauge
from tritonclient.utils import InferenceServerException

from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest, UpstreamUnavailable
from musicrl.logs import REQUEST_ID_HEADER, current_request_id
from musicrl.rollout.routing import PolicyEndpoint


logger = logging.getLogger(__name__)

OUTPUTS = ("audio", "codes", "num_frames", "num_samples", "sample_rate", "seed")
UPSTREAM_READY = Gauge(
    "musicrl_gateway_upstream_ready",
    "Whether the last request to a policy endpoint succeeded (1) or found it unavailable (0).",
    ["url", "version"],
)


@dataclass(frozen=True, slots=True)
class GeneratedAudio:
    """One clip as returned by a generator.

    Attributes:
        audio: float32 [S].
        codes: int64 [K, T].
        sample_rate: Samples per second.
        seed: The seed it was sampled with.
    """

    audio: np.ndarray
    codes: np.ndarray
    sample_rate: int
    seed: int

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


class GeneratorClient:
    """One connection pool per endpoint URL; clips come back as NumPy arrays."""

    def __init__(self) -> None:
        self._clients: dict[str, httpclient.InferenceServerClient] = {}

    def _client(self, url: str) -> httpclient.InferenceServerClient:
        if url not in self._clients:
            self._clients[url] = httpclient.InferenceServerClient(url, conn_timeout=300.0)
        return self._clients[url]

    async def generate(
        self, endpoint: PolicyEndpoint, prompts: list[str], seeds: list[int], params: SamplingParams
    ) -> list[GeneratedAudio]:
        """Generate one clip per (prompt, seed) in one request, with every sampling setting explicit.

        Raises:
            UpstreamUnavailable: The endpoint is unreachable or failed.
            InvalidRequest: The generator refused the request (400).
        """
        prompt = httpclient.InferInput("prompt", [len(prompts)], "BYTES")
        prompt.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
        seed = httpclient.InferInput("seed", [len(seeds)], "INT64")
        seed.set_data_from_numpy(np.array(seeds, dtype=np.int64))
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
        ready = UPSTREAM_READY.labels(url=endpoint.url, version=endpoint.version)
        # A failure's reply names no endpoint (the log does): a comparison whose canary alone is down would
        # otherwise tell the client that a canary runs, where, and under which model name.
        try:
            result = await self._client(endpoint.url).infer(
                endpoint.model_name,
                [prompt, seed],
                outputs=outputs,
                parameters=dataclasses.asdict(params),
                headers={REQUEST_ID_HEADER: current_request_id()} if current_request_id() else None,
            )
        except InferenceServerException as e:
            if e.status() == "400":
                ready.set(1)  # it answered: the request was at fault, not the server
                raise InvalidRequest(f"the generator refused the request: {e.message()}") from e
            ready.set(0)
            logger.warning("the generator at %s (%s) failed: %s", endpoint.url, endpoint.version, e.message())
            raise UpstreamUnavailable("a generator failed; retry later") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            ready.set(0)
            logger.warning("the generator at %s (%s) is unreachable: %s", endpoint.url, endpoint.version, e)
            raise UpstreamUnavailable("a generator is unreachable; retry later") from e
        ready.set(1)
        return _clips(result)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _clips(result: httpclient.InferResult) -> list[GeneratedAudio]:
    audio, codes = result.as_numpy("audio"), result.as_numpy("codes")  # [B, S], [B, K, T]
    frames, samples = result.as_numpy("num_frames"), result.as_numpy("num_samples")
    rates, seeds = result.as_numpy("sample_rate"), result.as_numpy("seed")
    return [
        GeneratedAudio(
            audio=audio[i, : samples[i]].astype(np.float32),
            codes=codes[i, :, : frames[i]].astype(np.int64),
            sample_rate=int(rates[i]),
            seed=int(seeds[i]),
        )
        for i in range(len(seeds))
    ]
