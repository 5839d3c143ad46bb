"""Issue 9's GPU checks, one process per GPU under ``torchrun`` (started by ``bench/gpu_check.sh``).

Each rank checks, printing one ``PASS``/``FAIL`` line per check:

1. its device is ``cuda:LOCAL_RANK`` and the current CUDA device is that GPU;
2. MetricsBuffer reduces over NCCL on that GPU (a CPU tensor is what NCCL refused before), NaN ignored;
3. the fused loss equals the materialised one in fp32 on CUDA, in value and gradient;
4. the default compute (bf16 autocast on CUDA) gives a finite loss close to fp32's;
5. a few RL steps of the tiny policy through the trainer, on this rank's GPU, with finite metrics.

It writes ``OUT/rank-R.json``; ``--summarise OUT N`` then checks across ranks that DDP left identical
parameters that moved, and that ranks trained on different prompts.

    torchrun --standalone --nproc-per-node N bench/gpu_check.py OUT
    python bench/gpu_check.py --summarise OUT N

``GPU_CHECK_DRY_RUN=1`` runs the same checks on CPUs over gloo (autocast forced on), to test this script
where there is no GPU.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from musicrl.config import SamplingParams  # noqa: E402
from musicrl.models.conditioning import encode_prompts  # noqa: E402
from musicrl.models.delay import delay, window_mask  # noqa: E402
from musicrl.models.loading import load_musicgen  # noqa: E402
from musicrl.rl.compute import ComputeConfig  # noqa: E402
from musicrl.rl.config import RLConfig  # noqa: E402
from musicrl.rl.distributed import init_distributed  # noqa: E402
from musicrl.rl.metrics import MetricsBuffer, collective_device  # noqa: E402
from musicrl.rl.objective_module import RLObjective, StepInputs  # noqa: E402
from musicrl.rl.trainer import RLTrainer  # noqa: E402
from musicrl.rl.value import ValueHead  # noqa: E402


TINY = "tiny://musicgen?seed=0"
PARAMS = SamplingParams(duration_s=0.3, temperature=0.99, top_k=0, guidance_scale=3.0)
DRY_RUN = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
DEVICE = "cpu" if DRY_RUN else "cuda"
PROMPTS = ["rock", "jazz piano", "ambient pads", "techno beat", "folk guitar", "string quartet"]


def main() -> int:
    if sys.argv[1] == "--summarise":
        return summarise(Path(sys.argv[2]), int(sys.argv[3]))
    out = Path(sys.argv[1])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not DRY_RUN:
        # one GPU: init_distributed would run alone, so join a one-process NCCL group to exercise the
        # metrics reduction and barriers on the GPU all the same
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    topology = init_distributed(DEVICE)
    report: dict = {"rank": topology.rank, "failed": []}
    check = _checker(topology.rank, report)
    check("device is cuda:LOCAL_RANK", lambda: _device(topology, local_rank))
    check("metrics reduce over NCCL on this GPU", lambda: _metrics(topology))
    check("fused loss == materialised loss in fp32 on CUDA", lambda: _fused_equals_materialised(topology.device))
    check("bf16 autocast loss finite and near fp32", lambda: _autocast(topology.device))
    check("RL steps on the tiny policy", lambda: _rl_steps(out, topology, report))
    (out / f"rank-{topology.rank}.json").write_text(json.dumps(report))
    return 1 if report["failed"] else 0


def _checker(rank: int, report: dict) -> Callable[[str, Callable[[], str]], None]:
    def check(name: str, body: Callable[[], str]) -> None:
        try:
            detail = body()
        except Exception as e:  # a failed check is reported, and the next one still runs
            report["failed"].append(name)
            print(f"FAIL rank {rank}: {name}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", flush=True)
            return
        print(f"PASS rank {rank}: {name} ({detail})", flush=True)

    return check


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _device(topology, local_rank: int) -> str:
    if DRY_RUN:
        _expect(topology.device == "cpu", f"topology.device is {topology.device}")
        return f"cpu, world {topology.world_size}"
    _expect(topology.device == f"cuda:{local_rank}", f"topology.device is {topology.device}")
    _expect(torch.cuda.current_device() == local_rank, f"current device is {torch.cuda.current_device()}")
    return f"{topology.device}, {torch.cuda.get_device_name(local_rank)}, world {topology.world_size}"


def _metrics(topology) -> str:
    expected_device = torch.device("cpu") if DRY_RUN else torch.device("cuda", torch.cuda.current_device())
    _expect(collective_device() == expected_device, str(collective_device()))
    buffer = MetricsBuffer()
    buffer.add("reward/mean", float(topology.rank))
    buffer.add("held_out/mean", 0.25 if topology.rank == 0 else float("nan"))
    reduced = buffer.reduce()
    expected = (topology.world_size - 1) / 2
    _expect(math.isclose(reduced["reward/mean"], expected), f"reward/mean {reduced['reward/mean']} != {expected}")
    _expect(reduced["held_out/mean"] == 0.25, f"held_out/mean {reduced['held_out/mean']}")
    return f"reward/mean {reduced['reward/mean']}"


def _objective_step(device: str, compute: ComputeConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy = load_musicgen(TINY, device=device)
    policy.model.decoder.requires_grad_(True)
    reference = load_musicgen("tiny://musicgen?seed=1", device=device)  # another seed: KL and its gradient ≠ 0
    vocab = policy.model.config.decoder.vocab_size
    codes = torch.randint(0, vocab, (4, 4, 15), generator=torch.Generator().manual_seed(0)).to(device)
    grid = delay(codes, vocab)  # [B, K, L]
    token_mask = window_mask(torch.full((4,), 15, device=device), 4, grid.shape[-1])[:, :, 1:]  # [B, K, P]
    objective = RLObjective(policy.model, ValueHead(64).to(device), PARAMS, 0.3, 0.5, compute=compute)
    with torch.no_grad():
        states, mask = encode_prompts(policy.model, policy.tokenizer, PROMPTS[:4], 256)
        ref_states, ref_mask = encode_prompts(reference.model, reference.tokenizer, PROMPTS[:4], 256)
    ref = objective.reference_states(reference.model, grid, ref_states, ref_mask)
    out = objective(
        StepInputs(grid, token_mask, states, mask, ref, torch.tensor([1.0, -0.5, 0.2, 0.0], device=device))
    )
    out.total.backward()
    return out.total.detach(), {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}


def _fused_equals_materialised(device: str) -> str:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here (the default; set in case a wheel differs)
    expected, expected_grads = _objective_step(device, ComputeConfig(fused=False, autocast=False))
    actual, grads = _objective_step(device, ComputeConfig(autocast=False, chunk_positions=5))
    torch.testing.assert_close(actual, expected)
    for name, want in expected_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6, msg=name)
    return f"loss {actual.item():.5f}, {len(grads)} gradients"


def _autocast(device: str) -> str:
    _expect(ComputeConfig().autocast_enabled("cuda"), "autocast is not on by default on CUDA")
    fp32, _ = _objective_step(device, ComputeConfig(autocast=False))
    bf16, grads = _objective_step(device, ComputeConfig(autocast=True if DRY_RUN else None))
    _expect(bool(torch.isfinite(bf16)), f"loss {bf16}")
    _expect(all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values()), "gradients")
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.02)
    return f"bf16 {bf16.item():.4f} vs fp32 {fp32.item():.4f}"


def _rl_steps(out: Path, topology, report: dict) -> str:
    run = out / "run"
    config = RLConfig.from_wire(
        {
            "stage": "gpu-check",
            "policy_uri": TINY,
            "rewards": [
                {"reward": "low-codes", "uri": "analytic://low-codes?vocab_size=128", "normalization": "none"}
            ],
            "prompts": PROMPTS,
            "alpha": 0.005,
            "sampling": dataclasses.asdict(PARAMS),
            "optim": {"steps": 3, "batch_size": 4, "policy_lr": 3e-3, "value_lr": 1e-3},
            "checkpoint_every": 3,
            "out_url": str(run),
            "device": DEVICE,  # bare "cuda": each rank's current device, set from LOCAL_RANK
        }
    )
    trainer = RLTrainer.build(config)
    start = _digest(trainer.policy.model.decoder)
    report["prompts"] = trainer._prompts_and_seeds(0)[0]
    devices = {str(p.device) for p in trainer.objective.parameters()}
    _expect(devices == {topology.device}, f"parameters on {devices}, not {topology.device}")
    if not DRY_RUN:
        torch.cuda.reset_peak_memory_stats()
    trainer.run()  # ends the process group
    report["start"], report["policy"] = start, _digest(trainer.policy.model.decoder)
    report["value"] = _digest(trainer.objective.value)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if topology.is_main else []
    _expect(not topology.is_main or len(rows) == 3, f"{len(rows)} metrics rows")
    _expect(all(math.isfinite(r["kl"]) and math.isfinite(r["reward/mean"]) for r in rows), "non-finite metrics")
    peak = 0.0 if DRY_RUN else torch.cuda.max_memory_allocated() / 2**20
    return f"{len(rows) or 'rank 0 logs'} steps, peak {peak:.0f} MiB, last kl {rows[-1]['kl'] if rows else '-'}"


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def summarise(out: Path, nproc: int) -> int:
    """Cross-rank checks over the ranks' reports; returns the exit status."""
    reports = [
        json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc) if (out / f"rank-{r}.json").exists()
    ]
    results = {
        f"all {nproc} ranks reported": len(reports) == nproc,
        "no rank failed a check": all(not r["failed"] for r in reports),
        "the policy trained (parameters moved)": all(r.get("policy") not in (None, r.get("start")) for r in reports),
    }
    if nproc > 1:
        results["DDP: identical policy and value on every rank"] = (
            len({r.get("policy") for r in reports}) == 1 and len({r.get("value") for r in reports}) == 1
        )
        results["each rank drew its own prompts"] = len({json.dumps(r.get("prompts")) for r in reports}) == nproc
    for name, ok in results.items():
        print(f"{'PASS' if ok else 'FAIL'} all ranks: {name}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
