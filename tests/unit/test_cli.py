"""Tests of the ``musicrl`` command line, run in-process: outputs, reproducibility and exit codes."""

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from musicrl.cli import build_parser, main
from musicrl.gateway.auth import ApiKey
from musicrl.v1 import events_pb2
from tests.utils.events import listened_pair, write_dataset
from tests.utils.import_graph import GRAPH_SCRIPT, ROOT, declared_closure
from tests.utils.processes import REPO_ROOT, free_port
from tests.utils.tiny_models import TINY_MUSICGEN_URI


DURATION_S = "0.5"  # 25 frames at 50 Hz: 28 decode steps, about a second on a CPU
PROMPT = "a calm piano melody"


def _run_cli(argv: Sequence[str]) -> int:
    """Run ``musicrl`` with ``argv``; return its exit status (0 when ``main`` returns normally)."""
    try:
        main(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _generate(out_dir: Path, seed: int, *extra: str) -> int:
    return _run_cli(
        ["generate", PROMPT, "--model", TINY_MUSICGEN_URI, "--duration", DURATION_S, "--seed", str(seed)]
        + ["-o", str(out_dir / "clip.wav"), "--codes", str(out_dir / "codes.npy"), *extra]
    )


@dataclass(frozen=True)
class _Generated:
    status: int
    wav: Path
    codes: Path


@pytest.fixture(scope="module")
def generated_seed3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Generated]:
    """One ``musicrl generate`` run with seed 3, shared by the read-only checks below (it is the slow part)."""
    out_dir = tmp_path_factory.mktemp("generate-seed3")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("MUSICRL_")]:
            mp.delenv(name)  # flags only: no stray MUSICRL_DURATION_S from the caller's shell
        mp.setenv("MUSICRL_CACHE_DIR", str(out_dir / "cache"))
        status = _generate(out_dir / "out", seed=3)
    yield _Generated(status=status, wav=out_dir / "out" / "clip.wav", codes=out_dir / "out" / "codes.npy")


@pytest.fixture
def _no_musicrl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MUSICRL_") and n != "MUSICRL_CACHE_DIR"]:
        monkeypatch.delenv(name)


def test_generate_exits_0(generated_seed3: _Generated) -> None:
    assert generated_seed3.status == 0


def test_generate_writes_half_a_second_of_mono_32khz_wav(generated_seed3: _Generated) -> None:
    info = soundfile.info(str(generated_seed3.wav))
    audio, sample_rate = soundfile.read(str(generated_seed3.wav), dtype="float32")

    assert (info.samplerate, info.channels, info.frames, info.subtype) == (32_000, 1, 16_000, "PCM_16")
    assert sample_rate == 32_000
    assert audio.shape == (16_000,)
    assert bool(np.isfinite(audio).all())
    assert float(np.abs(audio).max()) > 0  # random EnCodec codebooks decode to sound, not silence


def test_generate_writes_codes_k_by_t(generated_seed3: _Generated) -> None:
    codes = np.load(generated_seed3.codes)

    assert codes.shape == (4, 25)  # [K, T]: 4 codebooks, 0.5 s at 50 frames/s
    assert codes.dtype == np.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 128  # inside the tiny codebook, never the start token


@pytest.mark.usefixtures("_no_musicrl_env")
def test_same_seed_gives_identical_codes_and_audio(generated_seed3: _Generated, tmp_path: Path) -> None:
    assert _generate(tmp_path, seed=3) == 0

    assert np.array_equal(np.load(tmp_path / "codes.npy"), np.load(generated_seed3.codes))
    assert (tmp_path / "clip.wav").read_bytes() == generated_seed3.wav.read_bytes()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_other_seed_gives_other_codes(generated_seed3: _Generated, tmp_path: Path) -> None:
    assert _generate(tmp_path, seed=4) == 0

    assert not np.array_equal(np.load(tmp_path / "codes.npy"), np.load(generated_seed3.codes))


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "musicrl" and r.levelno == logging.ERROR]


@pytest.mark.usefixtures("_no_musicrl_env")
def test_negative_duration_exits_2_with_a_sentence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status = _run_cli(
        ["generate", PROMPT, "--model", TINY_MUSICGEN_URI, "--duration", "-1", "-o", str(tmp_path / "x.wav")]
    )

    assert status == 2
    assert _errors(caplog) == ["duration_s must be a positive number of seconds, got -1.0"]
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_unknown_scheme_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status = _run_cli(["generate", PROMPT, "--model", "bogus://models/x", "-o", str(tmp_path / "x.wav")])

    assert status == 2
    assert len(_errors(caplog)) == 1
    assert _errors(caplog)[0].startswith("unknown model URI scheme 'bogus' in 'bogus://models/x'")


