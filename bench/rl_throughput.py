"""RL trajectories per second and peak memory: the fused step against the materialised one, and against
generation alone on the same model and batch.

For each model size and each variant, in its own process (so peak memory is its own): a few RL steps through
the trainer (rollout, reward, teacher-forced policy, reference and value passes, backward, optimiser steps)
and, on the same engine, batch and clip length, generation only. The variants:

* ``materialised``: the step before issue 9: full [B, K, P, V] logits for the policy and the reference,
  ``ComputeConfig(fused=False)``, fp32;
* ``fused``: guided states for both and one log-softmax per chunk of positions, ``ComputeConfig()`` (bf16
  autocast on CUDA, fp32 on CPU);
* ``fused+ckpt``: the same with the decoders' activations recomputed in backward (``checkpoint_decoder``).

Times are CPU seconds of the process on a CPU (run with OMP_NUM_THREADS=1, so that other work on a shared
machine does not count) and wall seconds on a GPU. Peak memory is the peak of the timed steps' training (from
the reference pass to the optimiser step): CUDA memory allocated on a GPU, resident memory (VmHWM, reset per
step) on a CPU; "training" is that peak less the memory with the models loaded (optimiser state, gradients,
activations). Each variant runs ``--rounds`` times, alternating, and the best round counts (a shared machine
slows some rounds down; none speeds one up). Issue 9's goal is RL trajectories/s >= 0.6x generation clips/s
at equal batch.

    python bench/rl_throughput.py [--steps 3] [--rounds 2] [--sizes tiny mid] [--clip-s 1.0] [--device cpu]
"""

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    # name: (policy URI, codebook size, batch)
    "tiny": ("tiny://musicgen?seed=0", 128, 8),
    "mid": (  # ~42M parameters: 8 layers of width 512 over 4 codebooks of 2048 (MusicGen-small: 24 of 1024)
        "tiny://musicgen?seed=0&hidden_size=512&num_hidden_layers=8&num_attention_heads=8&ffn_dim=2048"
        "&codebook_size=2048",
        2048,
        8,
    ),
}
VARIANTS = ("materialised", "fused", "fused+ckpt")


