"""Shared fixtures for the data tests (and anyone else needing small real videos).

Why session-scoped: writing mp4s costs ~30 ms each; one small synthetic dataset
shared by every test keeps the suite fast.  Size 40, not 48: decord 0.6 cannot
read 48-pixel-wide videos (see ``cmpl_ray.data.synth.DECORD_BAD_WIDTHS``).
"""

from __future__ import annotations

import pytest

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
