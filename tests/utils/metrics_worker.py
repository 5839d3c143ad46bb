"""One process of a gloo group that reduces a MetricsBuffer (run by tests/unit/rl/test_metrics.py).

    RANK=r WORLD_SIZE=2 LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p python -m tests.utils.metrics_worker OUT

Rank r records ``reward/mean`` values r·4+1 and r·4+3 (mean 2 on rank 0, 6 on rank 1), ``kl`` r + 1, and
``held_out/mean`` only on rank 0 (NaN on rank 1, as a rank with nothing finite to report); it writes its
topology and the reduced metrics to ``OUT/rank-r.json``.
"""

import json
import sys
from pathlib import Path

from musicrl.rl.distributed import close_distributed, init_distributed
from musicrl.rl.metrics import MetricsBuffer, collective_device


def main() -> None:
    topology = init_distributed("cpu")
    buffer = MetricsBuffer()
    for value in (topology.rank * 4 + 1, topology.rank * 4 + 3):
        buffer.add("reward/mean", float(value))
    buffer.add("kl", float(topology.rank + 1))
    buffer.add("held_out/mean", 0.25 if topology.rank == 0 else float("nan"))
    reduced = buffer.reduce()
    result = {"rank": topology.rank, "world_size": topology.world_size, "device": topology.device,
              "collective_device": str(collective_device()), "metrics": reduced}  # fmt: skip
    close_distributed()
    (Path(sys.argv[1]) / f"rank-{topology.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
