"""Tests of model URI parsing (DESIGN.md §4): every scheme, and a sentence for every malformed URI."""

from pathlib import Path

import pytest

from musicrl.errors import InvalidRequest
from musicrl.models.uri import ModelURI, Scheme


def test_tiny_uri_keeps_kind_and_query_parameters() -> None:
    uri = ModelURI.parse("tiny://musicgen?seed=3&hidden_size=96")

    assert uri.scheme is Scheme.TINY
    assert uri.location == "musicgen"
    assert dict(uri.params) == {"seed": "3", "hidden_size": "96"}
    assert uri.revision is None


def test_tiny_uri_without_query_has_no_params() -> None:
    uri = ModelURI.parse("tiny://musicgen")

    assert (uri.scheme, uri.location, dict(uri.params)) == (Scheme.TINY, "musicgen", {})


@pytest.mark.parametrize(
    ("raw", "repo_id", "revision"),
    [
        ("hf://facebook/musicgen-small", "facebook/musicgen-small", None),
        ("hf://facebook/musicgen-small@main", "facebook/musicgen-small", "main"),
        ("hf://org/name@v1.2", "org/name", "v1.2"),
        (
            "hf://org/name@0123456789abcdef0123456789abcdef01234567",
            "org/name",
            "0123456789abcdef0123456789abcdef01234567",
        ),
    ],
)
def test_hf_uri_splits_repo_and_revision(raw: str, repo_id: str, revision: str | None) -> None:
    uri = ModelURI.parse(raw)

    assert uri.scheme is Scheme.HF
    assert uri.location == repo_id
    assert uri.revision == revision
    assert dict(uri.params) == {}


def test_file_uri_is_an_absolute_local_path(tmp_path: Path) -> None:
    uri = ModelURI.parse(f"file://{tmp_path}/my%20model")

    assert uri.scheme is Scheme.LOCAL
    assert uri.location == str(tmp_path.resolve() / "my model")  # percent-escapes are decoded


def test_plain_relative_path_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    uri = ModelURI.parse("checkpoints/step-10")

    assert uri.scheme is Scheme.LOCAL
    assert uri.location == str(tmp_path.resolve() / "checkpoints" / "step-10")


def test_plain_path_expands_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    uri = ModelURI.parse("~/models/policy")

    assert uri.location == str(tmp_path.resolve() / "models" / "policy")


@pytest.mark.parametrize("raw", ["s3://bucket/policies/v3", "gs://bucket/ckpt", "memory://ckpts/tiny"])
def test_other_fsspec_protocols_are_remote_with_the_full_url(raw: str) -> None:
    uri = ModelURI.parse(raw)

    assert uri.scheme is Scheme.REMOTE
    assert uri.location == raw
    assert uri.revision is None


def test_surrounding_whitespace_is_ignored_and_str_gives_the_uri() -> None:
    uri = ModelURI.parse("  tiny://musicgen?seed=0\n")

    assert uri.raw == "tiny://musicgen?seed=0"
    assert str(uri) == "tiny://musicgen?seed=0"


@pytest.mark.parametrize("raw", ["", "   ", "\n"])
def test_empty_uri_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest, match=r"a model URI is required, for example tiny://musicgen\?seed=0"):
        ModelURI.parse(raw)


def test_unknown_scheme_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown model URI scheme 'bogus' in 'bogus://x/y'; use tiny://"):
        ModelURI.parse("bogus://x/y")


@pytest.mark.parametrize("raw", ["hf://name", "hf://a/b/c", "hf://org/", "hf:///name", "hf://", "hf://@main"])
def test_malformed_hf_uri_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest, match=r"must look like hf://org/name or hf://org/name@revision"):
        ModelURI.parse(raw)


@pytest.mark.parametrize("raw", ["tiny://", "tiny://?seed=0"])
def test_tiny_uri_without_kind_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest, match=r"names no model kind; write tiny://musicgen\?seed=0"):
        ModelURI.parse(raw)


def test_invalid_request_is_a_value_error_for_plain_python_callers() -> None:
    with pytest.raises(ValueError, match="unknown model URI scheme"):
        ModelURI.parse("nope://x")


@pytest.mark.parametrize("uri", ["file://localhost/tmp/ckpt", "FILE:///tmp/ckpt"])
def test_file_uri_variants_name_the_same_directory(uri):
    parsed = ModelURI.parse(uri)
    assert parsed.scheme is Scheme.LOCAL
    assert parsed.location == str(Path("/tmp/ckpt").resolve())


@pytest.mark.parametrize("uri, message", [("file://", "has no absolute path"), ("file://server/x", "names host")])
def test_malformed_file_uris_are_refused(uri, message):
    with pytest.raises(InvalidRequest, match=message):
        ModelURI.parse(uri)


def test_schemes_are_case_insensitive_and_normalised_for_fsspec():
    parsed = ModelURI.parse("S3://bucket/policies/v1")
    assert parsed.scheme is Scheme.REMOTE
    assert parsed.location == "s3://bucket/policies/v1"
    assert ModelURI.parse("HF://org/name").scheme is Scheme.HF


@pytest.mark.parametrize("raw", ["toy://musicgen", "TOY://MusicGen", "toy://musicgen/"])
def test_toy_uri_names_a_shipped_model(raw: str) -> None:
    uri = ModelURI.parse(raw)

    assert (uri.scheme, uri.location) == (Scheme.TOY, "musicgen")


@pytest.mark.parametrize(
    ("raw", "message"), [("toy://", "must name a shipped model"), ("toy://musicgen?seed=1", "must name a shipped")]
)
def test_toy_uri_with_nothing_or_parameters_is_refused(raw: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        ModelURI.parse(raw)
