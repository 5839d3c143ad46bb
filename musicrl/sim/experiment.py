"""One cell of the preference-learning benchmark: a taste, a number of training pairs, every model.

For a clip pool (:mod:`musicrl.sim.pool`) and a taste, a simulated panel (:mod:`musicrl.sim.listener`)
votes on pairs of clips of one prompt. Prompts are split into train, validation and test by the snapshot's
prompt hash; each model trains on the first ``train_pairs`` training pairs, chooses its epoch (and, for the
baselines, its penalty) on the validation pairs only, and is reported once on the test pairs, beside the
panel's own agreement ceiling on them:

* ``default``: the platform's preference reward, trained by :func:`~musicrl.rewards.train_preference.train_preference`
  on a snapshot of the votes, exactly as the pipeline trains it;
* ``histogram``: a linear Bradley–Terry head on codebook-token histograms;
* ``clap``: a linear head on CLAP [audio, audio ⊙ text] embeddings (the existing CLAP baseline's features);
* ``logmel``: a small MLP on log-mel statistics;
* ``probe``: a diagnostic, not a baseline: a linear head on the *untrained* reward's pooled decoder state,
  what the generator initialisation holds before finetuning.

With ``shuffled_labels`` the training and validation answers are permuted across pairs (the test answers
stay true), so any model must land at chance on test: the control that nothing leaks.
"""

import dataclasses
import functools
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from musicrl.data.snapshot_config import SnapshotConfig
from musicrl.errors import InvalidRequest
from musicrl.models.clap_loading import load_clap
from musicrl.rewards.clip_features import clap_features, code_histograms, decoder_features, log_mel_statistics
from musicrl.rewards.feature_preference import FeaturePairs, FeatureTrainConfig, margins, train_feature_preference
from musicrl.rewards.preference import load_preference
from musicrl.rewards.preference_config import PreferenceTrainConfig
from musicrl.rewards.preference_eval import HeldOutReport, held_out_report
from musicrl.rewards.train_preference import train_preference
from musicrl.sim.listener import Listener, ListenerConfig, Votes, agreement
from musicrl.sim.pool import ClipPool, PoolSpec, generate_pool
from musicrl.sim.snapshot import LABELS, clip_ids, prompt_splits, within_prompt_pairs, write_clip_store, write_snapshot
from musicrl.sim.tastes import scores, taste_by_name


logger = logging.getLogger(__name__)

MODELS = ("default", "histogram", "clap", "logmel", "probe")
FEATURE_MODELS = {
    "histogram": FeatureTrainConfig(),
    "clap": FeatureTrainConfig(),
    "logmel": FeatureTrainConfig(hidden=32),
    "probe": FeatureTrainConfig(),
}


@dataclass(frozen=True, slots=True)
class CellConfig:
    """What one cell trains and how.

    Attributes:
        taste: A name of :data:`musicrl.sim.tastes.TASTES`.
        train_pairs: Training pairs (the first of the training prompts' shuffled pairs).
        validation_pairs: Most validation pairs.
        test_pairs: Most test pairs.
        listener: How the panel votes.
        models: Which of :data:`MODELS` to train.
        shuffled_labels: Permute the training and validation answers (the chance control).
        default_epochs: Epochs of the platform's reward.
        default_lr: Its learning rate.
        default_batch_size: Its pairs per step.
        seed: Seeds the votes and the shuffling.
    """

    taste: str
    train_pairs: int
    validation_pairs: int = 1000
    test_pairs: int = 2000  # a ±0.02 interval at accuracies near 0.75
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    models: tuple[str, ...] = MODELS
    shuffled_labels: bool = False
    default_epochs: int = 10
    default_lr: float = 3e-4  # the trainer's rate for tiny models (its 1e-4 default is for musicgen-small)
    default_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise InvalidRequest(f"unknown models {unknown}; known: {', '.join(MODELS)}")
        for name in ("train_pairs", "validation_pairs", "test_pairs"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class CellResult:
    """What one cell measured.

    Attributes:
        config: The cell.
        train_pairs: Training pairs actually used (fewer than asked when the pool has fewer).
        ceiling: The panel's stated agreement ceiling on the test pairs.
        agreement: Its measured agreement there (decisive votes naming the better clip).
        reports: Test figures by model.
        chosen: What validation chose, by model (``epoch``, and ``l2`` for baselines).
        margins: Each model's r_A − r_B on the test pairs, float32 [N] by model.
        labels: The test answers as P(A ≻ B) targets, float32 [N].
        groups: The prompt of each test pair, int64 [N].
        histories: Per-epoch training and validation metrics by model (``train/accuracy``,
            ``validation/accuracy``, ...): whether a model underfits or overfits.
    """

    config: CellConfig
    train_pairs: int
    ceiling: float
    agreement: float
    reports: dict[str, HeldOutReport]
    chosen: dict[str, dict[str, float]]
    margins: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)


