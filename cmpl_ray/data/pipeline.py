"""Ray Data streaming: list files -> decord decode + augment in an actor pool -> Train worker shards.

Only metadata (path, label, index) is shuffled; decoding happens lazily in ``map_batches`` actors, so the
dataset is never materialised and memory stays bounded by Ray Data's streaming backpressure. Clips stay
uint8 until the training worker normalises them on its device.

A bad video never kills an epoch: its row comes out with ``valid=False``, zero pixels and an error code, so
batch shapes and the number of steps per rank stay fixed (``streaming_split`` needs equal consumption) and
the trainer counts and names it. Error codes: :data:`ERR_CODES`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from ..config import Config, DataConfig
from . import augment
from .decode import BadVideo, probe, read_frames
from .lists import VideoItem, read_classes, read_list, resolve_path
from .sampling import clip_indices, eval_clip_starts, sample_train_indices

log = logging.getLogger(__name__)

ERR_CODES = {0: "ok", 1: "missing", 2: "empty", 3: "undecodable", 4: "timeout", 5: "bad_label", 98: "padding",
             99: "looped_short"}
_REASON_TO_CODE = {"missing": 1, "empty": 2, "undecodable": 3, "timeout": 4, "bad_label": 5}
PAD, LOOPED = 98, 99


def classes_path(cfg: Config) -> str:
    if cfg.data.classes_file:
        return cfg.data.classes_file
    return os.path.join(os.path.dirname(cfg.data.labeled_list) or ".", "classes.txt")


def class_names(cfg: Config) -> list[str]:
    """Class names from classes.txt; falls back to ``class_<i>`` when only model.num_classes is set."""
    path = classes_path(cfg)
    if os.path.exists(path) or "://" in path:
        names = read_classes(path)
        if cfg.model.num_classes and cfg.model.num_classes != len(names):
            raise ValueError(f"model.num_classes={cfg.model.num_classes} but {path} lists {len(names)} classes")
        return names
    if cfg.model.num_classes:
        return [f"class_{i}" for i in range(cfg.model.num_classes)]
    raise FileNotFoundError(f"data.classes_file: {path} not found and model.num_classes is 0; "
                            "pass --set model.num_classes=N or write classes.txt beside the labeled list")


def steps_per_epoch(cfg: Config, n_labeled: int, n_unlabeled: int, world: int) -> int:
    """Steps per epoch: one pass over the unlabeled set (the same for every algorithm, so baselines train
    exactly as many steps as CMPL); the labeled stream cycles to fill them."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    b_u = cfg.algo.unlabeled_ratio * cfg.train.batch_labeled
    n = n_unlabeled // (b_u * world) if n_unlabeled else n_labeled // (cfg.train.batch_labeled * world)
    if n < 1:
        raise ValueError(f"too few videos for one step: {n_unlabeled} unlabeled / {n_labeled} labeled for "
                         f"{world} workers x B_u={b_u}; lower train.batch_labeled or set train.steps_per_epoch")
    return n


def _fetch(path: str) -> str | bytes:
    """Local paths go straight to decord; object-store URIs are read into memory with pyarrow."""
    if "://" not in path or path.startswith("file://"):
        return path.removeprefix("file://")
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    try:
        with fs.open_input_file(p) as f:
            return f.read()
    except FileNotFoundError:
        raise BadVideo("missing") from None
    except OSError as e:
        raise BadVideo("missing" if "not found" in str(e).lower() or "no such" in str(e).lower() else "undecodable") from e


def _code(e: BadVideo) -> int:
    return _REASON_TO_CODE.get(getattr(e, "reason", "undecodable"), 3)


