"""``musicrl toyworld train``: rebuild every shipped toy model from seeds, measure it, and write the manifest.

Order matters: the codec first (its codes are the policy's vocabulary), then the policy over it, then the
CLAP and the quality head over the CLAP. Each model is saved as a ``save_pretrained`` folder under
``out_dir`` (by default the package's own ``checkpoints/``, which ``toy://<name>`` resolves to), beside
its ``metrics.jsonl`` and training plot, and then judged on held-out captions through the platform's own
loaders, so the manifest's figures describe what ships.
"""

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import EncodecModel, MusicgenForConditionalGeneration

from musicrl.config import EngineConfig
from musicrl.errors import InvalidRequest
from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.engine import GenerationEngine
from musicrl.toyworld import train_codec, train_policy
from musicrl.toyworld.evaluate import held_out_prompts, prompt_adherence
from musicrl.toyworld.evaluate_codec import codec_metrics
from musicrl.toyworld.manifest import read_manifest, write_manifest
from musicrl.toyworld.reporting import METRICS_FILE, PLOT_FILE, plot_history, write_history
from musicrl.toyworld.shipped import CHECKPOINTS_DIR, MANIFEST_FILE
from musicrl.toyworld.train_clap import ClapTrainConfig, train_clap
from musicrl.toyworld.train_config import ToyWorldTrainConfig
from musicrl.toyworld.train_toy_quality import ToyQualityConfig, train_toy_quality


logger = logging.getLogger(__name__)

HELD_OUT_CLIPS = 120  # test-split captions each model is judged on after training


def codec_settings(config: ToyWorldTrainConfig) -> train_codec.CodecTrainConfig:
    """The codec's training config."""
    if config.quick:
        return train_codec.CodecTrainConfig(
            seed=config.seed, clips=16, decoder_steps=2, encoder_steps=2, steps=3, batch_size=2, threads=config.threads
        )
    return train_codec.CodecTrainConfig(seed=config.seed, threads=config.threads)


def policy_settings(config: ToyWorldTrainConfig) -> train_policy.PolicyTrainConfig:
    """The policy's training config."""
    if config.quick:
        return train_policy.PolicyTrainConfig(
            seed=config.seed, clips=16, steps=3, batch_size=4, threads=config.threads
        )
    return train_policy.PolicyTrainConfig(seed=config.seed, threads=config.threads)


def clap_settings(config: ToyWorldTrainConfig) -> ClapTrainConfig:
    """The CLAP's training config."""
    if config.quick:
        return ClapTrainConfig(
            seed=config.seed,
            examples=10,
            valid_examples=10,  # retrieval is among 10 candidates
            test_examples=10,
            steps=2,
            batch_size=4,
            eval_every=1,
            threads=config.threads,
        )
    return ClapTrainConfig(seed=config.seed, threads=config.threads)


def quality_settings(config: ToyWorldTrainConfig) -> ToyQualityConfig:
    """The quality head's training config."""
    if config.quick:
        return ToyQualityConfig(
            seed=config.seed,
            examples=10,
            valid_examples=10,
            mix_examples=10,
            epochs=2,
            batch_size=4,
            threads=config.threads,
        )
    return ToyQualityConfig(seed=config.seed, threads=config.threads)


