"""How the RL step computes (not what it computes): precision, recomputation and chunking of the loss.

None of these settings changes the objective: in fp32 the fused, chunked pass equals the materialised one up to
round-off, and gradient checkpointing recomputes exactly what it dropped. They trade memory for compute and
fp32 for bf16 where a GPU makes that pay (issue 9: the RL step materialised [B, K, P, V] logits about six times,
all in fp32).
"""

import contextlib
from dataclasses import dataclass

import torch

from musicrl.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class ComputeConfig:
    """How the policy, reference and value passes of one RL step run.

    Attributes:
        autocast: Run the forward passes under bf16 autocast; weights, gradients and optimiser state stay fp32,
            and the log-softmax, KL and losses are taken in fp32. None: on for CUDA, off elsewhere.
        checkpoint_decoder: Recompute each decoder layer during backward instead of keeping its activations
            (the policy's decoder and a separate value model's): one more forward pass, in exchange for
            activation memory that no longer grows with the number of layers.
        chunk_positions: Decoder positions whose logits are computed at once in the fused log-prob, KL and
            entropy pass; only one chunk's [B, K, p, V] logits exist at a time.
        fused: False materialises the full [B, K, P, V] logits (the path before issue 9; the benchmark's
            baseline, and a cross-check).
    """

    autocast: bool | None = None  # CPUs run bf16 matmuls slower than fp32, so auto means CUDA only
    checkpoint_decoder: bool = False  # ~1/3 more decoder compute; worth it when activations, not weights, bind
    chunk_positions: int = 64  # 64 positions ≈ 1.3 s of 50 Hz audio; [8, 4, 64, 2048] fp32 logits are 16 MiB
    fused: bool = True

    def __post_init__(self) -> None:
        if self.chunk_positions < 1:
            raise InvalidRequest(
                f"compute.chunk_positions must be >= 1 (positions per chunk of the fused loss), "
                f"got {self.chunk_positions}"
            )

    def autocast_enabled(self, device_type: str) -> bool:
        """Whether forward passes on ``device_type`` (``"cuda"``, ``"cpu"`` ...) run under bf16 autocast."""
        return device_type == "cuda" if self.autocast is None else self.autocast

    def autocast_context(self, device_type: str) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast on ``device_type`` when :meth:`autocast_enabled`, else a no-op context."""
        if not self.autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
