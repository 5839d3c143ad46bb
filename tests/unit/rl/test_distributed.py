"""Which device each ``torchrun`` process drives, without a GPU: the topology is simulated."""

import pytest
import torch
import torch.distributed as dist

from musicrl.errors import InvalidRequest
from musicrl.rl import distributed, metrics
from musicrl.rl.distributed import backend_for, init_distributed, resolve_device


def _rank(local_rank: int, world_size: int = 2) -> dict[str, str]:
    return {"WORLD_SIZE": str(world_size), "RANK": str(local_rank), "LOCAL_RANK": str(local_rank)}


@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_each_local_rank_drives_its_own_gpu(requested):
    devices = [resolve_device(requested, _rank(r), cuda_available=True, device_count=2) for r in (0, 1)]
    assert devices == ["cuda:0", "cuda:1"]
    assert [backend_for(d) for d in devices] == ["nccl", "nccl"]


def test_cpu_ranks_share_the_cpu_over_gloo():
    devices = [resolve_device("cpu", _rank(r), cuda_available=True, device_count=2) for r in (0, 1)]
    assert devices == ["cpu", "cpu"] and backend_for(devices[0]) == "gloo"


def test_a_single_process_keeps_the_configured_index():
    assert resolve_device("cuda:1", {}, cuda_available=True, device_count=2) == "cuda:1"
    assert resolve_device("cuda", {}, cuda_available=True, device_count=1) == "cuda:0"


@pytest.mark.parametrize(
    ("requested", "env", "available", "count", "message"),
    [
        ("cuda", _rank(1), True, 1, r"cuda:1 is needed but this process sees 1 GPU\(s\).*--nproc-per-node 1"),
        ("cuda", {}, False, 0, "CUDA is not available; use device: cpu"),
        ("cuda:x", {}, True, 1, "malformed; use cuda or cuda:N"),
    ],
)
def test_impossible_devices_are_refused_with_the_fix(requested, env, available, count, message):
    with pytest.raises(InvalidRequest, match=message):
        resolve_device(requested, env, cuda_available=available, device_count=count)


def test_init_distributed_sets_the_rank_s_gpu_before_joining_nccl(monkeypatch):
    """Rank 1 of 2 on a (faked) two-GPU node: set_device(cuda:1), then NCCL bound to cuda:1."""
    calls: dict[str, object] = {}
    for name, value in _rank(1).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", device))
    monkeypatch.setattr(dist, "is_initialized", lambda: "init" in calls)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.setdefault("init", kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    topology = init_distributed("cuda")
    assert calls["set_device"] == "cuda:1"
    assert calls["init"] == {"backend": "nccl", "device_id": torch.device("cuda:1")}
    assert topology == distributed.Topology(rank=1, world_size=2, local_rank=1, device="cuda:1")
    assert not topology.is_main


def test_a_single_cpu_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == distributed.Topology(device="cpu")
    assert not dist.is_initialized()


def test_metrics_reduce_on_the_gpu_under_nccl_and_on_the_cpu_under_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    assert metrics.collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert metrics.collective_device() == torch.device("cpu")
