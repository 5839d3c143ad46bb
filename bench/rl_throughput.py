"""RL trajectories per second and peak memory, against generation alone on the same model and batch.

For each model size, in its own process (so peak memory is its own): a few RL steps (rollout, reward,
teacher-forced policy, reference and value passes, backward, optimiser steps) and, on the same engine,
batch and clip length, generation only. The ratio says how close the trainer runs to the cost of sampling.

    python bench/rl_throughput.py [--steps 3]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    # name: (policy URI, codebook size, clip seconds, batch)
    "tiny": ("tiny://musicgen?seed=0", 128, 1.0, 8),
    "mid": (
        "tiny://musicgen?seed=0&hidden_size=512&num_hidden_layers=8&num_attention_heads=8&ffn_dim=2048"
        "&codebook_size=2048",
        2048,
        1.0,
        8,
    ),
}


def measure(size: str, steps: int) -> dict:
    from musicrl.config import EngineConfig, SamplingParams
    from musicrl.models.engine import GenerationEngine, GenerationRequest
    from musicrl.rl.config import RLConfig
    from musicrl.rl.trainer import RLTrainer

    uri, vocab, duration, batch = SIZES[size]
    with tempfile.TemporaryDirectory() as out:
        config = RLConfig.from_wire(
            {
                "stage": "bench",
                "policy_uri": uri,
                "rewards": [{"reward": "low-codes", "uri": f"analytic://low-codes?vocab_size={vocab}"}],
                "prompts": ["lofi beat", "string quartet", "techno", "folk song"],
                "sampling": {"duration_s": duration, "temperature": 0.99, "top_k": 0, "guidance_scale": 3.0},
                "optim": {"steps": steps + 1, "batch_size": batch, "policy_lr": 1e-5},
                "checkpoint_every": 10_000,
                "out_url": out,
            }
        )
        trainer = RLTrainer.build(config)
        trainer.run()  # the first step warms up; the metrics of the others are timed
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()][1:]
    rl_per_s = sum(r["trajectories_per_s"] for r in rows) / len(rows)
    engine = GenerationEngine(trainer.policy, EngineConfig())
    params = SamplingParams(duration_s=duration, temperature=0.99, top_k=0, guidance_scale=3.0)
    requests = [GenerationRequest(p, params, seed=i) for i, p in enumerate(config.prompts * (batch // 4))]
    engine.generate_batch(requests)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        engine.generate_batch(requests)
    generation_per_s = steps * len(requests) / (time.perf_counter() - started)
    parameters = sum(p.numel() for p in trainer.policy.model.parameters()) / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {
        "size": size,
        "parameters_m": parameters,
        "batch": batch,
        "clip_s": duration,
        "rl_trajectories_per_s": rl_per_s,
        "generation_clips_per_s": generation_per_s,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", choices=sorted(SIZES), help=argparse.SUPPRESS)  # the per-size child process
    args = parser.parse_args()
    if args.one:
        sys.stdout.write(json.dumps(measure(args.one, args.steps)) + "\n")
        return
    print("RL step (rollout + reward + policy/reference/value passes + update) vs generation alone\n")
    for size in SIZES:
        child = subprocess.run(
            [sys.executable, __file__, "--one", size, "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(child.stdout.strip().splitlines()[-1])
        ratio = r["rl_trajectories_per_s"] / r["generation_clips_per_s"]
        print(
            f"{r['size']:>5} ({r['parameters_m']:.1f}M params, batch {r['batch']}, {r['clip_s']} s clips): "
            f"RL {r['rl_trajectories_per_s']:.2f} traj/s, generation {r['generation_clips_per_s']:.2f} clips/s, "
            f"ratio {ratio:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
