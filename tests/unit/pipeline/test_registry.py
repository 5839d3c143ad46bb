"""The policy registry: numbered versions written once, on a local disk, fsspec's memory store and S3 (moto)."""

import datetime
import json
import threading
from pathlib import Path

import fsspec
import pytest

from musicrl.errors import InvalidRequest, NotFound
from musicrl.pipeline import registry as registry_module
from musicrl.pipeline.registry import PolicyRegistry, PolicyVersion, version_table


WHEN = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)


def register(registry: PolicyRegistry, model_uri: str, **extra: object) -> PolicyVersion:
    fields: dict = dict(
        parent_uri="hf://facebook/musicgen-small",
        training_run="run-1",
        snapshot_hash="ab12" * 16,
        metrics={"win_rate/preference": 0.61, "kl": 0.12},
        gate_report_uri="s3://artifacts/gate/report.md",
        created_at=WHEN,
    )
    return registry.register(model_uri, **(fields | extra))  # type: ignore[arg-type]


def test_versions_are_numbered_in_order_and_read_back_whole(memory_filesystem):
    registry = PolicyRegistry("memory://artifacts/registry")
    first = register(registry, "s3://runs/1/ru/checkpoints/step-000100")
    second = register(registry, "s3://runs/2/ru/checkpoints/step-000100", parent_uri=first.model_uri)
    assert (first.version, second.version) == ("v1", "v2")
    assert registry.list() == [first, second]
    assert registry.get("v2") == second and registry.get("2") == second
    assert registry.latest() == second
    assert second.parent_uri == first.model_uri and second.metrics == {"win_rate/preference": 0.61, "kl": 0.12}


def test_the_listing_is_sorted_by_number_not_by_name(memory_filesystem):
    registry = PolicyRegistry("memory://registry")
    for i in range(11):
        register(registry, f"s3://runs/{i}")
    assert [v.version for v in registry.list()] == [f"v{n}" for n in range(1, 12)]  # v10 after v9, not after v1
    assert registry.latest().version == "v11"  # type: ignore[union-attr]


def test_an_empty_registry_lists_nothing_and_names_what_it_holds_when_a_version_is_missing(memory_filesystem):
    registry = PolicyRegistry("memory://nowhere")
    assert registry.list() == [] and registry.latest() is None
    with pytest.raises(
        NotFound, match="no policy version v3 in the registry at memory://nowhere; it holds no versions"
    ):
        registry.get("v3")
    register(registry, "s3://runs/1")
    with pytest.raises(NotFound, match="it holds v1 to v1"):
        registry.get("v3")
    with pytest.raises(InvalidRequest, match="'v' and a positive number"):
        registry.get("../../etc/passwd")


def test_registering_the_same_checkpoint_again_returns_its_version(memory_filesystem):
    registry = PolicyRegistry("memory://registry")
    first = register(registry, "s3://runs/1")
    again = register(registry, "s3://runs/1", training_run="run-1-retry")  # a retried pipeline step
    assert again == first and [v.version for v in registry.list()] == ["v1"]


def test_a_stale_listing_loses_the_race_and_takes_the_next_number_without_rewriting(tmp_path, monkeypatch):
    registry = PolicyRegistry(str(tmp_path / "registry"))
    first = register(registry, "s3://runs/1")
    original = (tmp_path / "registry" / "versions" / "v1.json").read_bytes()
    # the second registration listed the folder before the first one's file existed
    monkeypatch.setattr(registry_module, "_numbers", lambda fs, root: [])
    second = register(registry, "s3://runs/2")
    assert second.version == "v2"
    assert (tmp_path / "registry" / "versions" / "v1.json").read_bytes() == original
    assert PolicyRegistry(str(tmp_path / "registry")).get("v1") == first


def test_concurrent_registrations_each_get_their_own_number(tmp_path):
    url = f"file://{tmp_path}/registry"
    barrier = threading.Barrier(6)
    versions: list[str] = []

    def one(i: int) -> None:
        registry = PolicyRegistry(url)
        barrier.wait()  # all list the folder at about the same moment
        versions.append(register(registry, f"s3://runs/{i}").version)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, 7)]
    assert sorted(v.model_uri for v in PolicyRegistry(url).list()) == sorted(f"s3://runs/{i}" for i in range(6))


def test_on_s3_a_taken_number_is_refused_by_the_store_itself(s3_bucket, monkeypatch):
    registry = PolicyRegistry(f"{s3_bucket}/artifacts/registry")
    first = register(registry, "s3://runs/1")
    with monkeypatch.context() as patched:
        patched.setattr(registry_module, "_numbers", lambda fs, root: [])  # as if listed before v1 existed
        second = register(registry, "s3://runs/2")  # s3fs's If-None-Match create gets 412 for v1
    assert second.version == "v2"
    assert [v.model_uri for v in PolicyRegistry(f"{s3_bucket}/artifacts/registry").list()] == [
        first.model_uri,
        "s3://runs/2",
    ]


def test_the_wire_form_round_trips_and_ignores_fields_a_newer_schema_adds(memory_filesystem):
    version = register(PolicyRegistry("memory://registry"), "s3://runs/1")
    wire = version.to_wire()
    assert wire["created_at"] == "2026-12-01T03:00:00+00:00" and wire["schema_version"] == 1
    assert PolicyVersion.from_wire(wire | {"schema_version": 7, "signed_by": "someone"}) == version
    stored = json.loads(fsspec.filesystem("memory").cat_file("/registry/versions/v1.json"))
    assert stored == wire


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": {"kl": float("nan")}}, "metric 'kl' must be a finite number"),
        ({"created_at": datetime.datetime(2026, 12, 1)}, "time zone"),
        ({"model_uri": " "}, "needs a model_uri"),
    ],
)
def test_malformed_versions_are_refused(memory_filesystem, change, message):
    registry = PolicyRegistry("memory://registry")
    with pytest.raises(InvalidRequest, match=message):
        register(registry, **({"model_uri": "s3://runs/1"} | change))  # type: ignore[arg-type]
    assert registry.list() == []


def test_a_version_file_missing_a_field_is_reported_by_name(tmp_path: Path):
    folder = tmp_path / "registry" / "versions"
    folder.mkdir(parents=True)
    (folder / "v1.json").write_text(json.dumps({"version": "v1", "created_at": WHEN.isoformat()}))
    with pytest.raises(InvalidRequest, match="lacks field 'model_uri'"):
        PolicyRegistry(str(tmp_path / "registry")).list()


def test_the_table_has_one_aligned_row_per_version(memory_filesystem):
    registry = PolicyRegistry("memory://registry")
    register(registry, "s3://runs/1")
    register(registry, "s3://runs/22", metrics={}, snapshot_hash=None)
    header, first, second = version_table(registry.list()).splitlines()
    assert header.split()[:4] == ["VERSION", "CREATED", "(UTC)", "SNAPSHOT"]
    assert first.startswith("v1  ") and "2026-12-01 03:00" in first and "ab12ab12ab12 " in first
    assert "kl=0.12 win_rate/preference=0.61" in first
    assert second.split()[-1] == "-" and header.index("MODEL URI") == first.index("s3://runs/1")