def measure(size: str, variant: str, steps: int, clip_s: float, device: str) -> dict:
    from musicrl.config import EngineConfig, SamplingParams
    from musicrl.models.engine import GenerationEngine, GenerationRequest
    from musicrl.rl.config import RLConfig

    uri, vocab, batch = SIZES[size]
    with tempfile.TemporaryDirectory() as out:
        config = RLConfig.from_wire(
            {
                "stage": "bench",
                "policy_uri": uri,
                "rewards": [{"reward": "low-codes", "uri": f"analytic://low-codes?vocab_size={vocab}"}],
                "prompts": ["lofi beat", "string quartet", "techno", "folk song"],
                "sampling": {"duration_s": clip_s, "temperature": 0.99, "top_k": 0, "guidance_scale": 3.0},
                "optim": {"steps": steps + 1, "batch_size": batch, "policy_lr": 1e-5},
                "checkpoint_every": 10_000,
                "out_url": out,
                "device": device,
            }
        )
        trainer = _trainer(config, variant)
        loaded_mb = _loaded_mb(device)
        trainer.run()  # the first step warms up; the others are timed
    engine = GenerationEngine(trainer.policy, EngineConfig(device=device))
    params = SamplingParams(duration_s=clip_s, temperature=0.99, top_k=0, guidance_scale=3.0)
    requests = [GenerationRequest(p, params, seed=i) for i, p in enumerate(config.prompts * (batch // 4))]
    engine.generate_batch(requests)  # warm-up
    started = _clock(device)
    for _ in range(steps):
        engine.generate_batch(requests)
    generation_s = (_clock(device) - started) / steps
    timed = trainer.marks[1:]  # [0] is the warm-up step, which also allocates AdamW's state
    rollout_s = _mean(m["train_start"] - m["start"] for m in timed)
    train_s = _mean(m["end"] - m["train_start"] for m in timed)
    return {
        "size": size,
        "variant": variant,
        "parameters_m": sum(p.numel() for p in trainer.policy.model.parameters()) / 1e6,
        "batch": batch,
        "clip_s": clip_s,
        "rl_trajectories_per_s": batch / (rollout_s + train_s),
        "rollout_s": rollout_s,
        "train_s": train_s,
        "generation_clips_per_s": len(requests) / generation_s,
        "peak_mb": max(m["peak_mb"] for m in timed),
        "loaded_mb": loaded_mb,
    }


def _clock(device: str) -> float:
    """Seconds: this process's CPU time on a CPU (other processes on a shared machine do not count), wall time
    after the queued kernels on a GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def _trainer(config, variant: str):
    """The trainer with the variant's step (the objective's compute, the reference's form) and memory marks."""
    import torch

    from musicrl.models.conditioning import encode_prompts
    from musicrl.rl.compute import ComputeConfig
    from musicrl.rl.objective_module import RLObjective, StepInputs
    from musicrl.rl.policy import guided_pass
    from musicrl.rl.trainer import MAX_PROMPT_TOKENS, RLTrainer

    fused = variant != "materialised"

    class BenchTrainer(RLTrainer):
        marks: list[dict[str, float]]  # per step: clock at its start, at its training's start, at its end; peak

        def _step(self, *args, **kwargs):
            self.marks.append({"start": _clock(config.device)})
            metrics = super()._step(*args, **kwargs)
            self.marks[-1]["end"] = _clock(config.device)
            self.marks[-1]["peak_mb"] = _peak_mb(config.device)
            return metrics

        def _inputs(self, rollout, rewards):  # as RLTrainer._inputs, with the reference in the variant's form
            self.marks[-1]["train_start"] = _clock(config.device)
            _reset_peak(config.device)  # the step's peak is its training's: rollouts are the same in every variant
            with torch.no_grad():
                tokenizer = self.policy.tokenizer
                states, mask = encode_prompts(self.policy.model, tokenizer, rollout.prompts, MAX_PROMPT_TOKENS)
                ref_states, ref_mask = encode_prompts(
                    self.reference.model, self.reference.tokenizer, rollout.prompts, MAX_PROMPT_TOKENS
                )
                if fused:
                    reference = self.objective.reference_states(
                        self.reference.model, rollout.grid, ref_states, ref_mask
                    )
                else:
                    reference = guided_pass(self.reference.model, rollout.grid, ref_states, ref_mask, config.sampling)
                    reference = reference.logits  # [B, K, P, V]
            return StepInputs(rollout.grid, rollout.token_mask, states, mask, reference, rewards.float())

    trainer = BenchTrainer.build(config)
    trainer.marks = []
    old = trainer.objective
    compute = {
        "materialised": ComputeConfig(fused=False, autocast=False),
        "fused": ComputeConfig(),
        "fused+ckpt": ComputeConfig(checkpoint_decoder=True),
    }[variant]
    trainer.objective = RLObjective(old.policy, old.value, old.params, old.alpha, old.value_coef, compute=compute)
    return trainer


def _loaded_mb(device: str) -> float:
    """Memory in MiB with the models loaded, before training: CUDA memory allocated, or resident memory."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak(device: str) -> None:
    """Start a new peak-memory window: CUDA's allocator statistics, or Linux's VmHWM (reset to the current RSS)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device: str) -> float:
    """Peak memory in MiB since the last reset: CUDA memory allocated, or resident memory (VmHWM)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed RL steps (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant; the best counts")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--clip-s", type=float, default=1.0, help="seconds of audio per trajectory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        size, variant = args.one
        sys.stdout.write(json.dumps(measure(size, variant, args.steps, args.clip_s, args.device)) + "\n")
        return
    memory = "CUDA memory allocated" if args.device.startswith("cuda") else "resident memory"
    print(f"RL step (rollout + reward + policy/reference/value passes + update) vs generation alone; {memory}\n")
    for size in args.sizes:
        rounds = [[_child(size, variant, args) for variant in args.variants] for _ in range(args.rounds)]
        results = {variant: _best([r[i] for r in rounds]) for i, variant in enumerate(args.variants)}
        first = next(iter(results.values()))
        print(f"{size} ({first['parameters_m']:.1f}M params, batch {first['batch']}, {first['clip_s']} s clips, "
              f"{args.device}, best of {args.rounds})")  # fmt: skip
        for variant, r in results.items():
            print(
                f"  {variant:>12}: RL {r['rl_trajectories_per_s']:.3f} traj/s (train {r['train_s']:.2f} s + rollout "
                f"{r['rollout_s']:.2f} s), generation {r['generation_clips_per_s']:.3f} clips/s, RL/generation "
                f"{r['rl_trajectories_per_s'] / r['generation_clips_per_s']:.2f}, peak {r['peak_mb']:.0f} MB "
                f"(training {r['peak_mb'] - r['loaded_mb']:.0f} MB)"
            )
        if "materialised" in results:
            before = results["materialised"]
            for variant, after in results.items():
                if variant != "materialised":
                    speed = after["rl_trajectories_per_s"] / before["rl_trajectories_per_s"]
                    print(
                        f"  {variant} / materialised: {speed:.2f}x trajectories/s, "
                        f"{before['train_s'] / after['train_s']:.2f}x training speed, "
                        f"{after['peak_mb'] / before['peak_mb']:.2f}x peak memory, "
                        f"{(after['peak_mb'] - after['loaded_mb']) / (before['peak_mb'] - before['loaded_mb']):.2f}x "
                        "training memory"
                    )
        print()


def _best(runs: list[dict]) -> dict:
    """The best of a variant's rounds: fastest times and rates, least memory."""
    best = dict(runs[0])
    for key in ("rl_trajectories_per_s", "generation_clips_per_s"):
        best[key] = max(r[key] for r in runs)
    for key in ("rollout_s", "train_s", "peak_mb"):
        best[key] = min(r[key] for r in runs)
    return best


def _child(size: str, variant: str, args: argparse.Namespace) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--one", size, variant, "--steps", str(args.steps), "--clip-s", str(args.clip_s),
         "--device", args.device],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        sys.exit(f"{size}/{variant} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
