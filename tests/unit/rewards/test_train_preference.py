import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from musicrl.data.clips import ClipStore
from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.loading import load_musicgen
from musicrl.rewards import train_preference as trainer
from musicrl.rewards.base import ClipBatch
from musicrl.rewards.clap_preference import (
    ClapPreferenceTrainConfig,
    load_clap_preference,
    train_clap_preference,
)
from musicrl.rewards.preference import load_preference
from musicrl.rewards.preference_data import read_pairs
from musicrl.rewards.train_preference import (
    PreferenceTrainConfig,
    bt_loss,
    pair_accuracy,
    train_preference,
)
from tests.utils.synthetic import random_codes_snapshot, read_pairs_table
from tests.utils.tiny_models import TINY_MUSICGEN_URI, differing_tensors


@pytest.fixture(autouse=True)
def _temporary_files_under_tmp_path(tmp_path, monkeypatch):
    """The trainer packs a snapshot's codes in a temporary folder when the snapshot has none: keep it here."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _config(snapshot_url: str, out: Path, **overrides) -> PreferenceTrainConfig:
    # no DataLoader workers: forking them costs more than these 10-frame clips take to read
    fields = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "min_pairs": 20, "num_workers": 0}
    fields.update(overrides)
    return PreferenceTrainConfig(snapshot_url=snapshot_url, init_uri=TINY_MUSICGEN_URI, out_url=str(out), **fields)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bt_loss_is_the_cross_entropy_of_sigma_of_the_margin():
    margin, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.5])  # A wins, B wins, tie
    per_pair = [
        -math.log(_sigmoid(0.0)),
        -math.log(1 - _sigmoid(2.0)),
        -(0.5 * math.log(_sigmoid(-1.0)) + 0.5 * math.log(1 - _sigmoid(-1.0))),
    ]
    assert float(bt_loss(margin, labels)) == pytest.approx(np.mean(per_pair), rel=1e-6)


def test_pair_accuracy_counts_decisive_pairs_and_half_for_equal_rewards():
    margin = np.array([1.0, -1.0, 0.5, 0.0, 3.0])
    labels = np.array([1.0, 1.0, 0.0, 1.0, 0.5])  # right, wrong, wrong, tie in r, not decisive
    assert pair_accuracy(margin, labels) == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert math.isnan(pair_accuracy(margin[4:], labels[4:]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"ties": "keep"}, "ties must be one of"),
        ({"grad_clip": float("nan")}, "grad_clip must be >= 0"),
        ({"out_url": ""}, "out_url is required"),
        ({"window_frames": 0}, "window_frames must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_config_refuses_bad_values(overrides, message, tmp_path):
    fields = {"snapshot_url": str(tmp_path), "init_uri": TINY_MUSICGEN_URI, "out_url": str(tmp_path / "o")}
    fields.update(overrides)
    with pytest.raises(InvalidRequest, match=message):
        PreferenceTrainConfig(**fields)


def test_none_answers_are_dropped_and_ties_kept_soft_or_dropped(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, train_pairs=12, validation_pairs=0, choices=("a", "b", "tie", "none"))
    soft = read_pairs(snapshot.url, "train", ties="soft")
    dropped = read_pairs(snapshot.url, "train", ties="drop")
    assert (len(soft), soft.dropped_none, soft.dropped_ties) == (9, 3, 0)
    assert sorted(set(soft.labels.tolist())) == [0.0, 0.5, 1.0]
    assert (len(dropped), dropped.dropped_ties, dropped.decisive) == (6, 3, 6)


def test_a_folder_that_is_not_a_snapshot_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="preferences_train.parquet does not exist"):
        train_preference(_config(str(tmp_path), tmp_path / "out"))


def test_too_few_pairs_are_refused_with_the_count(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, train_pairs=10, validation_pairs=2, choices=("a", "none"))
    with pytest.raises(InvalidRequest, match=r"has 5 usable training pairs \(5 'none' answers.*min_pairs=20"):
        train_preference(_config(snapshot.url, tmp_path / "out"))


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_snapshot_without_decisive_validation_or_test_pairs_is_refused(tmp_path, split):
    snapshot = random_codes_snapshot(tmp_path, **{f"{split}_pairs": 0})
    with pytest.raises(InvalidRequest, match=f"no decisive {split} pairs; raise the snapshot's {split}_fraction"):
        train_preference(_config(snapshot.url, tmp_path / "out"))


def test_the_epoch_is_chosen_on_validation_and_test_is_scored_once_on_the_kept_model(tmp_path, monkeypatch):
    snapshot = random_codes_snapshot(tmp_path, train_pairs=24)
    scored: list[str] = []
    evaluate = trainer.evaluate

    def spy(model, pairs, *args, **kwargs):
        scored.append(pairs.split)
        return evaluate(model, pairs, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", spy)
    result = train_preference(_config(snapshot.url, tmp_path / "out", epochs=3))

    assert scored == ["validation"] * 4 + ["test"]  # the untrained model and each epoch, then test once
    assert not [key for row in result.history for key in row if key.startswith("test/")]
    validation = [result.metrics["validation/accuracy_init"]] + [row["validation/accuracy"] for row in result.history]
    assert result.best_epoch == int(np.argmax(validation))  # the first best validation epoch, whatever test says
    # the reported test accuracy is the saved model's, recomputed here from the test rows alone
    model = load_preference(result.uri)
    rows = read_pairs_table(snapshot.url, "test")
    prompts = [row["prompt"] for row in rows]
    clips = [np.load(row[f"clip_{side}_codes_uri"].removeprefix("file://")) for side in "ab" for row in rows]
    with torch.no_grad():
        rewards = model.score_codes(prompts + prompts, clips)  # [2N]: A rows then B rows, as the trainer batches
    r_a, r_b = rewards[: len(rows)], rewards[len(rows) :]
    labels = np.array([row["label"] for row in rows])
    assert result.metrics["test/accuracy"] == pytest.approx(pair_accuracy((r_a - r_b).numpy(), labels))
    assert result.metrics["data/test_pairs"] == len(rows) == 8


def test_a_missing_codes_file_is_refused_with_its_uri(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, pack=False)  # taken without packed codes: the trainer packs them
    gone = read_pairs_table(snapshot.url, "test")[0]["clip_b_codes_uri"]
    Path(gone.removeprefix("file://")).unlink()
    with pytest.raises(InvalidRequest, match=f"the codes file {gone} is missing"):
        train_preference(_config(snapshot.url, tmp_path / "out"))


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.full((4, 10), 128), r"outside \[0, 128\)"),
        (np.zeros((3, 10), dtype=np.int64), "has 3 codebooks; this model uses 4"),
        (np.zeros((4, 10), dtype=np.float32), "must hold integer codes"),
    ],
)
def test_codes_the_policy_cannot_read_are_refused_with_their_uri(tmp_path, codes, message):
    snapshot = random_codes_snapshot(tmp_path, pack=False)  # the clip is changed below, before packing
    row = read_pairs_table(snapshot.url, "train")[3]
    ClipStore(snapshot.clip_store_url).put_codes(row["clip_a_id"], codes)
    if codes.dtype.kind == "f":  # put_codes writes int64: write the float file directly
        np.save(row["clip_a_codes_uri"].removeprefix("file://"), codes)
    with pytest.raises(InvalidRequest, match=message) as raised:
        train_preference(_config(snapshot.url, tmp_path / "out"))
    assert row["clip_a_codes_uri"] in str(raised.value)


def test_training_writes_metrics_plot_and_a_loadable_checkpoint(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, train_pairs=24)
    result = train_preference(_config(snapshot.url, tmp_path / "out", epochs=2))
    assert [json.loads(line)["epoch"] for line in Path(result.metrics_url).read_text().splitlines()] == [1, 2]
    assert Path(result.plot_url).read_bytes()[:4] == b"\x89PNG"
    metadata = json.loads((tmp_path / "out" / "musicrl.json").read_text())
    assert metadata["kind"] == "reward/preference"
    assert {"test/accuracy", "test/loss", "validation/accuracy", "best_epoch"} <= set(metadata["metrics"])
    assert [metadata["metrics"][f"data/{s}_pairs"] for s in ("train", "validation", "test")] == [24, 8, 8]

    model = load_preference(result.uri)
    policy = load_musicgen(TINY_MUSICGEN_URI).model
    assert differing_tensors(model.backbone.text_encoder, policy.text_encoder) == []  # frozen by default
    if result.best_epoch:  # the saved epoch trained the decoder
        assert differing_tensors(model.backbone.decoder.model.decoder, policy.decoder.model.decoder)


def test_clips_longer_than_the_window_train_on_both_ends_and_the_window_is_saved(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, frames=10)
    result = train_preference(_config(snapshot.url, tmp_path / "out", epochs=1, window_frames=8))  # every clip: 2
    assert json.loads((tmp_path / "out" / "preference_head.json").read_text())["window_frames"] == 8
    assert load_preference(result.uri).window_frames == 8


def test_unfreezing_the_text_encoder_trains_it(tmp_path):
    # A always wins and its codes differ from B's, and three steps at lr 1e-2 move the margins well clear of 0
    # (validation accuracy ~0.9; from near-zero margins a rounding difference could flip it to chance)
    snapshot = random_codes_snapshot(tmp_path, train_pairs=24, choices=("a",), separable=True)
    result = train_preference(_config(snapshot.url, tmp_path / "out", epochs=1, lr=1e-2, freeze_text_encoder=False))
    model = load_preference(result.uri)
    assert result.best_epoch == 1
    assert differing_tensors(model.backbone.text_encoder, load_musicgen(TINY_MUSICGEN_URI).model.text_encoder)


def test_clap_baseline_trains_saves_and_loads(tmp_path):
    snapshot = random_codes_snapshot(tmp_path, train_pairs=24)
    uri, metrics = train_clap_preference(
        ClapPreferenceTrainConfig(snapshot_url=snapshot.url, out_url=str(tmp_path / "clap-rm"), epochs=5)
    )
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and metrics["train/loss"] < math.log(2)
    reward = load_clap_preference(uri)
    assert reward.name == "preference" and float(reward.head.linear.weight.abs().sum()) > 0
    rng = np.random.default_rng(0)
    batch = ClipBatch(
        prompts=["calm", "loud"], audio=[rng.standard_normal(16_000).astype(np.float32)] * 2, sample_rate=16_000
    )
    scores = reward.score(batch)
    assert scores.shape == (2,) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, load_clap_preference(uri).score(batch))
    other = tmp_path / "policy"
    other.mkdir()
    (other / "musicrl.json").write_text(json.dumps({"kind": "policy"}))
    with pytest.raises(IncompatibleModel, match="'policy' checkpoint, not 'reward/clap-preference'"):
        load_clap_preference(str(other))