class ClipDecoder:
    """Ray Data actor: decodes and augments a batch of (path, label, index) rows.

    mode "labeled": ``l_p``/``l_a`` standard views. "unlabeled": ``u_weak_p``, ``u_strong_p``,
    ``u_weak_a``, ``u_strong_a``. "val": ``v_p``/``v_a`` (views, C, T, S, S) for clips x crops.
    """

    def __init__(self, mode: str, data_cfg: dict[str, Any], num_classes: int, with_aux: bool, seed: int = 0):
        import torch

        torch.set_num_threads(1)  # one decode actor = one core; parallelism comes from the pool
        self.mode, self.dc, self.k, self.with_aux = mode, DataConfig(**data_cfg), num_classes, with_aux
        self.rng = np.random.default_rng([seed, os.getpid(), int.from_bytes(os.urandom(4), "little")])
        self.t_p = self.dc.raw_clip_len // self.dc.primary_stride
        self.t_a = self.dc.raw_clip_len // self.dc.aux_stride
        self.warned: set[str] = set()

    # -- one sample -------------------------------------------------------------------------------------
    def _decode_train(self, path: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
        dc = self.dc
        src = _fetch(path)
        n, fps, _, _ = probe(src)
        short = n < dc.raw_clip_len
        idx_p, idx_a = sample_train_indices(n, fps, dc.raw_clip_len, dc.primary_stride, dc.aux_stride,
                                            dc.time_offset, self.rng)
        size = dc.train_short_side[1] if self.mode == "labeled" else dc.crop_size
        idx = np.concatenate([idx_p, idx_a]) if self.with_aux else idx_p
        frames = read_frames(src, idx, short_side=size, timeout_s=dc.decode_timeout_s)  # (T, H, W, 3)
        fa = frames[len(idx_p):] if self.with_aux else None
        return frames[: len(idx_p)], fa, short

    def _decode_val(self, path: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
        import torch

        dc = self.dc
        src = _fetch(path)
        n, _, _, _ = probe(src)
        starts = eval_clip_starts(n, dc.raw_clip_len, dc.eval_clips)
        ip = [clip_indices(n, s, dc.raw_clip_len, dc.primary_stride) for s in starts]
        ia = [clip_indices(n, s, dc.raw_clip_len, dc.aux_stride) for s in starts] if self.with_aux else []
        frames = read_frames(src, np.concatenate(ip + ia), short_side=dc.test_short_side,
                             timeout_s=dc.decode_timeout_s)
        out, pos = [], 0
        for group in (ip, ia):
            views = []
            for ind in group:
                clip = frames[pos: pos + len(ind)]
                pos += len(ind)
                views.append(augment.eval_views(clip, dc.crop_size, dc.eval_crops))  # (crops, C, T, S, S)
            out.append(torch.cat(views).numpy() if views else None)  # (clips*crops, C, T, S, S)
        return out[0], out[1], n < dc.raw_clip_len

    def _one(self, path: str, label: int) -> tuple[dict[str, np.ndarray] | None, int]:
        dc, rng = self.dc, self.rng
        if not 0 <= label < self.k:
            raise BadVideo("bad_label")
        if self.mode == "val":
            vp, va, short = self._decode_val(path)
            return {"v_p": vp, "v_a": va}, LOOPED if short else 0
        fp, fa, short = self._decode_train(path)
        code = LOOPED if short else 0
        if self.mode == "labeled":
            views = {"l_p": augment.standard(fp, dc.crop_size, tuple(dc.train_short_side), rng)}
            if fa is not None:
                views["l_a"] = augment.standard(fa, dc.crop_size, tuple(dc.train_short_side), rng)
            return {k: v.numpy() for k, v in views.items()}, code
        views = {"u_weak_p": augment.weak(fp, dc.crop_size, dc.weak_flip, rng),
                 "u_strong_p": augment.strong(fp, dc.crop_size, dc.weak_flip, rng, dc.randaug_n, dc.randaug_m, dc.cutout)}
        if fa is not None:
            views["u_weak_a"] = augment.weak(fa, dc.crop_size, dc.weak_flip, rng)
            views["u_strong_a"] = augment.strong(fa, dc.crop_size, dc.weak_flip, rng, dc.randaug_n, dc.randaug_m, dc.cutout)
        return {k: v.numpy() for k, v in views.items()}, code

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        s, tp, ta = self.dc.crop_size, self.t_p, self.t_a
        v = self.dc.eval_clips * self.dc.eval_crops
        keys = {"labeled": {"l_p": (3, tp, s, s), "l_a": (3, ta, s, s)},
                "unlabeled": {"u_weak_p": (3, tp, s, s), "u_strong_p": (3, tp, s, s),
                              "u_weak_a": (3, ta, s, s), "u_strong_a": (3, ta, s, s)},
                "val": {"v_p": (v, 3, tp, s, s), "v_a": (v, 3, ta, s, s)}}[self.mode]
        return {k: shp for k, shp in keys.items() if self.with_aux or not k.endswith("_a")}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = self._shapes()
        cols: dict[str, list] = {k: [] for k in shapes}
        prefix = {"labeled": "l_", "unlabeled": "u_", "val": ""}[self.mode]
        ys, valid, errs = [], [], []
        for path, label in zip(batch["path"], batch["label"]):
            path, label = str(path), int(label)
            views, code = None, PAD
            if path:
                try:
                    views, code = self._one(path, label)
                except BadVideo as e:
                    code = _code(e)
                except Exception as e:  # a decoder bug or odd file must not kill the epoch either
                    log.debug("decode failed for %s: %r", path, e)
                    code = 3
                if code not in (0, PAD) and path not in self.warned:
                    self.warned.add(path)
                    log.warning("%s video %s: %s", "looping short" if code == LOOPED else "skipping", path, ERR_CODES[code])
            for k, shp in shapes.items():
                cols[k].append(views[k] if views is not None else np.zeros(shp, np.uint8))
            ys.append(label if views is not None else 0)
            valid.append(views is not None)
            errs.append(code if path else PAD)
        out = {k: np.stack(v) for k, v in cols.items()}
        yk = {"labeled": "y_l", "unlabeled": "y_u", "val": "y"}[self.mode]
        out[yk] = np.asarray(ys, np.int64)
        out[f"{prefix}valid"] = np.asarray(valid, bool)
        out[f"{prefix}err"] = np.asarray(errs, np.int64)
        out[f"{prefix}index"] = np.asarray(batch["index"], np.int64)
        return out


def _meta(items: list[VideoItem], root: str) -> list[dict[str, Any]]:
    return [{"path": resolve_path(root, it.path), "label": it.label, "index": i} for i, it in enumerate(items)]


def _shuffle(ds, seed: int):
    try:
        from ray.data._internal.random_config import RandomSeedConfig

        return ds.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    except (ImportError, TypeError):  # older Ray: unseeded shuffle is still new per epoch
        return ds.random_shuffle()


def quiet_data() -> None:
    """No per-operator progress bars: they flood job logs; training prints its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def _decode(ds, mode: str, cfg: Config, num_classes: int, with_aux: bool, actors: int | None = None):
    import ray.data

    return ds.map_batches(
        ClipDecoder,
        fn_constructor_kwargs={"mode": mode, "data_cfg": dataclasses.asdict(cfg.data), "num_classes": num_classes,
                               "with_aux": with_aux, "seed": cfg.train.seed},
        batch_size=cfg.data.decode_batch,
        compute=ray.data.ActorPoolStrategy(size=actors or cfg.data.decode_actors),
        num_cpus=cfg.data.cpus_per_decoder,
        batch_format="numpy",
    )


def build_train_datasets(cfg: Config, labeled: list[VideoItem], unlabeled: list[VideoItem], num_classes: int,
                         world: int, steps: int) -> dict[str, Any]:
    """Per-epoch datasets sized exactly steps x batch x world, so every rank gets ``steps`` batches.

    The labeled list is repeated to fill the epoch (it cycles) and both streams are re-shuffled every
    epoch (seeded, re-seeded per execution) before truncation, so each epoch sees a new order and subset.
    """
    import ray.data

    with_aux = cfg.uses_aux
    n_l = steps * cfg.train.batch_labeled * world
    reps = -(-n_l // max(1, len(labeled)))
    meta_l = _meta(labeled, cfg.data.root) * reps
    quiet_data()
    out = {"labeled": _decode(_shuffle(ray.data.from_items(meta_l), cfg.train.seed).limit(n_l), "labeled", cfg,
                              num_classes, with_aux, actors=1)}
    if cfg.algo.name != "supervised":
        n_u = steps * cfg.algo.unlabeled_ratio * cfg.train.batch_labeled * world
        reps_u = -(-n_u // max(1, len(unlabeled)))
        meta_u = _meta(unlabeled, cfg.data.root) * reps_u
        out["unlabeled"] = _decode(_shuffle(ray.data.from_items(meta_u), cfg.train.seed + 1).limit(n_u),
                                   "unlabeled", cfg, num_classes, with_aux)
    return out


def build_val_dataset(cfg: Config, items: list[VideoItem], num_classes: int, world: int = 1, with_aux: bool | None = None):
    """Validation videos, padded with empty rows to a multiple of ``world`` so an equal split drops none."""
    import ray.data

    meta = _meta(items, cfg.data.root)
    meta += [{"path": "", "label": 0, "index": -1}] * ((-len(meta)) % world)
    aux = cfg.uses_aux if with_aux is None else with_aux
    quiet_data()
    return _decode(ray.data.from_items(meta), "val", cfg, num_classes, aux, actors=1)


def read_split_lists(cfg: Config) -> tuple[list[VideoItem], list[VideoItem], list[VideoItem]]:
    """(labeled, unlabeled, val) items; a missing list file is a clear error naming the config key."""
    out = []
    for key in ("labeled_list", "unlabeled_list", "val_list"):
        path = getattr(cfg.data, key)
        if key == "unlabeled_list" and cfg.algo.name == "supervised" and not path:
            out.append([])
            continue
        if not path:
            raise ValueError(f"data.{key}: not set")
        if "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(f"data.{key}: list file {path} not found")
        out.append(read_list(path))
    return out[0], out[1], out[2]
