"""The BN modes under real DistributedDataParallel (2 gloo processes, Ray-free): several forwards per backward,
one of them under ``no_grad`` (``split``) and one at momentum 0 (``clean``/``split``), must still leave both
ranks with the same weights after each step."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cmpl_ray.algorithm import compute_objective


def _net(t: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _worker(rank: int, bn_mode: str, out: str) -> None:
    torch.set_num_threads(1)  # two ranks on a 2-core machine: no oversubscribed OpenMP threads
    # a file store, not a TCP port picked beforehand that another process may take in between
    store = "file://" + os.path.join(out, "rendezvous")
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    torch.manual_seed(0)  # same initial weights on both ranks
    f = nn.parallel.DistributedDataParallel(_net(4))
    a = nn.parallel.DistributedDataParallel(_net(8))
    opt = torch.optim.SGD(list(f.parameters()) + list(a.parameters()), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(2):
        clip = lambda n, t: torch.randn(n, 3, t, 6, 6, generator=g)  # noqa: E731  (B, C, T, H, W)
        batch = {
            "l_p": clip(2, 4),
            "l_a": clip(2, 8),
            "u_weak_p": clip(3, 4),
            "u_strong_p": clip(3, 4),
            "u_weak_a": clip(3, 8),
            "u_strong_a": clip(3, 8),
            "y_l": torch.randint(0, 3, (2,), generator=g),
        }
        loss, _ = compute_objective(f, a, batch, algo="cmpl", threshold=0.0, bn_mode=bn_mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in list(f.parameters()) + list(a.parameters())])
    torch.save(flat, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("bn_mode", ["clean", "split"])
def test_bn_mode_keeps_ranks_in_sync_under_ddp(bn_mode, tmp_path):
    mp.spawn(_worker, args=(bn_mode, str(tmp_path)), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.isfinite(w0).all() and torch.equal(w0, w1)
