"""Training metrics: buffer under slash-namespaced keys, reduce across processes, average once, log a line."""

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class MetricsBuffer:
    """Collects values between two log lines (``reward/mean``, ``kl``, ``advantage/std`` ...)."""

    def __init__(self) -> None:
        self._values: defaultdict[str, list[float]] = defaultdict(list)

    def add(self, key: str, value: float | torch.Tensor) -> None:
        self._values[key].append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))

    def reduce(self) -> dict[str, float]:
        """Means over the buffer, then over processes, NaN ignored at both levels; clears the buffer.

        A key that is NaN on some processes (nothing finite recorded there) averages over the others; a key
        that is NaN everywhere stays NaN. Every process must have recorded the same keys.
        """
        keys = sorted(self._values)
        means = [_nan_mean(self._values[k]) for k in keys]
        self._values.clear()
        if dist.is_available() and dist.is_initialized():
            values = torch.tensor(means, dtype=torch.float64, device=collective_device())  # [N]
            present = ~torch.isnan(values)  # [N]
            sums = torch.stack([torch.where(present, values, torch.zeros_like(values)), present.double()])  # [2, N]
            dist.all_reduce(sums)  # every rank logs the same keys in the same order
            means = (sums[0] / sums[1]).tolist()  # 0 / 0 = NaN where no process had a value
        return dict(zip(keys, means, strict=True))


def collective_device() -> torch.device:
    """Where the default process group's collectives run: this process's GPU for NCCL (which reduces CUDA
    tensors only), the CPU otherwise."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _nan_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class MetricsLog:
    """One JSON object per step in ``metrics.jsonl``; appending, so a resumed run continues the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop lines after ``step`` (a resumed run replays the steps after its checkpoint)."""
        kept = [row for row in self.read() if row["step"] <= step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
