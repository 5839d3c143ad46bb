"""The generator service as a real subprocess, spoken to with tritonclient over HTTP and gRPC.

What both runtimes promise is in test_generator_contract.py; these are the KServe server's own behaviours.
"""

import concurrent.futures
import io
import re
import signal
import time

import numpy as np
import pytest
import requests
import soundfile
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from musicrl.config import SamplingParams
from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.engine import GenerationEngine
from musicrl.models.tiny import TinyMusicgenSpec, build_tiny_musicgen
from musicrl.toyworld.probes import PITCH_EDGES_HZ, fundamental_hz
from tests.utils.processes import model_server, spawn_model_server, stop_process
from tests.utils.v2_inputs import numbers, prompts


pytestmark = pytest.mark.slow

TINY = "tiny://musicgen?seed=0"
GRPC_CAP_BYTES = 256 * 1024  # small, so that the over-the-cap path is cheap to reach
SERVER_ENV = {
    "MUSICRL_MODEL_URI": TINY,
    "MUSICRL_MAX_DURATION_S": "5",
    "MUSICRL_DURATION_S": "1",
    "MUSICRL_MAX_PROMPT_CHARS": "200",
    "MUSICRL_MAX_BATCH_SIZE": "8",
    "MUSICRL_MAX_QUEUE_DELAY_MS": "100",
    "MUSICRL_GRPC_MAX_MESSAGE_BYTES": str(GRPC_CAP_BYTES),
}


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    with model_server("services.generator", SERVER_ENV, tmp_path_factory.mktemp("logs"), "generator") as server:
        yield server


@pytest.fixture(scope="module")
def http(generator):
    client = httpclient.InferenceServerClient(generator.http_url, network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(generator):
    client = grpcclient.InferenceServerClient(generator.grpc_url)
    yield client
    client.close()


def test_wav_format_returns_playable_files(http):
    result = http.infer(
        "generator", [prompts(httpclient, [b"jazz"])], parameters={"duration_s": 0.5, "audio_format": "wav"}
    )
    (wav,) = result.as_numpy("audio")
    audio, rate = soundfile.read(io.BytesIO(wav))
    assert rate == 32_000 and audio.shape == (16_000,)


def test_plain_json_clients_get_pcm_and_a_clear_error_for_wav(generator):
    url = f"http://{generator.http_url}/v2/models/generator/infer"
    body = {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["lofi hip hop beat"]}],
        "parameters": {"duration_s": 0.2, "seed": 7},
    }
    reply = requests.post(url, json=body, timeout=60)
    assert reply.status_code == 200
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["audio"]["shape"] == [1, 6400] and len(outputs["audio"]["data"]) == 6400
    assert outputs["seed"]["data"] == [7]
    body["parameters"]["audio_format"] = "wav"
    refused = requests.post(url, json=body, timeout=60)
    assert refused.status_code == 400
    assert "binary_data_output" in refused.json()["error"]


def test_requested_outputs_only(http):
    outputs = [httpclient.InferRequestedOutput("codes")]
    result = http.infer("generator", [prompts(httpclient, [b"x"])], outputs=outputs, parameters={"duration_s": 0.2})
    assert result.as_numpy("codes").shape == (1, 4, 10)
    assert result.as_numpy("audio") is None


@pytest.mark.parametrize(
    "make_inputs, message",
    [
        (lambda: [prompts(httpclient, [b"x"]), prompts(httpclient, [b"y"], name="style")], "unknown input 'style'"),
        (lambda: [numbers(httpclient, "prompt", [1.0], "FP32", np.float32)], "must have datatype BYTES"),
        (lambda: [numbers(httpclient, "duration_s", [1.0], "FP32", np.float32)], "missing required input"),
        (
            lambda: [
                prompts(httpclient, [b"x", b"y"]),
                numbers(httpclient, "duration_s", [1, 2, 3], "FP32", np.float32),
            ],
            "must have shape \\[2\\]",
        ),
        (
            lambda: [
                prompts(httpclient, [b"x"]),
                numbers(httpclient, "duration_s", [float("inf")], "FP32", np.float32),
            ],
            "NaN or infinite",
        ),
    ],
    ids=["unknown-input", "prompt-not-bytes", "no-prompt", "wrong-shape", "infinite-duration"],
)
def test_bad_tensors_are_a_400(http, make_inputs, message):
    with pytest.raises(InferenceServerException) as error:
        http.infer("generator", make_inputs())
    assert error.value.status() == "400"
    assert re.search(message, error.value.message())


def test_unknown_requested_output_is_a_400(http):
    with pytest.raises(InferenceServerException, match="unknown requested output"):
        http.infer("generator", [prompts(httpclient, [b"x"])], outputs=[httpclient.InferRequestedOutput("midi")])


