"""One reward as a KServe model: load() builds it on the torch thread, predict() batches clips through it."""

import functools
import threading
from collections.abc import Callable
from typing import Any

from musicrl.config import BatchingConfig, RewardServiceConfig
from musicrl.errors import ModelNotReady
from musicrl.rewards.base import RewardModel
from musicrl.rewards.registry import load_reward
from musicrl.serving import metrics, reward_api
from musicrl.serving.batcher import MicroBatcher
from musicrl.serving.errors import served
from musicrl.serving.kserve_compat import Model
from musicrl.serving.torch_thread import torch_executor


class RewardServingModel(Model):
    """Serves one reward under its name (``text-adherence``, ``quality``, ``preference``)."""

    def __init__(self, name: str, build: Callable[[], RewardModel], batching: BatchingConfig, max_clips: int) -> None:
        super().__init__(name)
        self.build = build
        self.batching = batching
        self.max_clips = max_clips
        self.batcher: MicroBatcher[reward_api.RewardItem, float] | None = None
        self._load_once = threading.Lock()
        self.ready: bool = False

    def load(self) -> bool:
        # KServe's data plane calls load() again for a model that is not ready yet (while it loads): only the
        # first call builds the reward, which would otherwise be built twice, holding twice its memory
        if not self._load_once.acquire(blocking=False):
            return self.ready
        reward = torch_executor().submit(self.build).result()  # built where it will run
        self.batcher = MicroBatcher(lambda items: reward_api.score_items(reward, items), self.batching, self.name)
        self.ready = True
        return self.ready

    @served()
    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if self.batcher is None:
            raise ModelNotReady(f"model {self.name} is still loading")
        items = reward_api.parse_reward_call(payload, self.max_clips)
        scores = await self.batcher.submit(items)
        metrics.ITEMS.labels(model=self.name).inc(len(items))
        return reward_api.build_reward_response(payload, scores, self.name)

    def get_input_types(self) -> list[dict[str, Any]]:
        return reward_api.metadata_inputs()

    def get_output_types(self) -> list[dict[str, Any]]:
        return reward_api.metadata_outputs()

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.ready = False


def reward_models(config: RewardServiceConfig) -> list[RewardServingModel]:
    """One served model per reward the config names."""
    return [
        RewardServingModel(
            name,
            functools.partial(load_reward, name, uri, device=config.device),
            config.batching,
            config.max_clips_per_request,
        )
        for name, uri in config.models().items()
    ]
