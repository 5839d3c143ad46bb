"""The reward service as a real subprocess: three models over V2, spoken to with tritonclient."""

import concurrent.futures
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from musicrl.rewards.base import ClipBatch, ClipInput
from musicrl.rewards.preference_config import PreferenceTrainConfig
from musicrl.rewards.registry import load_reward
from musicrl.rewards.remote import RemoteReward
from musicrl.rewards.train_preference import train_preference
from tests.utils.processes import model_server
from tests.utils.synthetic import write_preference_snapshot


pytestmark = pytest.mark.slow

TEXT = "tiny://clap?seed=0"
QUALITY = "tiny://quality?seed=0"
RATE = 16_000
GENERATOR_ENV = {
    "MUSICRL_MODEL_URI": "tiny://musicgen?seed=0",
    "MUSICRL_MAX_DURATION_S": "2",  # short clips: the tiny model decodes them in well under a second
    "MUSICRL_DURATION_S": "1",  # the default must lie within the maximum, or the server refuses to start
    "MUSICRL_MAX_QUEUE_DELAY_MS": "10",  # one request per test, so there is nothing to wait for
}


@pytest.fixture(scope="module")
def preference_uri(tmp_path_factory):
    """A preference model trained (briefly) from the tiny policy and saved: its scores are not all zero."""
    root = tmp_path_factory.mktemp("preference")
    snapshot = write_preference_snapshot(root / "data", num_prompts=30, clips_per_prompt=4)
    config = PreferenceTrainConfig(
        snapshot_url=snapshot.url, init_uri="tiny://musicgen?seed=0", out_url=str(root / "rm"), epochs=2, lr=3e-4
    )
    result = train_preference(config)
    assert result.best_epoch > 0  # a trained head, not the zero one it starts from
    return result.uri


