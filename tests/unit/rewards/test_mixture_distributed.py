"""Reward normalisation across processes and across a resume: the statistics of the whole batch, kept."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from musicrl.rewards.mixture import BatchMoments
from tests.utils.distributed import RANK_SCORES, clips, mixture_worker, scripted_mixture
from tests.utils.processes import free_port


def test_combined_moments_equal_those_of_the_concatenated_batch():
    parts = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0]), np.array([-4.0])]
    combined = BatchMoments.combine([BatchMoments.of(p) for p in parts])
    union = np.concatenate(parts)
    assert combined.count == 6
    np.testing.assert_allclose([combined.mean, combined.var], [union.mean(), union.var()], rtol=1e-12)


def test_two_gloo_ranks_normalise_with_the_same_statistics(tmp_path: Path):
    # world size 2 on loopback: each rank sees only its own clips, yet both must end with the statistics of
    # the union (a single process scoring both ranks' clips together)
    mp.spawn(mixture_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]

    assert ranks[0]["state"] == ranks[1]["state"]
    union = [RANK_SCORES[0][i] + RANK_SCORES[1][i] for i in range(2)]
    alone = scripted_mixture(union)
    expected = [alone.score(clips(len(b)))[0] for b in union]
    assert ranks[0]["state"]["stats"]["running"] == pytest.approx(alone.state_dict()["stats"]["running"], rel=1e-12)
    for i in range(2):  # each rank's totals are its slice of the union's totals
        np.testing.assert_allclose(ranks[0]["totals"][i] + ranks[1]["totals"][i], expected[i], rtol=1e-5)


def test_running_statistics_survive_a_state_round_trip():
    batches = [[1.0, 2.0, 3.0], [5.0, 6.0], [2.0, 9.0]]
    uninterrupted = scripted_mixture(batches)
    expected = [uninterrupted.score(clips(len(b)))[0] for b in batches]
    first = scripted_mixture(batches[:1])
    first.score(clips(3))
    resumed = scripted_mixture(batches[1:])  # a fresh process: it starts with no statistics
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as plain data, like a checkpoint
    for batch, want in zip(batches[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(resumed.score(clips(len(batch)))[0], want)
