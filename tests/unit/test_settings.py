"""Tests of building config dataclasses from flags, MUSICRL_* variables and defaults (flag > env > default)."""

import argparse
from dataclasses import dataclass, field

import pytest

from musicrl.config import EngineConfig, GeneratorServiceConfig, SamplingParams, ServerConfig
from musicrl.errors import InvalidRequest
from musicrl.settings import add_config_flags, config_from


def _parse(cls: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test")
    add_config_flags(parser, cls)
    return parser.parse_args(argv)


def _service(argv: list[str], environ: dict[str, str] | None = None) -> GeneratorServiceConfig:
    return config_from(GeneratorServiceConfig, args=_parse(GeneratorServiceConfig, argv), environ=environ or {})


def test_defaults_apply_without_flags_or_environment() -> None:
    assert config_from(SamplingParams, args=_parse(SamplingParams, []), environ={}) == SamplingParams()
    assert config_from(EngineConfig, environ={}) == EngineConfig()


def test_environment_overrides_the_default() -> None:
    params = config_from(SamplingParams, environ={"MUSICRL_TEMPERATURE": "0.5", "MUSICRL_TOP_K": "50"})

    assert (params.temperature, params.top_k) == (0.5, 50)
    assert params.guidance_scale == SamplingParams().guidance_scale


def test_flag_overrides_the_environment() -> None:
    args = _parse(SamplingParams, ["--temperature", "0.7"])

    params = config_from(SamplingParams, args=args, environ={"MUSICRL_TEMPERATURE": "0.5", "MUSICRL_TOP_K": "50"})

    assert params.temperature == 0.7  # flag beats env
    assert params.top_k == 50  # env beats default


def test_explicit_environ_hides_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICRL_TOP_K", "7")

    assert config_from(SamplingParams, environ={}).top_k == SamplingParams().top_k
    assert config_from(SamplingParams).top_k == 7  # environ=None reads os.environ


def test_env_prefix_is_configurable() -> None:
    params = config_from(SamplingParams, environ={"GEN_TOP_K": "5", "MUSICRL_TOP_K": "9"}, env_prefix="GEN_")

    assert params.top_k == 5


def test_custom_flag_name_keeps_the_field_name_for_the_environment() -> None:
    assert (
        config_from(SamplingParams, args=_parse(SamplingParams, ["--duration", "4.5"]), environ={}).duration_s == 4.5
    )
    assert config_from(SamplingParams, environ={"MUSICRL_DURATION_S": "2"}).duration_s == 2.0


def test_model_flag_sets_model_uri() -> None:
    config = _service(["--model", "tiny://musicgen?seed=0"])

    assert config.model_uri == "tiny://musicgen?seed=0"


def test_model_uri_can_come_from_the_environment() -> None:
    assert _service([], {"MUSICRL_MODEL_URI": "hf://org/name"}).model_uri == "hf://org/name"


def test_missing_required_model_is_refused_naming_flag_and_variable() -> None:
    with pytest.raises(InvalidRequest, match=r"--model \(or MUSICRL_MODEL_URI\) is required"):
        _service([])


def test_nested_configs_are_flattened_into_flags_and_variables() -> None:
    config = _service(
        ["--model", "tiny://musicgen", "--max-batch-size", "4", "--device", "cuda:1"],
        {"MUSICRL_HTTP_PORT": "9000", "MUSICRL_MAX_DURATION_S": "12.5"},
    )

    assert config.batching.max_batch_size == 4
    assert config.engine.device == "cuda:1"
    assert config.server.http_port == 9000
    assert config.limits.max_duration_s == 12.5
    assert config.defaults == SamplingParams()


@pytest.mark.parametrize("raw", ["1", "true", "True", "YES", "on", " On "])
def test_true_spellings(raw: str) -> None:
    assert config_from(ServerConfig, environ={"MUSICRL_ENABLE_GRPC": raw}).enable_grpc is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off"])
def test_false_spellings(raw: str) -> None:
    assert config_from(ServerConfig, environ={"MUSICRL_ENABLE_GRPC": raw}).enable_grpc is False


def test_bool_flag_takes_a_value() -> None:
    config = config_from(ServerConfig, args=_parse(ServerConfig, ["--enable-grpc", "off"]), environ={})

    assert config.enable_grpc is False


def test_unrecognised_bool_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidRequest, match=r"MUSICRL_ENABLE_GRPC: expected bool, got 'maybe'"):
        config_from(ServerConfig, environ={"MUSICRL_ENABLE_GRPC": "maybe"})


def test_bad_int_flag_is_refused_naming_the_flag() -> None:
    with pytest.raises(InvalidRequest, match=r"--top-k: expected int, got 'many'"):
        config_from(SamplingParams, args=_parse(SamplingParams, ["--top-k", "many"]), environ={})


def test_bad_int_variable_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidRequest, match=r"MUSICRL_HTTP_PORT: expected int, got '80.5'"):
        config_from(ServerConfig, environ={"MUSICRL_HTTP_PORT": "80.5"})


def test_bad_float_flag_names_the_custom_flag() -> None:
    with pytest.raises(InvalidRequest, match=r"--duration: expected float, got 'ten'"):
        config_from(SamplingParams, args=_parse(SamplingParams, ["--duration", "ten"]), environ={})


def test_empty_optional_value_means_none() -> None:
    base = ["--model", "tiny://musicgen"]

    assert _service(base, {"MUSICRL_CLIP_STORE_URL": ""}).clip_store_url is None
    assert _service(base, {"MUSICRL_CLIP_STORE_URL": "memory://clips"}).clip_store_url == "memory://clips"
    assert _service(base + ["--clip-store-url", "s3://b/clips"]).clip_store_url == "s3://b/clips"


def test_parsed_values_still_pass_the_config_checks() -> None:
    with pytest.raises(InvalidRequest, match=r"duration_s must be a positive number of seconds, got -1.0"):
        config_from(SamplingParams, args=_parse(SamplingParams, ["--duration", "-1"]), environ={})


def test_every_flag_is_kebab_case_and_documents_its_default() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, GeneratorServiceConfig)
    flags = {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}

    assert "--model" in flags and "--duration" in flags and "--max-queue-delay-ms" in flags
    assert [f for f in flags if "_" in f or not f.startswith("--")] == []
    assert "(default: 16)" in flags["--max-batch-size"].help
    assert "default" not in flags["--model"].help  # required: no default to show


def test_unknown_flag_exits_2_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(SamplingParams, ["--colour", "blue"])

    assert info.value.code == 2
    assert "error: unrecognized arguments: --colour blue" in capsys.readouterr().err


@dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclass(frozen=True)
class _Colliding:
    size: int = 2
    inner: _Inner = field(default_factory=_Inner)


def test_colliding_leaf_names_are_refused() -> None:
    with pytest.raises(TypeError, match=r"_Colliding: field name 'size' appears twice"):
        add_config_flags(argparse.ArgumentParser(), _Colliding)
