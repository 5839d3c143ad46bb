"""``musicrl policy list|show``: the registry from a terminal, output on stdout, errors as exit codes."""

import datetime
import json
from collections.abc import Sequence

import pytest

from musicrl.cli import main
from musicrl.errors import InvalidRequest, NotFound
from musicrl.pipeline.registry import PolicyRegistry


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(list(argv))
        status = 0
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def registry_url(tmp_path) -> str:
    url = str(tmp_path / "registry")
    registry = PolicyRegistry(url)
    when = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)
    registry.register("s3://runs/1/ckpt", snapshot_hash="f" * 64, metrics={"kl": 0.2}, created_at=when)
    registry.register("s3://runs/2/ckpt", parent_uri="s3://runs/1/ckpt", created_at=when)
    return url


def test_list_prints_a_table_of_every_version(registry_url, capsys):
    status, out, _ = run_cli(["policy", "list", "--registry-url", registry_url], capsys)
    assert status == 0
    header, first, second = out.splitlines()
    assert header.startswith("VERSION") and first.startswith("v1 ") and second.startswith("v2 ")
    assert "s3://runs/2/ckpt" in second and "kl=0.2" in first


def test_show_prints_one_version_as_json(registry_url, capsys):
    status, out, _ = run_cli(["policy", "show", "v2", "--registry-url", registry_url], capsys)
    assert status == 0
    shown = json.loads(out)
    assert (shown["version"], shown["model_uri"], shown["parent_uri"]) == (
        "v2",
        "s3://runs/2/ckpt",
        "s3://runs/1/ckpt",
    )
    status, out, _ = run_cli(["policy", "show", "latest", "--registry-url", registry_url], capsys)
    assert status == 0 and json.loads(out)["version"] == "v2"


def test_show_of_a_missing_version_exits_with_not_found(registry_url, capsys):
    status, out, err = run_cli(["policy", "show", "v9", "--registry-url", registry_url], capsys)
    assert (status, out) == (NotFound.exit_code, "")
    assert "no policy version v9" in err and "it holds v1 to v2" in err


def test_the_registry_url_comes_from_the_environment_too(registry_url, capsys, monkeypatch):
    monkeypatch.setenv("MUSICRL_REGISTRY_URL", registry_url)
    status, out, _ = run_cli(["policy", "list"], capsys)
    assert status == 0 and len(out.splitlines()) == 3
    monkeypatch.delenv("MUSICRL_REGISTRY_URL")
    status, _, err = run_cli(["policy", "list"], capsys)
    assert status == InvalidRequest.exit_code and "--registry-url (or MUSICRL_REGISTRY_URL) is required" in err


def test_an_empty_registry_lists_only_the_header_and_has_no_latest(tmp_path, capsys):
    url = str(tmp_path / "empty")
    status, out, _ = run_cli(["policy", "list", "--registry-url", url], capsys)
    assert status == 0 and out.splitlines()[0].startswith("VERSION") and len(out.splitlines()) == 1
    status, _, err = run_cli(["policy", "show", "latest", "--registry-url", url], capsys)
    assert status == NotFound.exit_code and "holds no policy versions yet" in err