def train_toyworld(config: ToyWorldTrainConfig, command: str) -> Path:
    """Train, save and judge the chosen toy models; return the manifest's path.

    Models not chosen keep their folders, and their manifest entries keep the metrics measured when they
    were trained; every file's hash is taken afresh.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    previous = read_manifest(out) if (out / MANIFEST_FILE).exists() else {"configs": {}, "models": {}}
    metrics = {name: entry.get("metrics", {}) for name, entry in previous["models"].items()}
    # a manifest from before per-model commands: each model was trained with the default settings of its trainer
    commands = {
        name: entry.get("commands", [f"musicrl toyworld train --models {name}"])
        for name, entry in previous["models"].items()
    }
    configs: dict[str, Any] = dict(previous["configs"])
    chosen = config.chosen()
    if "musicgen" in chosen:
        metrics |= _train_policy(config, out)
        if not config.keep_codec:
            configs["codec"] = dataclasses.asdict(codec_settings(config))
        configs["policy"] = dataclasses.asdict(policy_settings(config))
    if "clap" in chosen:
        metrics["clap"] = _train_clap(config, out)
        configs["clap"] = dataclasses.asdict(clap_settings(config))
    if "quality" in chosen:
        metrics["quality"] = _train_quality(config, out)
        configs["quality"] = dataclasses.asdict(quality_settings(config))
    for name in chosen:
        kept = commands.get(name, []) if name == "musicgen" and config.keep_codec else []  # made the kept codec
        commands[name] = [*kept, command]
    path = write_manifest(out, command=command, commands=commands, configs=configs, metrics=metrics)
    logger.info("toy models %s trained in %.0f s: %s", ", ".join(chosen), time.monotonic() - started, path)
    return path


def _train_clap(config: ToyWorldTrainConfig, out: Path) -> dict[str, float]:
    _clear(out / "clap")
    return train_clap(clap_settings(config), out / "clap")


def _train_quality(config: ToyWorldTrainConfig, out: Path) -> dict[str, float]:
    # The checkpoint names its embedder: toy://clap when it ships in the package, else the CLAP's folder.
    clap_dir = out / "clap"
    if not clap_dir.is_dir():
        raise InvalidRequest(
            f"the quality head is trained over the toy CLAP, and {clap_dir} holds none: train clap too"
        )
    clap_uri = "toy://clap" if out.resolve() == CHECKPOINTS_DIR.resolve() else str(clap_dir.resolve())
    _clear(out / "quality")
    return train_toy_quality(quality_settings(config), clap_uri, out / "quality")


def _train_policy(config: ToyWorldTrainConfig, out: Path) -> dict[str, dict[str, float]]:
    started = time.monotonic()
    metrics: dict[str, dict[str, float]] = {}
    held_out = held_out_prompts(config.seed, 8 if config.quick else HELD_OUT_CLIPS)
    if config.keep_codec:
        codec, codec_history, codec_plot = _existing_codec(out / "musicgen")
        kept = read_manifest(out)["models"]["musicgen"]["metrics"]
        metrics["musicgen"] = {k: v for k, v in kept.items() if k.startswith("codec/")}
    else:
        codec, codec_history = train_codec.train_codec(codec_settings(config))
        metrics["musicgen"], codec_plot = codec_metrics(codec, held_out), None
    captions, codes = train_policy.training_set(policy_settings(config), codec, start=0)
    model, tokenizer, policy_history = train_policy.train_policy(policy_settings(config), codec, captions, codes)
    _clear(out / "musicgen")
    save_checkpoint(model, tokenizer, str(out / "musicgen"), _metadata("policy", config, metrics["musicgen"]))
    write_history(out / "musicgen", [{"model": "codec", **r} for r in codec_history] + policy_history)
    if codec_plot is not None:
        (out / "musicgen" / f"codec_{PLOT_FILE}").write_bytes(codec_plot)
    else:
        plot_history(
            codec_history,
            out / "musicgen" / f"codec_{PLOT_FILE}",
            "Toy EnCodec: decoder from the recipe, encoder to the recipe, then the whole codec",
            {"reconstruction": ["mel", "waveform"], "encoder": ["features"], "codes in use": ["codes_used"]},
        )
    plot_history(policy_history, out / "musicgen" / PLOT_FILE, "Toy MusicGen", {"cross-entropy": ["loss"]})
    engine = GenerationEngine.from_uri(str(out / "musicgen"), EngineConfig())
    adherence = prompt_adherence(engine, [e.caption.text for e in held_out])
    metrics["musicgen"].update({f"policy/adherence/{k}": v for k, v in adherence.agreed.items()})
    metrics["musicgen"]["policy/adherence/mean"] = adherence.mean()
    metrics["musicgen"]["time/policy_s"] = time.monotonic() - started
    return metrics


def _existing_codec(folder: Path) -> tuple[EncodecModel, list[dict[str, Any]], bytes]:
    """The codec inside a saved toy MusicGen, its training history and its plot (read before the folder goes)."""
    if not (folder / "model.safetensors").is_file():
        raise InvalidRequest(f"keep_codec needs a trained policy folder with its codec at {folder}; none is there")
    codec = MusicgenForConditionalGeneration.from_pretrained(folder).audio_encoder.eval()
    rows = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    history = [{k: v for k, v in r.items() if k != "model"} for r in rows if r.get("model") == "codec"]
    return codec, history, (folder / f"codec_{PLOT_FILE}").read_bytes()


def _clear(dest: Path) -> None:
    # A retrained model replaces the old folder whole: files of an earlier layout must not linger in it.
    if dest.exists():
        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=dest.parent))
        dest.rename(trash / dest.name)
        shutil.rmtree(trash)


def _metadata(kind: str, config: ToyWorldTrainConfig, metrics: dict[str, float]) -> CheckpointMetadata:
    return CheckpointMetadata(
        kind=kind,
        training_run=f"toyworld-seed{config.seed}{'-quick' if config.quick else ''}",
        metrics={k: v for k, v in metrics.items() if v == v},  # NaN is not JSON
        extra={"world": "musicrl.toyworld", "seed": config.seed},
    )
