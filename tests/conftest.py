"""Shared fixtures for the data tests (and anyone else needing small real videos).

Why session-scoped: writing mp4s costs ~30 ms each; one small synthetic dataset
shared by every test keeps the suite fast.  Size 40, not 48: decord 0.6 cannot
read 48-pixel-wide videos (see ``cmpl_ray.data.synth.DECORD_BAD_WIDTHS``).
"""

from __future__ import annotations

import os

import pytest

REAL_TIME_POLICIES = {getattr(os, n) for n in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, n)}


def pytest_configure(config):
    """Leave a real-time scheduling policy inherited from the caller (seen on shared 2-core machines): under it,
    threads that spin-wait (OpenMP, gloo's rendezvous) starve the thread they wait for and a two-process test never
    ends.  Processes started later (Ray, DDP ranks) inherit the normal policy."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) in REAL_TIME_POLICIES:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


SYNTH_SMALL = dict(num_classes=4, per_class=6, seed=0, num_frames=32, size=40, fps=12, val_per_class=2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    """Directory of a small synthetic dataset (4 classes x 6 train + 2 val videos,
    32 frames of 40x40 at 12 fps): videos/, train.txt, val.txt, classes.txt."""
    from cmpl_ray.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(str(root), **SYNTH_SMALL)
    return str(root)


@pytest.fixture
def write_mp4():
    """``write_video(path, frames (T,H,W,3) uint8, fps)`` for custom test videos."""
    from cmpl_ray.data.synth import write_video

    return write_video


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for one test module (the end-to-end modules that train in-process)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def splits(synth_root, tmp_path_factory):
    """labeled.txt (2 per class) and unlabeled.txt (the rest) of ``synth_root``'s training list, split 0."""
    from cmpl_ray.data.lists import read_list, split_labeled, write_list

    d = tmp_path_factory.mktemp("splits")
    lab, unl = split_labeled(read_list(os.path.join(synth_root, "train.txt")), per_class=2, seed=0)
    write_list(str(d / "labeled.txt"), lab)
    write_list(str(d / "unlabeled.txt"), unl)
    return d
