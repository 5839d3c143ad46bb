"""Tests of snapshots: the joins and filters, the prompt split, content addressing, the manifest and the CLI."""

import json
import logging
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from musicrl.cli import main
from musicrl.data import feedback
from musicrl.data.snapshot import PREFERENCES_SCHEMA, RATINGS_SCHEMA, create_snapshot, read_events, split_of
from musicrl.data.snapshot_config import SPLITS, SnapshotConfig
from musicrl.errors import InvalidRequest
from musicrl.v1 import events_pb2
from tests.utils import events


A, B, TIE, NONE = events_pb2.CHOICE_A, events_pb2.CHOICE_B, events_pb2.CHOICE_TIE, events_pb2.CHOICE_NONE
FILES = [f"{kind}_{split}" for kind in ("preferences", "ratings") for split in SPLITS]


def _feedback_events() -> list:
    """One case per rule; the comment says what each comparison is for."""
    c1 = events.listened_pair("c1", "lofi piano with rain", A)  # kept, label 1
    c2 = events.listened_pair("c2", "fast techno", B)  # kept, label 0
    c3 = events.listened_pair("c3", "sad violin", A)
    del c3[4]  # the playback of clip B: only A was listened to
    c4 = events.listened_pair("c4", "jazz trio", A, minutes=3)  # the user changed their mind: B at minute 10
    c4.append(events.preference("c4", B, minutes=10))
    c5 = events.listened_pair("c5", "drum solo", A)  # u1 listened, but u2 answered
    c5[-1] = events.preference("c5", A, user="u2")
    c6 = events.listened_pair("c6", "choir", TIE)
    c7 = events.listened_pair("c7", "noise", NONE)
    c8 = [events.preference("c-missing", A)]  # no comparison_served
    c9 = events.listened_pair("c9", "harp", A)
    del c9[1]  # the generation of clip B: an unknown clip
    c11 = events.listened_pair("c11", "banjo", events_pb2.CHOICE_UNSPECIFIED)
    ratings = [
        events.rating("c1-a", 4),  # kept
        events.rating("c2-b", 2, rater="r2"),  # kept
        events.rating("nowhere", 3),  # unknown clip
        events.rating("c1-b", 0),  # unset score
    ]
    everything = c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c11 + ratings
    return everything + c1 + [ratings[0]]  # c1 and the first rating recorded twice (a re-delivered batch)


EXPECTED_PREFERENCES = {
    "read": 12,
    "duplicates_dropped": 1,
    "superseded": 1,
    "unknown_comparison": 1,
    "unknown_clip": 1,
    "invalid_choice": 1,
    "not_listened": 2,
    "ties_dropped": 1,
    "none_dropped": 1,
}
KEPT_PROMPTS = ["lofi piano with rain", "fast techno", "jazz trio"]  # c1, c2, c4


def _config(**fields) -> SnapshotConfig:
    """Settings without packed codes: the factory events point at s3:// clips that exist nowhere."""
    return SnapshotConfig(consolidate_codes=False, **fields)


@pytest.fixture
def feedback_events() -> list:
    return _feedback_events()


@pytest.fixture
def dataset(tmp_path: Path, feedback_events: list) -> Path:
    root = tmp_path / "events"
    events.write_dataset(root, feedback_events)
    return root


def _rows(uri: str, *names: str) -> list[dict]:
    return [row for name in names for row in pq.read_table(f"{uri}/{name}.parquet").to_pylist()]


def _preferences(uri: str) -> dict[str, dict]:
    return {row["comparison_id"]: row for row in _rows(uri, *(f"preferences_{s}" for s in SPLITS))}


