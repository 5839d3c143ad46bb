"""The generator as a KServe model: load() builds the engine, predict() batches requests through it."""

import functools
import threading
from typing import Any

from musicrl.config import GeneratorServiceConfig
from musicrl.data.clips import ClipStore
from musicrl.errors import ModelNotReady
from musicrl.models.engine import GeneratedClip, GenerationEngine, GenerationRequest, warm_up
from musicrl.serving import generation_api, metrics
from musicrl.serving.batcher import MicroBatcher
from musicrl.serving.continuous import ContinuousBatcher
from musicrl.serving.errors import served
from musicrl.serving.kserve_compat import Model
from musicrl.serving.torch_thread import torch_executor


class GeneratorModel(Model):
    """Serves one MusicGen policy under ``config.model_name``."""

    def __init__(self, config: GeneratorServiceConfig) -> None:
        super().__init__(config.model_name)
        self.config = config
        self.clip_store = ClipStore(config.clip_store_url) if config.clip_store_url else None
        self.batcher: ContinuousBatcher | MicroBatcher[GenerationRequest, GeneratedClip] | None = None
        self._load_once = threading.Lock()
        self._draining = False
        self.ready: bool = False

    def load(self) -> bool:
        # KServe's data plane calls load() again for a model that is not ready (while it loads, or drains):
        # only the first call loads
        if not self._load_once.acquire(blocking=False):
            return self.ready
        # built on the torch thread, where the batches will run too
        build = functools.partial(GenerationEngine.from_uri, self.config.model_uri, self.config.engine)
        engine = torch_executor().submit(build).result()
        torch_executor().submit(warm_up, engine, self.config.warmup_duration_s).result()  # before ready
        if self.config.continuous_batching:
            self.batcher = ContinuousBatcher(engine, self.config.batching, self.name)
        else:
            self.batcher = MicroBatcher(engine.generate_batch, self.config.batching, self.name)
        self.ready = True
        return self.ready

    async def healthy(self) -> bool:
        return self.ready and not self._draining  # readiness turns false on SIGTERM, so traffic moves away

    def drain(self) -> None:
        """Refuse new requests (503, retry elsewhere); accepted ones still finish."""
        self._draining = True
        if isinstance(self.batcher, ContinuousBatcher):
            self.batcher.drain()

    @served()
    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if self.batcher is None:
            raise ModelNotReady(f"model {self.name} is still loading")
        if self._draining:
            raise ModelNotReady(f"model {self.name} is shutting down; retry on another replica")
        call = generation_api.parse_generation_call(payload, self.config.limits, self.config.defaults)
        clips = await self.batcher.submit(call.requests)
        metrics.ITEMS.labels(model=self.name).inc(len(clips))
        metrics.AUDIO_SECONDS.labels(model=self.name).inc(sum(c.duration_s for c in clips))
        return generation_api.build_generation_response(
            payload,
            call,
            clips,
            model_name=self.name,
            clip_store=self.clip_store,
            max_message_bytes=self.config.server.grpc_max_message_bytes,
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        return generation_api.metadata_inputs()

    def get_output_types(self) -> list[dict[str, Any]]:
        return generation_api.metadata_outputs()

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.ready = False