@pytest.mark.usefixtures("_no_musicrl_env")
def test_missing_model_path_exits_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-checkpoint"

    status = _run_cli(["generate", PROMPT, "--model", str(missing), "-o", str(tmp_path / "x.wav")])

    assert status == 3
    assert _errors(caplog) == [f"no checkpoint directory at {missing} (from {missing})"]
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_non_musicgen_model_exits_5(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    status = _run_cli(["generate", PROMPT, "--model", "tiny://bert", "-o", str(tmp_path / "x.wav")])

    assert status == 5
    assert _errors(caplog) == ["tiny://bert is not a MusicGen; use tiny://musicgen?seed=N"]


@pytest.mark.usefixtures("_no_musicrl_env")
def test_bad_dtype_flag_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["generate", PROMPT, "--model", TINY_MUSICGEN_URI, "--dtype", "float64", "-o", str(tmp_path / "x.wav")]

    assert _run_cli(argv) == 2
    assert _errors(caplog) == ["dtype must be float32, bfloat16 or float16, got 'float64'"]


def test_missing_model_flag_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = _run_cli(["generate", PROMPT, "-o", str(tmp_path / "x.wav")])

    assert status == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_apikey_new_prints_a_key_whose_hash_is_its_entry(capsys):
    from musicrl.gateway.auth import KeyRing, hash_key

    main(["apikey", "new", "--id", "partner", "--scopes", "generate,feedback", "--requests-per-minute", "60"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["entry"] == {
        "id": "partner",
        "sha256": hash_key(printed["key"]),
        "scopes": ["feedback", "generate"],
        "requests_per_minute": 60,
    }
    caller = KeyRing([ApiKey.from_wire(printed["entry"])]).authenticate(f"Bearer {printed['key']}")
    assert caller.key_id == "partner"


def test_apikey_new_adds_its_entry_to_a_keys_file_and_keeps_the_others(tmp_path, capsys):
    from musicrl.gateway.auth import KeyRing

    keys_file = tmp_path / "api-keys.json"
    main(["apikey", "new", "--id", "first", "--scopes", "rate", "--keys-file", str(keys_file)])
    first = json.loads(capsys.readouterr().out)
    main(["apikey", "new", "--id", "second", "--scopes", "compare,feedback", "--keys-file", str(keys_file)])
    second = json.loads(capsys.readouterr().out)
    ring = KeyRing.from_file(str(keys_file))
    assert ring.authenticate(f"Bearer {first['key']}").key_id == "first"
    assert ring.authenticate(f"Bearer {second['key']}").key_id == "second"
    main(["apikey", "new", "--id", "first", "--scopes", "rate", "--keys-file", str(keys_file)])  # rotate "first"
    rotated = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in json.loads(keys_file.read_text())] == ["second", "first"]
    assert KeyRing.from_file(str(keys_file)).authenticate(f"Bearer {rotated['key']}").key_id == "first"


def test_apikey_new_refuses_an_unknown_scope(caplog):
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "new", "--id", "x", "--scopes", "generate,root"])
    assert exited.value.code == 2
    assert "'root' is not a valid Scope" in caplog.text


def test_score_prints_the_reward_of_one_clip(tmp_path, capsys):
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, (0.1 * np.sin(np.arange(16_000) / 5)).astype(np.float32), 16_000)
    main(["score", "--reward", "loudness", "--model", "analytic://loudness", "--prompt", "x", "--audio", str(wav)])
    printed = json.loads(capsys.readouterr().out)
    assert printed["reward"] == "loudness" and 0.6 < printed["score"] < 0.8  # -23 dBFS → 0.62 on [-60, 0]
    codes = tmp_path / "codes.npy"
    np.save(codes, np.array([[1, 2, 100, 101]] * 4))
    main(["score", "--reward", "low-codes", "--model", "analytic://low-codes?vocab_size=128", "--prompt", "x",
          "--codes", str(codes)])  # fmt: skip
    assert json.loads(capsys.readouterr().out)["score"] == 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give the clip with --audio FILE or with --codes FILE"),
        (["--audio", "/no/such.wav"], "cannot read audio from /no/such.wav"),
        (["--codes", "/no/such.npy"], "cannot read codes from /no/such.npy"),
    ],
)
def test_score_refuses_a_missing_clip_with_a_sentence(extra, message, caplog):
    with pytest.raises(SystemExit) as exited:
        main(["score", "--reward", "loudness", "--model", "analytic://loudness", "--prompt", "x", *extra])
    assert exited.value.code == 2
    assert message in caplog.text