def test_joins_and_filters_keep_only_listened_answers(dataset, tmp_path):
    result = create_snapshot(str(dataset), str(tmp_path / "out"), _config())
    rows = _preferences(result.uri)
    assert sorted(rows) == ["c1", "c2", "c4"]
    assert len(_rows(result.uri, *(f"preferences_{s}" for s in SPLITS))) == 3  # c1 recorded twice, kept once
    c1 = rows["c1"]
    assert (c1["choice"], c1["label"], c1["user_id"], c1["prompt"]) == ("a", 1.0, "u1", "lofi piano with rain")
    assert (c1["clip_a_id"], c1["clip_b_id"]) == ("c1-a", "c1-b")  # the comparison's A/B, not display order
    assert c1["clip_a_audio_uri"] == "s3://musicrl/clips/c1-a.wav"
    assert c1["clip_b_codes_uri"] == "s3://musicrl/clips/c1-b.codes.npy"
    assert (c1["clip_a_policy_model_uri"], c1["clip_a_policy_version"]) == ("s3://p/v1", "v1")
    assert (c1["clip_b_policy_model_uri"], c1["clip_b_policy_version"]) == ("s3://p/v2", "v2")
    assert (c1["a_listened_ms"], c1["b_listened_ms"]) == (10_000, 6_000)
    assert c1["occurred_at"] == events.at(3)
    assert c1["split"] == split_of("lofi piano with rain", SnapshotConfig())
    assert rows["c2"]["label"] == 0.0
    assert (rows["c4"]["choice"], rows["c4"]["occurred_at"]) == ("b", events.at(10))  # the latest answer wins
    assert pq.read_schema(f"{result.uri}/preferences_train.parquet").names == PREFERENCES_SCHEMA.names
    assert pq.read_schema(f"{result.uri}/ratings_test.parquet").names == RATINGS_SCHEMA.names


def test_manifest_counts_are_exact(dataset, tmp_path):
    result = create_snapshot(str(dataset), str(tmp_path / "out"), _config())
    manifest = json.loads(Path(result.uri, "manifest.json").read_text())
    kept = {f"kept_{s}": sum(split_of(p, SnapshotConfig()) == s for p in KEPT_PROMPTS) for s in SPLITS}
    expected = {**EXPECTED_PREFERENCES, **kept}
    assert manifest["counts"]["preferences"] == expected
    assert sum(v for k, v in expected.items() if k != "read") == expected["read"]  # every row accounted for once
    assert sum(kept.values()) == 3
    ratings = manifest["counts"]["ratings"]
    assert {k: v for k, v in ratings.items() if not k.startswith("kept")} == {
        "read": 5,
        "duplicates_dropped": 1,
        "unknown_clip": 1,
        "invalid_score": 1,
    }
    assert sum(ratings[f"kept_{s}"] for s in SPLITS) == 2
    assert manifest["hash"] == result.digest and manifest["uri"] == result.uri
    assert manifest["config"]["ties"] == "drop" and manifest["source_dataset_url"] == str(dataset)
    assert sorted(manifest["files"]) == sorted(f"{f}.parquet" for f in FILES)
    rated = {r["clip_id"]: r for r in _rows(result.uri, *(f"ratings_{s}" for s in SPLITS))}
    assert sorted(rated) == ["c1-a", "c2-b"]
    assert (rated["c1-a"]["score"], rated["c1-a"]["prompt"]) == (4, "lofi piano with rain")
    assert rated["c2-b"]["policy_version"] == "v2" and rated["c2-b"]["audio_uri"] == "s3://musicrl/clips/c2-b.wav"


def test_listening_rule_can_be_relaxed_or_tightened(dataset, tmp_path):
    relaxed = create_snapshot(str(dataset), str(tmp_path / "out"), _config(require_listened=False))
    rows = _preferences(relaxed.uri)
    assert sorted(rows) == ["c1", "c2", "c3", "c4", "c5"]
    assert rows["c3"]["b_listened_ms"] == 0  # never played
    assert rows["c5"]["a_listened_ms"] == 0  # u1's playbacks do not count for u2
    assert relaxed.preferences.not_listened == 0
    # clip B of every pair was played 6 s of 10 s without reaching the end: a 7 s minimum drops them all
    # (c1-c7; the listening rule comes before the tie and none rules), and so does a share of 70%
    for strict_config in (_config(min_listened_ms=7_000), _config(min_listened_share=0.7)):
        strict = create_snapshot(str(dataset), str(tmp_path / "out"), strict_config)
        assert _preferences(strict.uri) == {}
        assert strict.preferences.not_listened == 7


