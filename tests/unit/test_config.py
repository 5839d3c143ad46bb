"""Tests of the config dataclasses: every validation rule refuses bad values with a sentence naming the field."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

import musicrl.config
from musicrl.config import (
    BatchingConfig,
    BusConfig,
    EngineConfig,
    GenerationLimits,
    GeneratorServiceConfig,
    RewardServiceConfig,
    SamplingParams,
    ServerConfig,
)
from musicrl.errors import InvalidRequest


NAN, INF = math.nan, math.inf

INVALID: list[tuple[type, dict[str, Any], str]] = [
    # SamplingParams
    (SamplingParams, dict(duration_s=0), r"duration_s must be a positive number of seconds, got 0"),
    (SamplingParams, dict(duration_s=-1.5), r"duration_s must be a positive number of seconds, got -1.5"),
    (SamplingParams, dict(duration_s=NAN), r"duration_s must be a positive number of seconds, got nan"),
    (SamplingParams, dict(duration_s=INF), r"duration_s must be a positive number of seconds, got inf"),
    (SamplingParams, dict(temperature=-0.1), r"temperature must be >= 0 \(0 means greedy\), got -0.1"),
    (SamplingParams, dict(temperature=NAN), r"temperature must be >= 0 \(0 means greedy\), got nan"),
    (SamplingParams, dict(temperature=INF), r"temperature must be >= 0 \(0 means greedy\), got inf"),
    (SamplingParams, dict(top_k=-1), r"top_k must be >= 0 \(0 keeps the whole vocabulary\), got -1"),
    (SamplingParams, dict(guidance_scale=0.5), r"guidance_scale must be >= 1 \(1 disables .*\), got 0.5"),
    (SamplingParams, dict(guidance_scale=NAN), r"guidance_scale must be >= 1 .*, got nan"),
    (SamplingParams, dict(guidance_scale=INF), r"guidance_scale must be >= 1 .*, got inf"),
    # EngineConfig
    (EngineConfig, dict(dtype="float64"), r"dtype must be float32, bfloat16 or float16, got 'float64'"),
    (EngineConfig, dict(max_prompt_tokens=0), r"max_prompt_tokens must be >= 1, got 0"),
    # ServerConfig
    (ServerConfig, dict(http_port=-1), r"http_port must be between 0 and 65535, got -1"),
    (ServerConfig, dict(http_port=65536), r"http_port must be between 0 and 65535, got 65536"),
    (ServerConfig, dict(grpc_port=-1), r"grpc_port must be between 0 and 65535, got -1"),
    (ServerConfig, dict(grpc_port=70000), r"grpc_port must be between 0 and 65535, got 70000"),
    (ServerConfig, dict(http_port=9000, grpc_port=9000), r"http_port and grpc_port must differ, both are 9000"),
    (ServerConfig, dict(grpc_max_message_bytes=1023), r"grpc_max_message_bytes must be at least 1024, got 1023"),
    # BatchingConfig
    (BatchingConfig, dict(max_batch_size=0), r"max_batch_size must be >= 1, got 0"),
    (BatchingConfig, dict(max_queue_delay_ms=-1), r"max_queue_delay_ms must be >= 0, got -1"),
    (BatchingConfig, dict(max_queue_delay_ms=NAN), r"max_queue_delay_ms must be >= 0, got nan"),
    (BatchingConfig, dict(max_queue_delay_ms=INF), r"max_queue_delay_ms must be >= 0, got inf"),
    # GenerationLimits
    (GenerationLimits, dict(max_duration_s=0), r"max_duration_s must be positive, got 0"),
    (GenerationLimits, dict(max_duration_s=INF), r"max_duration_s must be positive, got inf"),
    (GenerationLimits, dict(max_prompt_chars=0), r"max_prompt_chars must be >= 1, got 0"),
    (GenerationLimits, dict(max_prompts_per_request=0), r"max_prompts_per_request must be >= 1, got 0"),
    # GeneratorServiceConfig
    (GeneratorServiceConfig, dict(model_uri=""), r"model_uri is required \(for example tiny://musicgen\?seed=0\)"),
    (
        GeneratorServiceConfig,
        dict(
            model_uri="tiny://musicgen",
            defaults=SamplingParams(duration_s=20),
            limits=GenerationLimits(max_duration_s=10),
        ),
        r"the default duration_s \(20\) exceeds max_duration_s \(10\); lower one or raise the other",
    ),
    (
        GeneratorServiceConfig,
        dict(model_uri="tiny://musicgen", warmup_duration_s=31.0),
        r"warmup_duration_s must lie in \[0, max_duration_s=30.0\], got 31.0",
    ),
    (GeneratorServiceConfig, dict(model_uri="x", warmup_duration_s=NAN), r"warmup_duration_s must lie in"),
    # BusConfig
    (BusConfig, dict(nats_url=""), r"nats_url is required"),
    (BusConfig, dict(nats_url="nats://x", replicas=2), r"replicas must be 1, 3 or 5"),
    (BusConfig, dict(nats_url="nats://x", publish_timeout_s=0), r"publish_timeout_s must be positive"),
    (BusConfig, dict(nats_url="nats://x", publish_timeout_s=40), r"at most publish_deadline_s"),
    (
        BusConfig,
        dict(nats_url="nats://x", publish_deadline_s=400),
        r"publish_deadline_s \(400\) must be at most half of duplicate_window_s \(600.0\)",
    ),
    (BusConfig, dict(nats_url="nats://x", max_age_s=-1), r"max_age_s must be >= 0"),
    # RewardServiceConfig
    (RewardServiceConfig, dict(), r"serve at least one reward"),
    (
        RewardServiceConfig,
        dict(quality_uri="tiny://quality?seed=0", max_clips_per_request=0),
        r"max_clips_per_request must be >= 1",
    ),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), INVALID)
def test_invalid_values_are_refused_with_a_sentence_naming_the_field(
    cls: type, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        cls(**kwargs)


def test_every_validated_config_class_is_covered() -> None:
    validated = {
        obj
        for obj in vars(musicrl.config).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and "__post_init__" in vars(obj)
    }

    assert {cls for cls, _, _ in INVALID} == validated


@pytest.mark.parametrize(
    "build",
    [
        lambda: SamplingParams(temperature=0, top_k=0, guidance_scale=1),  # greedy, full vocabulary, no guidance
        lambda: SamplingParams(duration_s=0.02),
        lambda: EngineConfig(dtype="bfloat16", max_prompt_tokens=1),
        lambda: ServerConfig(http_port=0, grpc_port=0),  # both pick free ports
        lambda: ServerConfig(http_port=9000, grpc_port=9000, enable_grpc=False),  # gRPC off: no clash
        lambda: ServerConfig(http_port=65535, grpc_port=0, grpc_max_message_bytes=1024),
        lambda: BatchingConfig(max_batch_size=1, max_queue_delay_ms=0),
        lambda: GenerationLimits(max_duration_s=0.5, max_prompt_chars=1, max_prompts_per_request=1),
        lambda: GeneratorServiceConfig(
            model_uri="tiny://musicgen",
            defaults=SamplingParams(duration_s=10),
            limits=GenerationLimits(max_duration_s=10),
        ),
    ],
)
def test_boundary_values_are_accepted(build: Callable[[], object]) -> None:
    build()


def test_defaults_are_consistent() -> None:
    config = GeneratorServiceConfig(model_uri="tiny://musicgen?seed=0")

    assert config.defaults.duration_s <= config.limits.max_duration_s
    assert config.server.http_port != config.server.grpc_port


def test_guidance_is_used_only_above_scale_one() -> None:
    assert SamplingParams(guidance_scale=3.0).uses_guidance
    assert not SamplingParams(guidance_scale=1.0).uses_guidance


def test_invalid_request_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        SamplingParams(top_k=-5)


@pytest.mark.parametrize("config", [SamplingParams(), EngineConfig(), ServerConfig(), BatchingConfig()])
def test_configs_are_frozen(config: object) -> None:
    name = dataclasses.fields(config)[0].name

    with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
        setattr(config, name, getattr(config, name))