def test_score_refuses_an_unknown_reward(tmp_path, caplog):
    codes = tmp_path / "codes.npy"
    np.save(codes, np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(SystemExit) as exited:
        main(["score", "--reward", "vibes", "--model", "x", "--prompt", "x", "--codes", str(codes)])
    assert exited.value.code == 2
    assert "unknown reward 'vibes'" in caplog.text


@pytest.mark.parametrize("prompt", ["", " \t\n"])
@pytest.mark.usefixtures("_no_musicrl_env")
def test_generate_refuses_an_empty_prompt_with_a_sentence(
    prompt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    status = _run_cli(["generate", prompt, "--model", TINY_MUSICGEN_URI, "-o", str(tmp_path / "x.wav")])

    assert status == 2  # InvalidRequest's exit code
    assert _errors(caplog) == ['the prompt is empty; describe the music, e.g. musicrl generate "a calm piano melody"']
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_up_names_a_taken_port_and_starts_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ports = {flag: str(free_port()) for flag in ("--generator-http-port", "--generator-grpc-port", "--nats-port")}
    ports["--recorder-metrics-port"] = str(free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        gateway_port = taken.getsockname()[1]
        argv = ["up", "--state-dir", str(tmp_path / "state"), "--gateway-port", str(gateway_port)]
        status = _run_cli(argv + [arg for pair in ports.items() for arg in pair])

    assert status == 1
    assert _errors(caplog) == [f"port {gateway_port} is in use (gateway); stop what uses it or pass --gateway-port"]
    assert not (tmp_path / "state").exists()  # checked before anything was started or written


def test_make_run_passes_only_flags_that_musicrl_up_defines(capsys: pytest.CaptureFixture[str]) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    (command,) = [line for line in makefile.splitlines() if "-m musicrl up" in line]
    assert _run_cli(["up", "--help"]) == 0
    defined = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", capsys.readouterr().out))

    passed = re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", command)
    assert passed and set(passed) <= defined  # the exact names: argparse would also take a prefix such as --model


@pytest.mark.usefixtures("_no_musicrl_env")
def test_dataset_snapshot_prints_its_folder_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "events"
    write_dataset(dataset, listened_pair("c1", "lofi piano with rain", events_pb2.CHOICE_A))
    argv = ["dataset", "snapshot", "--dataset", str(dataset), "--out", str(tmp_path / "out")]
    argv += ["--consolidate-codes", "false"]  # the factory events' s3:// clips exist nowhere: no codes to pack

    assert _run_cli(argv) == 0
    (folder,) = (tmp_path / "out").iterdir()
    assert capsys.readouterr().out == f"{folder}\n"
    assert _run_cli(argv) == 0  # the same snapshot again: already there, same folder printed
    assert capsys.readouterr().out == f"{folder}\n"


# Commands that run in every image (the role-install test runs them in the light venvs), so they name no extra.
BASE_COMMANDS = {("apikey", "new"), ("bus", "provision")}
# What a light image lacks; the parser must build without any of it.
HEAVY = {"numpy", "scipy", "pyarrow", "pandas", "requests", "torch", "transformers", "fastapi", "kubernetes"}


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable sub-command of ``parser`` with its words (``("serve", "gateway")``)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, child in group.choices.items():
            yield from _leaves(child, (*path, name))


def test_the_parser_needs_only_the_base_dependencies() -> None:
    # a fresh interpreter: this one has torch and the rest loaded already
    script = "import musicrl.cli\nmusicrl.cli.build_parser()\n" + GRAPH_SCRIPT
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    graph = json.loads(result.stdout)
    imported = set(graph["imported_distributions"])
    assert imported, "the graph script found no imports"
    assert imported <= declared_closure(), f"the parser imports {sorted(imported - declared_closure())} at start"
    assert not set(graph["loaded"]) & HEAVY, f"building the parser loads {sorted(set(graph['loaded']) & HEAVY)}"


def test_every_command_names_the_extra_it_needs() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    leaves = dict(_leaves(build_parser()))
    assert BASE_COMMANDS <= set(leaves) and ("serve", "gateway") in leaves
    for path, leaf in leaves.items():
        extra = getattr(leaf.get_default("command"), "needs_extra", None)
        if path in BASE_COMMANDS:
            assert extra is None, f"musicrl {' '.join(path)} runs in every image, yet needs musicrl[{extra}]"
        else:
            assert extra in extras, f"musicrl {' '.join(path)}: mark its function with @needs_extra(EXTRA)"