def test_a_playback_must_cover_a_share_of_its_clip_unless_it_reached_the_end(tmp_path):
    pair = events.listened_pair("c1", "lofi", A)
    pair[4] = events.playback("c1", "c1-b", 4_000)  # 40% of the 10 s clip: under the default half
    short = tmp_path / "short"
    events.write_dataset(short, pair)
    assert create_snapshot(str(short), str(tmp_path / "out"), _config()).preferences.not_listened == 1
    relaxed = create_snapshot(str(short), str(tmp_path / "out"), _config(min_listened_share=0.4))
    assert sorted(_preferences(relaxed.uri)) == ["c1"]
    pair[4] = events.playback("c1", "c1-b", 1, completed=True)  # a 1 ms report that reached the end counts
    ended = tmp_path / "ended"
    events.write_dataset(ended, pair)
    assert sorted(_preferences(create_snapshot(str(ended), str(tmp_path / "out2"), _config()).uri)) == ["c1"]


def test_ties_and_none_are_kept_on_request(dataset, tmp_path):
    result = create_snapshot(str(dataset), str(tmp_path / "out"), _config(ties="keep", none="keep"))
    rows = _preferences(result.uri)
    assert rows["c6"]["choice"] == "tie" and rows["c6"]["label"] == 0.5
    assert rows["c7"]["choice"] == "none" and rows["c7"]["label"] is None
    assert (result.preferences.ties_dropped, result.preferences.none_dropped) == (0, 0)


def test_same_content_gives_the_same_folder_and_other_settings_another(dataset, feedback_events, tmp_path):
    out = tmp_path / "out"
    first = create_snapshot(str(dataset), str(out), _config())
    written = {f: Path(first.uri, f"{f}.parquet").stat().st_mtime_ns for f in FILES}
    again = create_snapshot(str(dataset), str(out), _config())
    assert (again.uri, again.digest, again.created) == (first.uri, first.digest, False)
    assert {f: Path(first.uri, f"{f}.parquet").stat().st_mtime_ns for f in FILES} == written  # nothing rewritten
    # the same events laid out in other files, in another order, give the same snapshot
    relaid = tmp_path / "relaid"
    events.write_dataset(relaid, list(reversed(feedback_events)), files_per_kind=3)
    assert create_snapshot(str(relaid), str(out), _config()).digest == first.digest
    other = create_snapshot(str(dataset), str(out), _config(split_salt="another"))
    assert other.uri != first.uri
    assert len(list(out.iterdir())) == 2
    assert Path(first.uri).name == first.digest[:16]


def test_split_is_stable_by_prompt_and_near_the_fractions():
    config = SnapshotConfig(validation_fraction=0.2, test_fraction=0.1)
    prompts = [f"prompt number {i}" for i in range(4000)]
    splits = [split_of(p, config) for p in prompts]
    assert splits == [split_of(p, config) for p in prompts]
    assert 0.17 < splits.count("validation") / len(prompts) < 0.23
    assert 0.08 < splits.count("test") / len(prompts) < 0.12
    none_held_out = SnapshotConfig(validation_fraction=0.0, test_fraction=0.0)
    assert {split_of(p, none_held_out) for p in prompts[:100]} == {"train"}
    assert {split_of(p, SnapshotConfig(validation_fraction=0.0, test_fraction=1.0)) for p in prompts[:100]} == {"test"}
    assert {split_of(p, SnapshotConfig(validation_fraction=1.0, test_fraction=0.0)) for p in prompts[:100]} == {
        "validation"
    }
    other_salt = SnapshotConfig(validation_fraction=0.2, test_fraction=0.1, split_salt="x")
    assert [split_of(p, other_salt) for p in prompts] != splits


def test_no_prompt_lands_in_two_splits(tmp_path):
    pairs = []
    for i in range(120):
        pairs += events.listened_pair(f"cmp-{i}", f"prompt {i % 40}", A)  # every prompt in three comparisons
    events.write_dataset(tmp_path / "events", pairs)
    config = _config(validation_fraction=0.3, test_fraction=0.3)
    result = create_snapshot(str(tmp_path / "events"), str(tmp_path / "out"), config)
    prompts = {s: {r["prompt"] for r in _rows(result.uri, f"preferences_{s}")} for s in SPLITS}
    assert all(prompts.values())  # each split holds some prompts...
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert not prompts[SPLITS[first]] & prompts[SPLITS[second]]  # ...and shares none with another
    assert len(set().union(*prompts.values())) == 40
    for split in SPLITS:
        rows = _rows(result.uri, f"preferences_{split}")
        assert {r["split"] for r in rows} == {split}
        assert len(rows) == 3 * len(prompts[split])  # all three comparisons of a prompt go to its split
        ids = [r["preference_event_id"] for r in rows]
        assert ids == sorted(ids)  # deterministic order
    manifest = json.loads(Path(result.uri, "manifest.json").read_text())
    assert [manifest["counts"]["preferences"][f"kept_{s}"] for s in SPLITS] == [3 * len(prompts[s]) for s in SPLITS]


