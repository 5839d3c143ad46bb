"""Tests of the toy models shipped in the package: they load by toy:// URI, match the manifest, and work."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from musicrl.models.clap_loading import load_clap
from musicrl.models.engine import GenerationEngine
from musicrl.rewards.base import ClipBatch
from musicrl.rewards.quality import load_quality
from musicrl.toyworld.clap_data import single_defect_examples
from musicrl.toyworld.clap_eval import evaluate_clap
from musicrl.toyworld.degrade import mean_opinion_score
from musicrl.toyworld.evaluate import held_out_prompts, prompt_adherence
from musicrl.toyworld.manifest import file_hashes, read_manifest
from musicrl.toyworld.shipped import CHECKPOINTS_DIR, shipped_names
from musicrl.toyworld.train_toy_quality import defect_mix_examples
from musicrl.toyworld.world import SAMPLE_RATE


SHIPPED = {"musicgen", "clap", "quality"}
SIZE_BUDGET_BYTES = 20 * 2**20  # issue 13: 20 MB for every shipped model together
HELD_OUT = 60  # test-split clips: small enough for a unit test, large enough for a margin over chance


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_manifest(CHECKPOINTS_DIR)


def test_the_manifest_lists_exactly_the_shipped_folders_and_their_hashes_match(manifest: dict) -> None:
    assert set(shipped_names()) == set(manifest["models"]) >= SHIPPED
    for name, entry in manifest["models"].items():
        assert entry["uri"] == f"toy://{name}"
        assert entry["files"] == file_hashes(CHECKPOINTS_DIR / name), f"{name} differs from its manifest"


def test_the_shipped_models_fit_the_size_budget_and_name_their_command(manifest: dict) -> None:
    assert manifest["total_bytes"] <= SIZE_BUDGET_BYTES
    assert sum(p.stat().st_size for p in CHECKPOINTS_DIR.rglob("*") if p.is_file()) <= SIZE_BUDGET_BYTES
    assert manifest["command"].startswith("musicrl toyworld train")
    assert manifest["configs"]["clap"]["seed"] == 0


def test_the_toy_clap_loads_by_uri_and_retrieves_held_out_captions() -> None:
    bundle = load_clap("toy://clap")
    held_out = single_defect_examples(0, "test", HELD_OUT, clean_p=0.1)

    measured = evaluate_clap(bundle, held_out)

    assert measured["r_at_1"] >= 0.35  # chance is 0.1 among 10 candidates
    assert measured["matched_above_mismatched"] >= 0.8  # chance is 0.5


def test_the_toy_quality_head_reads_toy_clap_and_ranks_a_held_out_mix_of_defects() -> None:
    model = load_quality("toy://quality")
    mix = defect_mix_examples(0, "test", HELD_OUT)

    scores = model.score(ClipBatch(prompts=[""] * len(mix), audio=[e.audio for e in mix], sample_rate=SAMPLE_RATE))

    quality = json.loads((CHECKPOINTS_DIR / "quality" / "quality.json").read_text())
    assert quality["embedder_uri"] == "toy://clap"
    assert spearmanr(scores, [mean_opinion_score(e.damage) for e in mix]).statistic >= 0.4
    assert np.all((scores >= 0) & (scores <= 1))


def test_the_toy_policy_loads_by_uri_and_plays_what_its_prompt_asks_for() -> None:
    engine = GenerationEngine.from_uri("toy://musicgen")
    prompts = [e.caption.text for e in held_out_prompts(0, 40)]

    adherence = prompt_adherence(engine, prompts, seed=1)

    assert (engine.sample_rate, engine.frame_rate, engine.num_codebooks) == (16_000, 50.0, 4)
    # measured on these 40 captions: pitch 0.91, loudness 0.83, timbre 0.88, tempo 0.52 (26 to 32 asks each)
    assert adherence.agreed["pitch"] >= 0.7, adherence  # chance is 1/3
    assert adherence.agreed["loudness"] >= 0.65, adherence  # chance is 1/2
    assert adherence.agreed["timbre"] >= 0.7, adherence  # chance is 1/2
    assert adherence.agreed["tempo"] >= 0.42, adherence  # chance is 1/3; tempo is the attribute it learns worst
