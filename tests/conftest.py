"""Shared fixtures for the data tests (and anyone else needing small real videos).

Why session-scoped: writing mp4s costs ~30 ms each; one small synthetic dataset
shared by every test keeps the suite fast.  Size 40, not 48: decord 0.6 cannot
read 48-pixel-wide videos (see ``cmpl_ray.data.synth.DECORD_BAD_WIDTHS``).
"""

from __future__ import annotations

import os
import threading

import pytest

REAL_TIME_POLICIES = {getattr(os, n) for n in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, n)}


def _demote_real_time_threads() -> int:
    """Put every real-time thread of this process and its descendants (Ray, DDP ranks, CLI subprocesses) back
    under the normal policy; how many there were."""
    import psutil

    n = 0
    for pid in [os.getpid()] + [c.pid for c in psutil.Process().children(recursive=True)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                if os.sched_getscheduler(tid) in REAL_TIME_POLICIES:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                    n += 1
            except OSError:  # the thread ended meanwhile
                continue
    return n


class _NormalScheduling(threading.Thread):
    """Seen on shared 2-core machines, CI's included: something outside the project switches a running test
    process to SCHED_FIFO 99 (its later children inherit it). Under a real-time policy, threads that spin-wait
    (OpenMP, gloo) starve the thread they wait for, and a two-process test never ends: CI once ran past its
    limit that way. This thread undoes it every second and the summary says how often it had to."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="normal-scheduling")
        self.demoted = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.demoted += _demote_real_time_threads()


_GUARD = _NormalScheduling()


def pytest_configure(config):
    if hasattr(os, "sched_getscheduler") and os.path.isdir("/proc/self/task"):
        _GUARD.demoted += _demote_real_time_threads()
        _GUARD.start()


def pytest_terminal_summary(terminalreporter):
    if _GUARD.demoted:
        terminalreporter.write_line(
            f"scheduling: {_GUARD.demoted} thread(s) of the test processes were found under a real-time policy "
            "and put back under the normal one (tests/conftest.py: _NormalScheduling)"
        )


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