def test_grpc_reply_over_the_cap_without_a_clip_store_is_refused(grpc):
    with pytest.raises(InferenceServerException, match="above the gRPC message cap") as error:
        grpc.infer("generator", [prompts(grpcclient, [b"a", b"b"])], parameters={"duration_s": "2"})
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_concurrent_requests_are_batched_and_metered(generator, http):
    def one(i: int):
        # tritonclient's HTTP client runs on gevent and must not be shared between threads: one client each
        client = httpclient.InferenceServerClient(generator.http_url, network_timeout=120)
        try:
            return client.infer(
                "generator", [prompts(httpclient, [f"prompt {i}".encode()])], parameters={"duration_s": 0.3}
            )
        finally:
            client.close()

    before = _metrics(generator)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    after = _metrics(generator)
    assert all(r.as_numpy("codes").shape == (1, 4, 15) for r in results)

    def grown(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert grown("musicrl_generation_time_to_first_step_seconds_count") == 8  # every row joined the batch once
    passes, row_steps = grown("musicrl_generation_decode_steps_total"), grown("musicrl_generation_row_steps_total")
    assert row_steps == 8 * (15 + 4 - 1)  # T + K - 1 steps per row
    assert passes < row_steps, f"8 concurrent rows took {passes} decoder passes for {row_steps} row steps"
    seconds = after["musicrl_generated_audio_seconds_total"] - before.get("musicrl_generated_audio_seconds_total", 0)
    assert seconds == pytest.approx(8 * 0.3)
    assert after['musicrl_inference_requests_total{outcome="ok"}'] > before.get(
        'musicrl_inference_requests_total{outcome="ok"}', 0
    )


def _metrics(server) -> dict[str, float]:
    text = requests.get(f"http://{server.http_url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'^(musicrl_\w+)(?:\{model="generator"(,outcome="\w+")?\})? ([0-9.e+-]+)$', line)
        if match:
            name = match.group(1) + (f"{{{match.group(2)[1:]}}}" if match.group(2) else "")
            values[name] = float(match.group(3))
    return values


def test_over_the_cap_replies_become_clip_uris_with_a_clip_store(tmp_path):
    env = {**SERVER_ENV, "MUSICRL_CLIP_STORE_URL": str(tmp_path / "clips")}
    with model_server("services.generator", env, tmp_path, "generator") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        result = client.infer("generator", [prompts(grpcclient, [b"a", b"b"])], parameters={"duration_s": "2"})
        client.close()
    assert result.as_numpy("audio") is None
    uris = [u.decode() for u in result.as_numpy("audio_uri")]
    assert len(set(uris)) == 2
    for uri in uris:
        audio, rate = soundfile.read(uri)
        assert rate == 32_000 and audio.shape == (64_000,)


def test_a_saved_checkpoint_is_served_by_path_through_the_cli(tmp_path):
    model, tokenizer = build_tiny_musicgen(TinyMusicgenSpec(seed=5))
    checkpoint = save_checkpoint(model, tokenizer, str(tmp_path / "policy"), CheckpointMetadata(kind="policy"))
    args = ["serve", "generator", "--model", f"file://{checkpoint}"]
    with model_server("musicrl", {}, tmp_path, "generator", args=args) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        result = client.infer("generator", [prompts(httpclient, [b"x"])], parameters={"seed": 3, "duration_s": 0.3})
        client.close()
    _, expected = GenerationEngine.from_uri("tiny://musicgen?seed=5").generate(
        ["x"], SamplingParams(duration_s=0.3), seeds=[3]
    )
    assert np.array_equal(result.as_numpy("codes"), expected.numpy())
    _, other_weights = GenerationEngine.from_uri(TINY).generate(["x"], SamplingParams(duration_s=0.3), seeds=[3])
    assert not torch.equal(expected, other_weights)


def test_sigterm_stops_the_server_cleanly(tmp_path):
    with model_server("services.generator", SERVER_ENV, tmp_path, "generator") as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    assert "shutting down" in server.log()


def test_the_toy_policy_is_served_and_its_prompts_set_the_pitch_the_probes_hear(tmp_path):
    env = {"MUSICRL_MODEL_URI": "toy://musicgen", "MUSICRL_DURATION_S": "2"}
    texts = [b"a low, dark drone", b"a high, bright drone"]
    with model_server("services.generator", env, tmp_path, "generator") as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        result = client.infer("generator", [prompts(httpclient, texts)], parameters={"seed": 4})
        client.close()
    _, expected = GenerationEngine.from_uri("toy://musicgen").generate(
        [p.decode() for p in texts], SamplingParams(duration_s=2.0), seeds=[4, 5]
    )
    assert np.array_equal(result.as_numpy("codes"), expected.numpy())  # a request seed s gives row i seed s + i
    assert result.as_numpy("sample_rate").tolist() == [16_000, 16_000]
    low, high = (fundamental_hz(row, 16_000) for row in result.as_numpy("audio"))
    assert low < PITCH_EDGES_HZ[0] < PITCH_EDGES_HZ[1] < high, (low, high)


def test_the_warm_up_runs_before_the_server_reports_ready(tmp_path):
    env = {**SERVER_ENV, "MUSICRL_WARMUP_DURATION_S": "3"}  # long enough to be seen from outside
    server = spawn_model_server("services.generator", env, tmp_path)
    url = f"http://{server.http_url}/v2/models/generator/ready"
    not_ready_while_up = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.process.poll() is None, server.log()
            try:
                status = requests.get(url, timeout=2).status_code
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            if status == 200:
                # the warm-up takes about a second: a server that warmed up after turning ready has not logged it yet
                assert "warmed up with a 3.00 s clip" in server.log(), "ready before the warm-up was done"
                break
            not_ready_while_up += 1
            time.sleep(0.05)
        else:
            raise TimeoutError(server.log())
    finally:
        stop_process(server.process, timeout_s=20)
    assert not_ready_while_up > 0  # the server was up and said "not ready" while it warmed up