class Bench:
    """A clip pool prepared for cells: its clip store, prompt splits, candidate pairs and cached features.

    Args:
        spec: The pool to generate (or read from ``cache_dir``).
        work_dir: Where the clip store and snapshots go.
        clap_uri: The CLAP the ``clap`` baseline embeds with.
        cache_dir: Pool cache folder.
        split: Validation and test shares of the prompts.
    """

    def __init__(
        self,
        spec: PoolSpec,
        work_dir: str | Path,
        *,
        clap_uri: str,
        cache_dir: str | Path | None = None,
        split: SnapshotConfig | None = None,
    ) -> None:
        self.spec = spec
        self.work_dir = Path(work_dir)
        self.clap_uri = clap_uri
        self.pool: ClipPool = generate_pool(spec, cache_dir=cache_dir)
        self.ids = clip_ids(self.pool, spec.cache_key())
        self.store = write_clip_store(self.pool, self.ids, f"file://{self.work_dir / 'clips'}")
        splits = prompt_splits(self.pool, split or SnapshotConfig(validation_fraction=0.15, test_fraction=0.2))
        rng = np.random.default_rng([spec.seed, 0xA1])
        self.candidates = {name: within_prompt_pairs(self.pool, prompts, rng) for name, prompts in splits.items()}

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a Bench lives for a whole benchmark run)
    def features(self, model: str) -> np.ndarray:
        """A baseline's features of every clip, float32 [C, F], computed once per model."""
        if model == "histogram":
            return code_histograms(list(self.pool.codes), int(self.pool.codes.max()) + 1)
        if model == "probe":
            return decoder_features(self.spec.policy_uri, self.pool.clip_prompts(), list(self.pool.codes))
        if model == "clap":
            bundle = load_clap(self.clap_uri)
            return clap_features(bundle, list(self.pool.audio), self.pool.sample_rate, self.pool.clip_prompts())
        return np.stack([log_mel_statistics(audio, self.pool.sample_rate) for audio in self.pool.audio])

    @functools.lru_cache(maxsize=16)  # noqa: B019 (a Bench lives for a whole benchmark run)
    def taste_scores(self, taste: str) -> np.ndarray:
        """The taste's score of every clip, float64 [C]."""
        return scores(taste_by_name(taste), self.pool.clips())

    def run(self, config: CellConfig) -> CellResult:
        """Vote, train every model of ``config`` and report each on the test pairs."""
        taste_scores = self.taste_scores(config.taste)
        listener = Listener.calibrated(taste_by_name(config.taste), config.listener, taste_scores, self.pool.prompt_of)
        sizes = {"train": config.train_pairs, "validation": config.validation_pairs, "test": config.test_pairs}
        pairs = {split: self.candidates[split][:n] for split, n in sizes.items()}
        if len(pairs["train"]) < config.train_pairs:
            logger.warning(
                "the pool has %d training pairs, fewer than %d asked", len(pairs["train"]), config.train_pairs
            )
        votes = self._votes(listener, taste_scores, config)
        votes = {split: _first(v, len(pairs[split])) for split, v in votes.items()}
        test = pairs["test"]
        delta = listener.margins(taste_scores[test[:, 0]], taste_scores[test[:, 1]])
        labels = {split: np.array([LABELS[c] for c in v.choices], np.float32) for split, v in votes.items()}
        groups = self.pool.prompt_of[test[:, 0]]
        reports, chosen, test_margins, histories = {}, {}, {}, {}
        for model in config.models:
            test_margins[model], chosen[model], histories[model] = self._train(model, config, pairs, votes, labels)
            reports[model] = held_out_report(test_margins[model], labels["test"], groups, seed=config.seed)
            logger.info(
                "%s on %s at %d pairs: test accuracy %.3f",
                model,
                config.taste,
                len(pairs["train"]),
                reports[model].accuracy,
            )
        return CellResult(
            config=config,
            train_pairs=len(pairs["train"]),
            ceiling=listener.ceiling(taste_scores[test[:, 0]], taste_scores[test[:, 1]]),
            agreement=agreement(delta, votes["test"].choices)[0],
            reports=reports,
            chosen=chosen,
            margins=test_margins,
            labels=labels["test"],
            groups=groups,
            histories=histories,
        )

    def _votes(self, listener: Listener, taste_scores: np.ndarray, config: CellConfig) -> dict[str, Votes]:
        """The panel's answers to every candidate pair (prefixes are the cells' data sets), shuffled if asked."""
        rng = np.random.default_rng([config.seed, 0xB0, *config.taste.encode()])
        shuffler = np.random.default_rng([config.seed, 0xB1])  # its own stream: the votes stay those of the cell
        out = {}
        for split, pairs in self.candidates.items():
            votes = listener.vote(taste_scores[pairs[:, 0]], taste_scores[pairs[:, 1]], rng)
            if config.shuffled_labels and split != "test":
                used = min(config.train_pairs if split == "train" else config.validation_pairs, len(pairs))
                order = np.arange(len(pairs))
                order[:used] = shuffler.permutation(used)  # permuted within the pairs the cell uses
                votes = Votes(votes.choices[order], votes.users[order], votes.listened[order])
            out[split] = votes
        return out

    def _train(
        self,
        model: str,
        config: CellConfig,
        pairs: dict[str, np.ndarray],
        votes: dict[str, Votes],
        labels: dict[str, np.ndarray],
    ) -> tuple[np.ndarray, dict[str, float], list[dict[str, float]]]:
        """Test margins [N_test] of one model trained on the cell, what validation chose, and its history."""
        if model == "default":
            return self._train_default(config, pairs, votes)
        features = self.features(model)
        split_pairs = {s: FeaturePairs(features[p[:, 0]], features[p[:, 1]], labels[s]) for s, p in pairs.items()}
        result = train_feature_preference(split_pairs["train"], split_pairs["validation"], FEATURE_MODELS[model])
        chosen = {"epoch": float(result.epoch), "l2": result.l2}
        return margins(result.head, split_pairs["test"]), chosen, result.history

    def _train_default(
        self, config: CellConfig, pairs: dict[str, np.ndarray], votes: dict[str, Votes]
    ) -> tuple[np.ndarray, dict[str, float], list[dict[str, float]]]:
        torch.manual_seed(config.seed)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="cell-") as folder:
            snapshot = write_snapshot(
                Path(folder) / "snapshot",
                self.pool,
                self.store,
                self.ids,
                pairs,
                votes,
                policy_uri=self.spec.policy_uri,
            )
            trained = train_preference(
                PreferenceTrainConfig(
                    snapshot_url=snapshot,
                    init_uri=self.spec.policy_uri,
                    out_url=str(Path(folder) / "model"),
                    epochs=config.default_epochs,
                    batch_size=config.default_batch_size,
                    lr=config.default_lr,
                    num_workers=0,  # 2 s clips read in microseconds: workers would only fork
                    seed=config.seed,
                    min_pairs=1,
                )
            )
            model = load_preference(trained.uri)
        test = pairs["test"]
        clips = np.unique(test)
        rewards = np.zeros(len(self.pool), np.float32)
        with torch.inference_mode():
            for start in range(0, len(clips), 64):
                chunk = clips[start : start + 64]
                prompts = [self.pool.prompts[int(self.pool.prompt_of[i])] for i in chunk]
                rewards[chunk] = model.score_codes(
                    prompts, [self.pool.codes[i].astype(np.int64) for i in chunk]
                ).numpy()
        return rewards[test[:, 0]] - rewards[test[:, 1]], {"epoch": float(trained.best_epoch)}, trained.history


def _first(votes: Votes, n: int) -> Votes:
    return dataclasses.replace(votes, choices=votes.choices[:n], users=votes.users[:n], listened=votes.listened[:n])
