"""The GPU study's environment check and in-memory videos (``studies/gpu_study.py``).

Why a module of its own: the lent GPU machine lacks decord, PyAV and kornia, so the study checks what is
there (and stubs or turns off what is not) and renders the suite family's videos in memory, served to the
trainer's ``ClipDecoder`` in place of ``decode.read_sampled``. Both are Ray-free and codec-free.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import os
import sys
import types
import zlib

import numpy as np

OPTIONAL = ("decord", "av", "kornia", "ray", "mlflow", "skimage", "yaml")


def check_env(pretend: list[str]) -> tuple[dict[str, bool], list[str]]:
    """Which optional packages are here, and what the study does without each missing one."""
    have = {m: m not in pretend and importlib.util.find_spec(m) is not None for m in OPTIONAL}
    sys.modules.update({m: None for m in pretend})  # --pretend-missing: `import m` now raises ImportError
    notes = []
    if not have["yaml"]:
        raise SystemExit("gpu_study: PyYAML is missing, so the presets cannot be read; carry its wheel (.whl)")
    if not have["decord"]:
        stub = types.ModuleType("decord")  # cmpl_ray.data.video_reader imports it; clips here never come from it
        stub.bridge = types.SimpleNamespace(set_bridge=lambda *_: None)
        sys.modules["decord"] = stub  # no VideoReader: a stray decord call fails loudly
        notes.append("decord missing: stub module; clips come from memory")
    if have["kornia"]:
        try:  # present but broken (e.g. a kornia_rs for another Python) would silently void every strong view
            importlib.import_module("kornia.augmentation.auto")
        except Exception as e:
            have["kornia"] = False
            notes.append(f"kornia does not import ({type(e).__name__}: {e})")
    if not have["kornia"]:
        notes.append("kornia missing: RandAugment off (data.randaug_n=0), strong views = flip + Cutout")
    if not (have["ray"] and have["mlflow"]):
        notes.append("ray/mlflow missing: fine, the Ray-free runner imports neither")
    return have, notes


class MemoryVideos:
    """Rendered videos by path, standing in for ``decode.read_sampled``: the same contract (``choose(n, fps)``
    picks the indices, the short side is resized as decord's decoder would), no codec."""

    def __init__(self, videos: dict[str, np.ndarray], fps: float):
        self.videos, self.fps = videos, float(fps)

    def read_sampled(self, src, choose, short_side=None, timeout_s=30.0, num_threads=1):
        from cmpl_ray.data.augment import _resize
        from cmpl_ray.data.video_reader import BadVideo, target_size

        v = self.videos.get(str(src))
        if v is None:
            raise BadVideo("missing", str(src))
        idx = np.asarray(choose(len(v), self.fps), np.int64)
        frames = v[np.minimum(idx, len(v) - 1)]
        h, w = target_size(v.shape[1], v.shape[2], short_side)
        return (_resize(frames, (h, w)) if h > 0 else frames), len(v), self.fps


def _render(job):
    from cmpl_ray.data.suite import render_family_clip

    fam, name, key = job
    return render_family_clip(fam, name, np.random.default_rng(key))


def make_family(fam, per_class: int, val_per_class: int, procs: int, root: str) -> MemoryVideos:
    """Render ``fam`` in memory (``write_family``'s seeds: video i of class c from (0, family, c, i)) and write
    its list files under ``root``."""
    from cmpl_ray.data.lists import VideoItem, write_classes, write_list

    key = zlib.crc32(fam.name.encode())
    jobs, train, val = [], [], []
    for label, name in enumerate(fam.classes):
        for i in range(per_class + val_per_class):
            jobs.append((fam, name, [0, key, label, i]))
            (train if i < per_class else val).append(VideoItem(f"videos/{name}/{i}.mp4", label))
    if procs > 1:
        with mp.get_context("fork").Pool(procs) as pool:
            frames = pool.map(_render, jobs, chunksize=max(1, len(jobs) // (4 * procs)))
    else:
        frames = [_render(j) for j in jobs]
    write_list(os.path.join(root, "train.txt"), train)
    write_list(os.path.join(root, "val.txt"), val)
    write_classes(os.path.join(root, "classes.txt"), list(fam.classes))
    return MemoryVideos({os.path.join(root, it.path): f for it, f in zip(train + val, frames)}, fam.fps)
