"""Prompt adherence and its confusion: which class a policy misses and what it plays instead."""

import json
from pathlib import Path

import numpy as np
import pytest

from musicrl.cli import main
from musicrl.errors import InvalidRequest
from musicrl.toyworld.evaluate import UNHEARD, audio_adherence
from musicrl.toyworld.world import SAMPLE_RATE, Attributes, Loudness, Pitch, Tempo, Texture, Timbre, draw_clip


def _melody(tempo: Tempo, seed: int) -> np.ndarray:
    attributes = Attributes(Pitch.MID, tempo, Timbre.DARK, Loudness.LOUD, Texture.MELODY)
    return draw_clip(seed, attributes=attributes).audio


def test_the_confusion_counts_what_was_heard_for_each_class_asked_and_silence_as_unheard() -> None:
    clips = [_melody(Tempo.SLOW, 1), _melody(Tempo.FAST, 2), _melody(Tempo.FAST, 3), np.zeros(32_000, np.float32)]
    asked = [{"tempo": "slow"}, {"tempo": "slow"}, {"tempo": "fast", "loudness": "soft"}, {"tempo": "fast"}]

    adherence = audio_adherence(asked, clips, SAMPLE_RATE)

    assert adherence.confusion["tempo"] == {"slow": {"slow": 1, "fast": 1}, "fast": {"fast": 1, UNHEARD: 1}}
    assert adherence.confusion["loudness"] == {"soft": {"loud": 1}}
    # silence is left out of the agreement, as before: 2 of 3 judged tempo asks agreed
    assert adherence.asked == {"loudness": 1, "tempo": 3}
    assert adherence.agreed["tempo"] == pytest.approx(2 / 3)
    table = adherence.table()
    assert "tempo: a row per class asked" in table
    rows = [line.split() for line in table.splitlines()]
    assert ["slow", "1", "0", "1", "0"] in rows  # the tempo row asked slow: heard slow once, fast once


def test_the_cli_prints_the_table_and_writes_counts_that_add_up_to_the_asks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adherence.json"

    main(["toyworld", "adherence", "--prompts", "8", "--temperature", "0.7", "--out", str(out)])

    written = json.loads(out.read_text())
    for name, asks in written["asked"].items():
        counts = written["confusion"][name]
        judged = sum(n for heard in counts.values() for h, n in heard.items() if h != UNHEARD)
        agreed = sum(heard.get(value, 0) for value, heard in counts.items())
        assert judged == asks
        assert written["agreed"][name] == pytest.approx(agreed / asks)
    assert "a row per class asked" in capsys.readouterr().out


def test_an_impossible_sampling_setting_is_refused_with_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["toyworld", "adherence", "--temperature", "-1"])
    assert stopped.value.code == InvalidRequest.exit_code
    assert "temperature must be >= 0" in capsys.readouterr().err