def test_events_are_read_batch_by_batch_and_only_the_columns_the_joins_use(dataset):
    tables = read_events(str(dataset), batch_rows=2)  # every kind spans several batches
    assert {kind: tuple(table.column_names) for kind, table in tables.items()} == feedback.EVENT_COLUMNS
    assert tables["preference_submitted"].num_rows == EXPECTED_PREFERENCES["read"]  # duplicates kept for the joins
    whole = read_events(str(dataset))  # one batch per file
    for kind, table in tables.items():
        assert sorted(map(str, table.to_pylist())) == sorted(map(str, whole[kind].to_pylist())), kind


def test_playback_reports_reduce_to_one_row_per_listener_and_clip_as_they_are_read(tmp_path):
    pair = events.listened_pair("c1", "lofi", A)
    progress = [events.playback("c1", "c1-b", ms) for ms in range(100, 6_000, 100)]  # reports before the last 6 s
    events.write_dataset(tmp_path / "many", pair + progress + pair[3:5], files_per_kind=3)  # and duplicates
    events.write_dataset(tmp_path / "few", pair)
    tables = read_events(str(tmp_path / "many"), batch_rows=7)
    assert tables["playback"].num_rows == 2  # clip A and clip B of c1, for u1
    b = tables["playback"].filter(pc.equal(tables["playback"]["clip_id"], "c1-b")).to_pylist()
    assert [(r["listened_ms"], r["completed"]) for r in b] == [(6_000, False)]
    many = create_snapshot(str(tmp_path / "many"), str(tmp_path / "out"), _config())
    few = create_snapshot(str(tmp_path / "few"), str(tmp_path / "out"), _config())
    assert many.digest == few.digest  # the same answer, listened to the same way


def test_an_empty_dataset_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="no preferences in"):
        create_snapshot(str(tmp_path / "nothing"), str(tmp_path / "out"), _config())


def test_config_is_checked():
    with pytest.raises(InvalidRequest, match="ties must be 'drop' or 'keep'"):
        SnapshotConfig(ties="maybe")
    with pytest.raises(InvalidRequest, match="test_fraction must be between 0 and 1"):
        SnapshotConfig(test_fraction=1.5)
    with pytest.raises(InvalidRequest, match=r"validation_fraction \+ test_fraction must be at most 1"):
        SnapshotConfig(validation_fraction=0.6, test_fraction=0.5)


@pytest.fixture
def _no_musicrl_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("MUSICRL_") and n != "MUSICRL_CACHE_DIR"]:
        monkeypatch.delenv(name)


def _run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_exits_2_with_a_sentence_on_an_empty_dataset(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.ERROR):
        status = _run_cli(["dataset", "snapshot", "--dataset", str(empty), "--out", str(tmp_path / "out")])
    assert status == 2
    assert f"no preferences in {empty}" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_flags_reach_the_snapshot(dataset, tmp_path, caplog, capsys):
    argv = ["dataset", "snapshot", "--dataset", str(dataset), "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.INFO):
        status = _run_cli(
            argv
            + [
                "--require-listened",
                "false",
                "--ties",
                "keep",
                "--min-listened-ms",
                "10",
                "--consolidate-codes",
                "false",
            ]
        )
    assert status == 0
    (folder,) = (tmp_path / "out").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"] == {
        "require_listened": False,
        "min_listened_ms": 10,
        "min_listened_share": 0.5,
        "ties": "keep",
        "none": "drop",
        "validation_fraction": 0.1,
        "test_fraction": 0.1,
        "split_salt": "musicrl",
        "consolidate_codes": False,
        "codes_shard_bytes": 64 * 2**20,
    }
    assert manifest["codes"] is None
    assert str(folder) in caplog.text
    assert capsys.readouterr().out == f"{folder}\n"  # the folder is the output; the rest is log
    assert _run_cli(argv + ["--ties", "sometimes"]) == 2
