"""The Triton Python backend's models: the V2 contract of the KServe servers, on Triton's requests.

Each exported ``model.py`` imports one class from here, and the backend's stub process runs it. A Triton
request is turned into the KServe request type the contract code reads (``generation_api``,
``reward_api``), so both runtimes validate, parse and reply with the same functions, and the same bad input
gets the same sentence: Triton answers it with HTTP 400 and gRPC INVALID_ARGUMENT.

One difference is the runtime's, not ours: Triton types each output once in ``config.pbtxt``, so the
generator's ``audio`` is FP32 and the ``wav`` audio format (BYTES audio) is refused with a sentence;
``pcm`` and ``uri`` work as on KServe.

The settings come from the model's ``MUSICRL_*`` parameters (see :mod:`musicrl.triton.repository`).
"""

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from musicrl.config import GeneratorServiceConfig, RewardServiceConfig
from musicrl.errors import InvalidRequest
from musicrl.serving.kserve_compat import InferInput, InferRequest
from musicrl.settings import config_from


logger = logging.getLogger(__name__)

_V2_TYPES = {"TYPE_STRING": "BYTES"}  # every other TYPE_X is the V2 datatype X


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by the backend's stub, nowhere else

    return pb_utils


class _V2Model:
    """What both models share: settings from the config's parameters, Triton requests as V2 requests."""

    def initialize(self, args: Mapping[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name: str = config["name"]
        self.settings = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.input_types = {i["name"]: _V2_TYPES.get(i["data_type"], i["data_type"][5:]) for i in config["input"]}
        self.all_outputs = {o["name"] for o in config["output"]}
        from musicrl.serving.torch_thread import configure_torch_threads

        logger.info("%s: torch runs %d intra-op threads", self.name, configure_torch_threads(0))

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                arrays = self.reply(self.v2_request(request))
            except InvalidRequest as e:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG)))
                continue
            responses.append(pb.InferenceResponse([pb.Tensor(n, a) for n, a in arrays.items()]))
        return responses

    def reply(self, payload: InferRequest) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def v2_request(self, request: Any) -> InferRequest:
        """The Triton request as the KServe request the contract code reads."""
        from musicrl.serving.kserve_compat import kserve

        inputs = []
        for tensor in request.inputs():
            array = tensor.as_numpy()
            inputs.append(InferInput(tensor.name(), list(array.shape), self.input_types[tensor.name()], data=array))
        requested = set(request.requested_output_names())
        # a client that names no outputs gets every declared one listed: that means "all produced"
        outputs = [] if requested == self.all_outputs else sorted(requested)
        request_outputs = [kserve.protocol.infer_type.RequestedOutput(name) for name in outputs]
        return InferRequest(
            self.name,
            inputs,
            parameters=json.loads(request.parameters() or "{}"),
            request_outputs=request_outputs or None,
            from_grpc=True,  # outputs travel typed, never as JSON text
        )


class GeneratorModel(_V2Model):
    """The ``generator``: the policy's engine behind the generator's V2 contract."""

    def initialize(self, args: Mapping[str, str]) -> None:
        super().initialize(args)
        from musicrl.data.clips import ClipStore
        from musicrl.models.engine import GenerationEngine, warm_up

        self.config = config_from(GeneratorServiceConfig, environ=self.settings)
        self.engine = GenerationEngine.from_uri(self.config.model_uri, self.config.engine)
        warm_up(self.engine, self.config.warmup_duration_s)  # Triton reports ready once initialize returns
        self.clip_store = ClipStore(self.config.clip_store_url) if self.config.clip_store_url else None
        logger.info("%s serves %s", self.name, self.config.model_uri)

    def reply(self, payload: InferRequest) -> dict[str, np.ndarray]:
        from musicrl.serving import generation_api

        call = generation_api.parse_generation_call(payload, self.config.limits, self.config.defaults)
        if call.audio_format is generation_api.AudioFormat.WAV:
            raise InvalidRequest(
                "audio_format 'wav' is not served by the Triton runtime, whose 'audio' output is FP32: "
                "use 'pcm', or 'uri' where a clip store is configured"
            )
        clips = self.engine.generate_batch(call.requests)
        arrays = generation_api.reply_arrays(call, clips, call.audio_format, self.clip_store)
        return {name: array for name, (array, _) in arrays.items()}


class RewardModel(_V2Model):
    """A reward (``text-adherence``, ``quality`` or ``preference``, by the model's name) behind its contract."""

    def initialize(self, args: Mapping[str, str]) -> None:
        super().initialize(args)
        from musicrl.rewards.registry import load_reward

        self.config = config_from(RewardServiceConfig, environ=self.settings)
        uri = self.config.models().get(self.name)
        if uri is None:
            raise InvalidRequest(f"model {self.name!r} has no MUSICRL_*_URI parameter naming its checkpoint")
        self.reward = load_reward(self.name, uri, device=self.config.device)
        logger.info("%s serves %s", self.name, uri)

    def reply(self, payload: InferRequest) -> dict[str, np.ndarray]:
        from musicrl.serving import reward_api

        items = reward_api.parse_reward_call(payload, self.config.max_clips_per_request)
        results = reward_api.score_items(self.reward, items)
        errors = [r for r in results if isinstance(r, InvalidRequest)]
        if errors:
            raise errors[0]
        return {"score": np.asarray(results, dtype=np.float32)}
