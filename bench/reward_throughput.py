"""Clips scored per second by each reward, batched against one clip at a time, in the same run.

The clips are 10 s at 32 kHz (one CLAP segment) with their codes; each reward scores the same clips both
ways, so the ratio shows what batching buys for that reward. A last line scores clips of mixed lengths
(1 to 10 s) with the preference reward, bucketed by length against one pass padded to the longest.

On a CPU each clip's resampling, spectrogram and model pass are compute-bound, so batching buys little;
``--device cuda`` measures what it buys where one clip at a time leaves the device idle between launches
(``bench/gpu_check.sh`` runs it so).

    python bench/reward_throughput.py [--clips 16] [--seconds 10] [--device cpu]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrl.rewards.base import ClipBatch  # noqa: E402
from musicrl.rewards.preference import PreferenceRewardModel  # noqa: E402
from musicrl.rewards.registry import load_reward  # noqa: E402


TINY_POLICY = "tiny://musicgen?seed=0"
MID_POLICY = (
    "tiny://musicgen?seed=0&hidden_size=512&num_hidden_layers=8&num_attention_heads=8&ffn_dim=2048&codebook_size=2048"
)


def clips(count: int, seconds: float | list[float]) -> ClipBatch:
    rng = np.random.default_rng(0)
    rate = 32_000
    durations = seconds if isinstance(seconds, list) else [seconds] * count
    audio = [(0.1 * rng.standard_normal(int(s * rate))).astype(np.float32) for s in durations]
    codes = [rng.integers(0, 128, size=(4, int(s * 50))) for s in durations]
    return ClipBatch([f"bench prompt {i}" for i in range(count)], audio=audio, sample_rate=rate, codes=codes)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu", help="where the rewards run: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    batch = clips(args.clips, args.seconds)
    singles = [ClipBatch([p], audio=[a], sample_rate=batch.sample_rate, codes=[c])
               for p, a, c in zip(batch.prompts, batch.audio, batch.codes, strict=True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        rewards = {
            "text-adherence": load_reward("text-adherence", "tiny://clap?seed=0", device=args.device),
            "quality": load_reward("quality", "tiny://quality?seed=0", device=args.device),
        }
        for label, policy in (("preference", TINY_POLICY), ("preference-42M", MID_POLICY)):
            path = str(Path(tmp) / label)
            PreferenceRewardModel.from_policy(policy).save(path, metrics={})
            rewards[label] = load_reward("preference", path, device=args.device)
        print(
            f"{args.clips} clips of {args.seconds:.0f} s on {args.device}; tiny CLAP; "
            "preference on a tiny and a 42M policy\n"
        )
        for name, reward in rewards.items():
            reward.score(singles[0])  # warm-up
            batched = args.clips / timed(lambda r=reward: r.score(batch))
            one_by_one = args.clips / timed(lambda r=reward: [r.score(s) for s in singles])
            print(f"{name:>15}: batched {batched:7.1f} clips/s, one at a time {one_by_one:7.1f} clips/s, "
                  f"ratio {batched / one_by_one:.2f}")  # fmt: skip
        mixed = clips(args.clips, list(np.linspace(1.0, args.seconds, args.clips)))
        model = rewards["preference-42M"].model
        bucketed = args.clips / timed(lambda: rewards["preference-42M"].score(mixed))
        model.max_padding_share = 1.0  # one pass, every clip padded to the longest
        padded = args.clips / timed(lambda: rewards["preference-42M"].score(mixed))
        print(f"\npreference-42M, clips of 1 to {args.seconds:.0f} s: bucketed by length {bucketed:.1f} clips/s, "
              f"one padded pass {padded:.1f} clips/s, ratio {bucketed / padded:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
