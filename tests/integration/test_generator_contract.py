"""The generator's V2 contract, held by both runtimes: our KServe server and the Triton model repository.

Every test runs against each runtime, spoken to with tritonclient over HTTP and gRPC; what only one
runtime does (KServe's micro-batching metrics, WAV replies, the gRPC cap) is tested in
test_generator_server.py and test_triton_runtime.py.
"""

import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from musicrl.config import SamplingParams
from musicrl.models.engine import GenerationEngine
from tests.utils.processes import export_triton_repository, model_server, triton_server
from tests.utils.v2_inputs import numbers, prompts


pytestmark = pytest.mark.slow

TINY = "tiny://musicgen?seed=0"
SETTINGS = {
    "MUSICRL_MODEL_URI": TINY,
    "MUSICRL_MAX_DURATION_S": "5",
    "MUSICRL_DURATION_S": "1",
    "MUSICRL_MAX_PROMPT_CHARS": "200",
}
GENERATOR_ONLY = ["--text-adherence-uri", "", "--quality-uri", ""]


@pytest.fixture(scope="module", params=["kserve", "triton"])
def server(request, tmp_path_factory):
    logs = tmp_path_factory.mktemp(request.param)
    if request.param == "kserve":
        with model_server("services.generator", SETTINGS, logs, "generator") as running:
            yield running
        return
    repository = export_triton_repository(logs / "repository", SETTINGS, GENERATOR_ONLY)
    with triton_server(repository, logs) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine.from_uri(TINY)


def test_health_and_metadata_over_http_and_grpc(http, grpc):
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("generator")
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready("generator")
    http_meta = http.get_model_metadata("generator")
    grpc_meta = grpc.get_model_metadata("generator", as_json=True)
    for meta in (http_meta, grpc_meta):
        assert {i["name"] for i in meta["inputs"]} >= {"prompt", "duration_s", "seed"}
        assert {o["name"] for o in meta["outputs"]} >= {"audio", "codes", "sample_rate"}


def test_http_infer_returns_the_engines_clips(http, engine):
    result = http.infer(
        "generator",
        [prompts(httpclient, [b"lofi beat", b"string quartet"])],
        parameters={"duration_s": 0.5, "seed": 40},
    )
    codes, audio = result.as_numpy("codes"), result.as_numpy("audio")
    assert codes.shape == (2, 4, 25) and codes.dtype == np.int64
    assert audio.shape == (2, 16_000) and audio.dtype == np.float32
    assert result.as_numpy("seed").tolist() == [40, 41]  # a request seed s gives row i the seed s + i
    assert result.as_numpy("sample_rate").tolist() == [32_000, 32_000]
    expected_audio, expected_codes = engine.generate(
        ["lofi beat", "string quartet"], SamplingParams(duration_s=0.5), seeds=[40, 41]
    )
    assert np.array_equal(codes, expected_codes.numpy())
    np.testing.assert_allclose(audio, expected_audio.numpy(), atol=1e-6)


def test_unicode_prompts_are_read_as_utf8(grpc, engine):
    texts = ["café jazz ♪", "東京の夜 lofi", "Ωmega drone 🎻"]
    result = grpc.infer(
        "generator", [prompts(grpcclient, [t.encode() for t in texts])], parameters={"duration_s": "0.2", "seed": 3}
    )
    _, expected = engine.generate(texts, SamplingParams(duration_s=0.2), seeds=[3, 4, 5])
    assert np.array_equal(result.as_numpy("codes"), expected.numpy())


def test_grpc_and_http_agree_for_the_same_seed(http, grpc):
    texts = [b"ambient drone"]
    over_http = http.infer("generator", [prompts(httpclient, texts)], parameters={"seed": 7, "duration_s": 0.4})
    # V2 gRPC parameters carry no doubles on KServe: floats travel as strings (or as tensors)
    over_grpc = grpc.infer("generator", [prompts(grpcclient, texts)], parameters={"seed": 7, "duration_s": "0.4"})
    assert np.array_equal(over_http.as_numpy("codes"), over_grpc.as_numpy("codes"))
    np.testing.assert_allclose(over_http.as_numpy("audio"), over_grpc.as_numpy("audio"), atol=1e-6)


