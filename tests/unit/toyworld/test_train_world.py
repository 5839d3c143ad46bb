"""Tests of ``musicrl toyworld train`` at its quick budget: every model saved, judged, hashed and loadable."""

import json
import shutil
from pathlib import Path

import pytest

from musicrl.cli import main
from musicrl.errors import InvalidRequest
from musicrl.models.clap_loading import load_clap
from musicrl.models.loading import load_musicgen
from musicrl.rewards.quality import load_quality
from musicrl.toyworld.manifest import file_hashes, read_manifest
from tests.utils.tiny_models import differing_tensors


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toyworld")
    main(["toyworld", "train", "--quick", "true", "--threads", "1", "--out-dir", str(out)])
    return out


def test_every_model_is_saved_with_a_manifest_whose_hashes_match(trained: Path) -> None:
    manifest = read_manifest(trained)

    assert set(manifest["models"]) == {"musicgen", "clap", "quality"}
    for name, entry in manifest["models"].items():
        assert entry["uri"] == f"toy://{name}"
        assert entry["files"] == file_hashes(trained / name)
        assert "model.safetensors" in entry["files"]
    assert manifest["command"] == "musicrl toyworld train --quick true --threads 1"
    assert set(manifest["configs"]) == {"codec", "policy", "clap", "quality"}


def test_the_policy_is_judged_by_the_probes_on_held_out_captions(trained: Path) -> None:
    metrics = read_manifest(trained)["models"]["musicgen"]["metrics"]

    assert 0.0 <= metrics["policy/adherence/mean"] <= 1.0
    assert {"codec/mel_distance", "codec/snr_db", "codec/probe_reconstructed/pitch"} <= set(metrics)
    assert metrics["codec/probe_original/pitch"] == 1.0  # the probes hear the clean originals


def test_the_platform_loaders_read_every_saved_model(trained: Path) -> None:
    policy = load_musicgen(str(trained / "musicgen"))
    clap = load_clap(str(trained / "clap"))
    quality = load_quality(str(trained / "quality"))

    assert policy.model.config.audio_encoder.frame_rate == 50
    assert policy.metadata is not None and policy.metadata.kind == "policy"
    assert clap.sample_rate == 48_000
    assert quality.metadata is not None


def test_training_one_model_keeps_the_others_and_their_metrics(trained: Path) -> None:
    before = read_manifest(trained)
    policy_files = before["models"]["musicgen"]["files"]

    main(["toyworld", "train", "--quick", "true", "--threads", "1", "--out-dir", str(trained), "--models", "clap"])

    after = read_manifest(trained)
    assert after["models"]["musicgen"] == before["models"]["musicgen"]
    assert file_hashes(trained / "musicgen") == policy_files
    assert after["models"]["clap"]["files"] == file_hashes(trained / "clap")
    assert json.loads((trained / "musicgen" / "config.json").read_text())["model_type"] == "musicgen"


def test_the_quality_head_needs_the_clap_beside_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["toyworld", "train", "--quick", "true", "--out-dir", str(tmp_path), "--models", "quality"])

    assert exit_info.value.code != 0


def test_a_policy_retrained_over_the_kept_codec_keeps_its_weights_metrics_and_commands(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "toyworld"
    shutil.copytree(trained, out)
    before = read_manifest(out)
    codec_before = load_musicgen(str(out / "musicgen")).model.audio_encoder
    codec_plot = (out / "musicgen" / "codec_training_curves.png").read_bytes()

    argv = ["toyworld", "train", "--quick", "true", "--threads", "1", "--out-dir", str(out)]
    main([*argv, "--models", "musicgen", "--keep-codec", "true"])

    after = read_manifest(out)["models"]["musicgen"]
    policy = load_musicgen(str(out / "musicgen")).model
    assert differing_tensors(policy.audio_encoder, codec_before) == []
    assert {k: v for k, v in after["metrics"].items() if k.startswith("codec/")} == {
        k: v for k, v in before["models"]["musicgen"]["metrics"].items() if k.startswith("codec/")
    }
    assert after["commands"] == [
        "musicrl toyworld train --quick true --threads 1",
        "musicrl toyworld train --quick true --threads 1 --models musicgen --keep-codec true",
    ]
    assert (out / "musicgen" / "codec_training_curves.png").read_bytes() == codec_plot
    assert after["files"] == file_hashes(out / "musicgen")
    assert read_manifest(out)["configs"]["codec"] == before["configs"]["codec"]


def test_keeping_the_codec_needs_the_policy_among_the_models(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["toyworld", "train", "--out-dir", str(tmp_path), "--models", "clap", "--keep-codec", "true"])

    assert exit_info.value.code == InvalidRequest.exit_code
