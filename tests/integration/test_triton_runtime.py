"""The Triton runtime's own promises: a deterministic repository, rewards that score as in process, clear errors.

A real tritonserver (the nvidia-pytriton wheel's binary, set up by ``make setup``) serves the exported
repository; tritonclient speaks to it. The generator's contract is in test_generator_contract.py.
"""

import filecmp
import subprocess
import sys

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from musicrl.rewards.base import ClipBatch
from musicrl.rewards.preference import PreferenceRewardModel
from musicrl.rewards.registry import load_reward
from tests.utils.processes import REPO_ROOT, export_triton_repository, triton_server
from tests.utils.v2_inputs import prompts


pytestmark = pytest.mark.slow

TINY = "tiny://musicgen?seed=0"
CLAP = "tiny://clap?seed=0"
QUALITY = "tiny://quality?seed=0"
PROMPTS = ["a calm piano melody", "fast techno"]


@pytest.fixture(scope="module")
def preference_uri(tmp_path_factory):
    model = PreferenceRewardModel.from_policy(TINY)
    with torch.no_grad():  # a head that scores clips apart, so that agreement means something
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=torch.Generator().manual_seed(0)))
    return model.save(str(tmp_path_factory.mktemp("preference") / "model"), metrics={})


@pytest.fixture(scope="module")
def repository(tmp_path_factory, preference_uri):
    args = ["--text-adherence-uri", CLAP, "--quality-uri", QUALITY, "--preference-uri", preference_uri]
    return export_triton_repository(tmp_path_factory.mktemp("triton") / "repository", {}, [*args, "--model", TINY])


@pytest.fixture(scope="module")
def http(repository, tmp_path_factory):
    with triton_server(repository, tmp_path_factory.mktemp("logs")) as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        yield client
        client.close()


def test_exporting_twice_writes_the_same_files(repository, tmp_path, preference_uri):
    args = ["--text-adherence-uri", CLAP, "--quality-uri", QUALITY, "--preference-uri", preference_uri]
    again = export_triton_repository(tmp_path / "again", {}, [*args, "--model", TINY])
    files = sorted(p.relative_to(repository) for p in repository.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 8  # four models, each a config.pbtxt and 1/model.py
    match, mismatch, errors = filecmp.cmpfiles(repository, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and len(match) == len(files)


def test_the_rewards_score_the_generators_clips_as_in_process(http, preference_uri):
    generated = http.infer(
        "generator", [prompts(httpclient, [p.encode() for p in PROMPTS])], parameters={"duration_s": 1.0, "seed": 5}
    )
    audio, samples = generated.as_numpy("audio"), generated.as_numpy("num_samples")
    rate, codes = int(generated.as_numpy("sample_rate")[0]), generated.as_numpy("codes")
    clips = ClipBatch(
        PROMPTS,
        audio=[audio[i, : samples[i]] for i in range(len(PROMPTS))],
        sample_rate=rate,
        codes=[codes[i] for i in range(len(PROMPTS))],
    )
    for name, uri, reads in (
        ("text-adherence", CLAP, ("audio", "num_samples", "sample_rate")),
        ("quality", QUALITY, ("audio", "num_samples", "sample_rate")),
        ("preference", preference_uri, ("codes",)),
    ):
        inputs = [prompts(httpclient, [p.encode() for p in PROMPTS])]
        for output in reads:  # the generator's outputs, passed on unchanged
            array = generated.as_numpy(output)
            tensor = httpclient.InferInput(output, list(array.shape), generated.get_output(output)["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = http.infer(name, inputs).as_numpy("score")
        expected = load_reward(name, uri).score(clips)
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5, err_msg=name)
        assert served.shape == (len(PROMPTS),) and np.ptp(served) > 0, name  # two clips, two scores


def test_wav_audio_is_refused_with_a_sentence_and_uri_needs_a_store(http):
    for audio_format, message in (("wav", "not served by the Triton runtime"), ("uri", "needs a clip store")):
        with pytest.raises(InferenceServerException) as error:
            http.infer("generator", [prompts(httpclient, [b"x"])], parameters={"audio_format": audio_format})
        assert error.value.status() == "400" and message in error.value.message()


def test_serving_without_a_repository_is_a_sentence_and_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "musicrl", "serve", "triton", "--repository", str(tmp_path / "none")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "musicrl triton export" in result.stderr
