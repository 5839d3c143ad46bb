"""Cost of one sampling step, the sampler against the one it replaced, measured in the same run.

The replaced sampler filtered top-k with a device sync (``int(k.max())``) and ran softmax and cumsum in
float64 over the whole vocabulary. Today's passes the batch's largest k from the host and sums only the k
candidates in float64. Also printed: what float64 costs over float32 on those candidates (on CPUs, little).

    python bench/sampler_cost.py [--rows 32] [--vocab 2048] [--top-k 250] [--device cpu]
"""

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from musicrl.models.sampling import sample_tokens  # noqa: E402


def replaced_sampler(logits, temperature, top_k, uniforms):
    """The sampler as it was: top-k with a host sync, float64 over the whole vocabulary (the baseline)."""
    greedy = temperature == 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None, None]
    k = top_k.clamp(min=0, max=scaled.shape[-1])
    if bool((k > 0).any()):
        kth = torch.topk(scaled, int(k.max()), dim=-1).values
        index = (k.clamp(min=1) - 1)[:, None, None].expand(-1, scaled.shape[1], 1)
        threshold = torch.where((k > 0)[:, None, None], kth.gather(-1, index), float("-inf"))
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    cdf = torch.softmax(scaled.double(), dim=-1).cumsum(dim=-1)
    total = cdf[..., -1:]
    target = torch.minimum(uniforms.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return torch.where(greedy[:, None], scaled.argmax(dim=-1), sampled)


def best_time(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--codebooks", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--top-k", type=int, default=250)
    parser.add_argument("--steps", type=int, default=50, help="sampling calls per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((args.rows, args.codebooks, args.vocab), generator=gen).to(args.device)
    temperature = torch.ones(args.rows, device=args.device)
    top_k = torch.full((args.rows,), args.top_k, dtype=torch.long, device=args.device)
    uniforms = torch.rand((args.rows, args.codebooks), generator=gen, dtype=torch.float64).to(args.device)

    def run(fn):
        return lambda: [fn() for _ in range(args.steps)]

    new = run(lambda: sample_tokens(logits, temperature, top_k, uniforms, candidates=args.top_k))
    old = run(lambda: replaced_sampler(logits, temperature, top_k, uniforms))
    same = (
        (
            sample_tokens(logits, temperature, top_k, uniforms, candidates=args.top_k)
            == replaced_sampler(logits, temperature, top_k, uniforms)
        )
        .float()
        .mean()
    )
    new_s, old_s = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        new_s.append(best_time(new, 1, args.device))
        old_s.append(best_time(old, 1, args.device))
    per_step_new, per_step_old = min(new_s) / args.steps * 1e3, min(old_s) / args.steps * 1e3
    print(f"{args.rows} rows x {args.codebooks} codebooks x {args.vocab} tokens, top-k {args.top_k}, {args.device}")
    print(f"  replaced sampler: {per_step_old:.3f} ms/step   today's: {per_step_new:.3f} ms/step")
    print(f"  speed-up: {per_step_old / per_step_new:.2f}x   same tokens as the replaced sampler: {same:.3f}")

    cand = torch.topk(logits, args.top_k, dim=-1).values
    f64 = run(lambda: torch.exp(cand.double() - cand[..., :1].double()).cumsum(-1))
    f32 = run(lambda: torch.exp(cand - cand[..., :1]).cumsum(-1))
    full64 = run(lambda: torch.softmax(logits.double(), dim=-1).cumsum(-1))
    t64, t32, tfull = (best_time(f, args.repeats, args.device) / args.steps * 1e3 for f in (f64, f32, full64))
    print(f"  CDF over the whole vocabulary in float64: {tfull:.3f} ms/step")
    print(f"  CDF over the candidates: float64 {t64:.3f} ms/step, float32 {t32:.3f} ms/step ({t64 / t32:.2f}x)")


if __name__ == "__main__":
    main()