@pytest.fixture(scope="module")
def service(tmp_path_factory, preference_uri):
    env = {
        "MUSICRL_TEXT_ADHERENCE_URI": TEXT,
        "MUSICRL_QUALITY_URI": QUALITY,
        "MUSICRL_PREFERENCE_URI": preference_uri,
        "MUSICRL_MAX_QUEUE_DELAY_MS": "50",
    }
    with model_server("services.rewards", env, tmp_path_factory.mktemp("logs"), "preference", timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    with model_server("services.generator", GENERATOR_ENV, tmp_path_factory.mktemp("logs"), "generator") as server:
        yield server


def _clips(seed: int = 0, count: int = 3) -> ClipBatch:
    rng = np.random.default_rng(seed)
    audio = [(0.1 * rng.standard_normal(RATE * (i + 1))).astype(np.float32) for i in range(count)]
    codes = [rng.integers(0, 128, size=(4, 20 + 5 * i)) for i in range(count)]
    return ClipBatch([f"prompt {i}" for i in range(count)], audio=audio, sample_rate=RATE, codes=codes)


@pytest.mark.parametrize("name", ["text-adherence", "quality", "preference"])
def test_served_scores_equal_in_process_scores(service, preference_uri, name):
    uri = {"text-adherence": TEXT, "quality": QUALITY, "preference": preference_uri}[name]
    reads = ClipInput.CODES if name == "preference" else ClipInput.AUDIO
    batch = _clips()
    remote = RemoteReward(service.http_url, name, reads).score(batch)
    local = load_reward(name, uri).score(batch)
    assert remote.shape == (3,) and remote.dtype == np.float32
    np.testing.assert_allclose(remote, local, rtol=1e-4, atol=1e-5)
    if name == "text-adherence":
        assert (remote >= -1).all() and (remote <= 1).all()
    if name == "quality":
        assert (remote >= 0).all() and (remote <= 1).all()
    assert len(set(remote.tolist())) == 3  # three different clips, three different scores


def test_grpc_clients_get_the_same_scores(service):
    batch = _clips(seed=1, count=2)
    client = grpcclient.InferenceServerClient(service.grpc_url)
    inputs = [grpcclient.InferInput("prompt", [2], "BYTES"), grpcclient.InferInput("audio", [2, 2 * RATE], "FP32")]
    inputs[0].set_data_from_numpy(np.array([p.encode() for p in batch.prompts], dtype=np.object_))
    padded = np.zeros((2, 2 * RATE), np.float32)
    for row, clip in enumerate(batch.audio):
        padded[row, : len(clip)] = clip
    inputs[1].set_data_from_numpy(padded)
    lengths = grpcclient.InferInput("num_samples", [2], "INT64")
    lengths.set_data_from_numpy(np.array([len(a) for a in batch.audio], dtype=np.int64))
    result = client.infer("quality", [*inputs, lengths], parameters={"sample_rate": RATE})
    client.close()
    np.testing.assert_allclose(result.as_numpy("score"), load_reward("quality", QUALITY).score(batch), rtol=1e-4)


@pytest.mark.parametrize("name", ["text-adherence", "quality"])
def test_the_generators_outputs_are_scored_as_they_come(service, generator, name):
    prompts = np.array([b"calm piano", b"fast drums", b"warm strings"], dtype=np.object_)
    durations = np.array([0.5, 1.0, 0.25], dtype=np.float32)  # different lengths, so the audio is padded
    clips = _infer(generator, "generator", prompt=(prompts, "BYTES"), duration_s=(durations, "FP32"))
    passed_on = {
        n: (clips.as_numpy(n), clips.get_output(n)["datatype"]) for n in ("audio", "num_samples", "sample_rate")
    }
    assert passed_on["sample_rate"][0].shape == (3,)  # one rate per clip: the shape that used to be refused
    scores = _infer(service, name, prompt=(prompts, "BYTES"), **passed_on).as_numpy("score")
    audio, lengths, rates = (passed_on[n][0] for n in ("audio", "num_samples", "sample_rate"))
    batch = ClipBatch(
        [p.decode() for p in prompts],
        audio=[audio[row, : lengths[row]] for row in range(3)],  # [S] each, the padding cut off
        sample_rate=int(rates[0]),
    )
    uri = {"text-adherence": TEXT, "quality": QUALITY}[name]
    np.testing.assert_allclose(scores, load_reward(name, uri).score(batch), rtol=1e-4, atol=1e-5)
    assert len(set(scores.tolist())) == 3


def _infer(service, model: str, **tensors):
    client = httpclient.InferenceServerClient(service.http_url, network_timeout=120)
    inputs = []
    for name, (array, datatype) in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        return client.infer(model, inputs)
    finally:
        client.close()


PROMPT = (np.array([b"calm piano"], dtype=np.object_), "BYTES")
RATE_TENSOR = (np.array([RATE], dtype=np.int32), "INT32")
GOOD_AUDIO = (np.zeros((1, RATE), np.float32), "FP32")
LOW_RATE = (np.array([1000], np.int32), "INT32")
CODES_2D = (np.zeros((1, 4), np.int64), "INT64")
TWO_PROMPTS = (np.array([b"calm piano", b"fast drums"], dtype=np.object_), "BYTES")
TWO_RATES = (np.array([32_000, RATE], np.int32), "INT32")  # [B], but the clips disagree


@pytest.mark.parametrize(
    "model, tensors, message",
    [
        ("quality", {"prompt": PROMPT, "audio": (np.zeros(RATE, np.float32), "FP32"), "sample_rate": RATE_TENSOR},
         "must have shape \\[1, S\\]"),
        ("quality", {"prompt": PROMPT, "audio": (np.full((1, 100), np.nan, np.float32), "FP32"),
                     "sample_rate": RATE_TENSOR}, "NaN or infinite"),
        ("quality", {"prompt": PROMPT, "audio": (np.full((1, 100), np.inf, np.float32), "FP32"),
                     "sample_rate": RATE_TENSOR}, "NaN or infinite"),
        ("text-adherence", {"prompt": PROMPT, "audio": GOOD_AUDIO}, "needs its 'sample_rate'"),
        ("text-adherence", {"prompt": PROMPT, "audio": GOOD_AUDIO, "sample_rate": LOW_RATE}, "1000 Hz is not"),
        ("preference", {"prompt": PROMPT, "codes": (np.full((1, 4, 10), 500, np.int64), "INT64")},
         "outside \\[0, 128\\)"),
        ("preference", {"prompt": PROMPT, "codes": (np.zeros((1, 3, 10), np.int64), "INT64")}, "has 3 codebooks"),
        ("preference", {"prompt": PROMPT, "codes": CODES_2D}, "must have shape \\[1, K, T\\]"),
        ("text-adherence", {"prompt": PROMPT, "codes": (np.zeros((1, 4, 10), np.int64), "INT64")}, "scores audio"),
        ("quality", {"prompt": PROMPT}, "send 'audio'"),
        ("quality", {"prompt": TWO_PROMPTS, "audio": (np.zeros((2, RATE), np.float32), "FP32"),
                     "sample_rate": TWO_RATES}, "same sample_rate, got 16000 Hz, 32000 Hz"),
        ("quality", {"prompt": TWO_PROMPTS, "audio": (np.zeros((2, RATE), np.float32), "FP32"),
                     "sample_rate": (np.full(3, RATE, np.int32), "INT32")}, r"'sample_rate' must have shape \[2\]"),
    ],
    ids=["audio-1d", "nan", "inf", "no-rate", "bad-rate", "codes-range", "codes-k", "codes-shape", "codes-for-audio",
         "nothing", "mixed-rates", "rates-for-3-clips"],
)  # fmt: skip
def test_bad_clips_are_a_400_with_a_sentence(service, model, tensors, message):
    with pytest.raises(InferenceServerException) as error:
        _infer(service, model, **tensors)
    assert error.value.status() == "400"
    assert re.search(message, error.value.message())


def test_a_bad_request_does_not_fail_its_batch_mates(service):
    good = {"prompt": PROMPT, "codes": (np.zeros((1, 4, 10), np.int64), "INT64")}
    bad = {"prompt": PROMPT, "codes": (np.full((1, 4, 10), 999, np.int64), "INT64")}

    def call(tensors):
        try:
            return _infer(service, "preference", **tensors).as_numpy("score")
        except InferenceServerException as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, [good, bad, good, bad]))
    assert [isinstance(r, InferenceServerException) for r in results] == [False, True, False, True]
    assert results[0].shape == (1,)


def test_the_service_reports_its_models(service):
    client = httpclient.InferenceServerClient(service.http_url)
    assert client.is_server_ready()
    for name in ("text-adherence", "quality", "preference"):
        assert client.is_model_ready(name)
        assert [o["name"] for o in client.get_model_metadata(name)["outputs"]] == ["score"]
    client.close()


# KServe is imported only in a subprocess: its protos collide with tritonclient.grpc's in one process
LOAD_TWICE = """
import threading
from musicrl.config import BatchingConfig
from services.rewards.model import RewardServingModel

built, started, release = [], threading.Event(), threading.Event()

def build():
    built.append(1)
    started.set()
    release.wait(5)
    return object()

model = RewardServingModel("quality", build, BatchingConfig(), max_clips=4)
first = threading.Thread(target=model.load)
first.start()
started.wait(30)
again = model.load()  # as KServe's data plane calls it for a model that is not ready yet
release.set()
first.join(30)
print(len(built), again, model.ready)
"""


def test_a_second_load_while_the_first_runs_builds_nothing_and_reports_not_ready():
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", LOAD_TWICE], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False", "True"]