def test_per_row_tensors_set_each_clips_settings(grpc):
    inputs = [
        prompts(grpcclient, [b"short", b"longer"]),
        numbers(grpcclient, "duration_s", [0.2, 0.4], "FP32", np.float32),
        numbers(grpcclient, "seed", [1, 2], "INT64", np.int64),
        numbers(grpcclient, "temperature", [0.0, 1.0], "FP32", np.float32),
    ]
    result = grpc.infer("generator", inputs)
    assert result.as_numpy("num_frames").tolist() == [10, 20]
    assert result.as_numpy("num_samples").tolist() == [6400, 12800]
    codes, audio = result.as_numpy("codes"), result.as_numpy("audio")
    assert (codes[0, :, 10:] == -1).all() and (codes[0, :, :10] >= 0).all()
    assert (audio[0, 6400:] == 0).all()


def test_a_seed_gives_the_same_codes_alone_and_batched(http):
    def codes(texts: list[bytes], seeds: list[int]) -> np.ndarray:
        inputs = [prompts(httpclient, texts), numbers(httpclient, "seed", seeds, "INT64", np.int64)]
        return http.infer("generator", inputs, parameters={"duration_s": 0.3}).as_numpy("codes")

    batched = codes([b"bossa nova", b"dark techno", b"harp"], [11, 12, 13])
    alone = codes([b"dark techno"], [12])
    assert np.array_equal(batched[1:2], alone)
    assert not np.array_equal(batched[0], batched[2])  # other seeds and prompts, other clips


BAD_INPUTS = [
    pytest.param([b""], {}, "prompt\\[0\\] is empty", id="empty-prompt"),
    pytest.param([b"   "], {}, "prompt\\[0\\] is empty", id="blank-prompt"),
    pytest.param([b"x" * 201], {}, "201 characters; the maximum is 200", id="long-prompt"),
    pytest.param([b"\xff\xfe bad"], {}, "not valid UTF-8 text", id="non-utf8"),
    pytest.param([b"x"], {"duration_s": "0"}, "duration_s must be a positive", id="zero-duration"),
    pytest.param([b"x"], {"duration_s": "-1"}, "duration_s must be a positive", id="negative-duration"),
    pytest.param([b"x"], {"duration_s": "6"}, "above the maximum of 5.0 s", id="too-long"),
    pytest.param([b"x"], {"duration_s": "nan"}, "must be a number", id="nan-duration"),
    pytest.param([b"x"], {"loudness": 3}, "unknown parameter\\(s\\) \\['loudness'\\]", id="unknown-parameter"),
    pytest.param([b"x"], {"temperature": "-0.5"}, "temperature must be >= 0", id="negative-temperature"),
    pytest.param([b"x"], {"top_k": -1}, "top_k must be >= 0", id="negative-top-k"),
    pytest.param([b"x"], {"guidance_scale": "0.5"}, "guidance_scale must be >= 1", id="guidance-below-one"),
    pytest.param([b"x"], {"audio_format": "mp3"}, "audio_format must be one of", id="unknown-format"),
    pytest.param([b"x"], {"seed": -3}, "seed must be between 0", id="negative-seed"),
]


@pytest.mark.parametrize("texts, parameters, message", BAD_INPUTS)
def test_bad_input_is_a_400_over_http(http, texts, parameters, message):
    with pytest.raises(InferenceServerException) as error:
        http.infer("generator", [prompts(httpclient, texts)], parameters=parameters)
    assert error.value.status() == "400"
    assert re.search(message, error.value.message())


@pytest.mark.parametrize("texts, parameters, message", BAD_INPUTS)
def test_bad_input_is_invalid_argument_over_grpc(grpc, texts, parameters, message):
    with pytest.raises(InferenceServerException) as error:
        grpc.infer("generator", [prompts(grpcclient, texts)], parameters=parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert re.search(message, error.value.message())


def test_server_keeps_serving_after_bad_input(http, grpc):
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            http.infer("generator", [prompts(httpclient, [b""])])
    assert http.is_server_ready()
    result = grpc.infer("generator", [prompts(grpcclient, [b"still here"])], parameters={"duration_s": "0.2"})
    assert result.as_numpy("codes").shape == (1, 4, 10)
