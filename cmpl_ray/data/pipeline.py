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
import math
import os
from typing import Any

import numpy as np

from ..config import Config, DataConfig
from . import augment
from .decode import BadVideo, read_sampled
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


def resolve_flip_map(spec: str, names: list[str]) -> list[int] | None:
    """``data.flip_label_map`` (``a:b,c:d``, names or ids) -> the label of each class after a horizontal flip;
    None when no pair is given. Pairs swap both ways; an unknown class is refused naming the key."""
    if not spec:
        return None
    out = list(range(len(names)))

    def cid(x: str) -> int:
        x = x.strip()
        if x in names:
            return names.index(x)
        if x.isdigit() and int(x) < len(names):
            return int(x)
        raise ValueError(f"data.flip_label_map: {x!r} is not a class name or id (classes: {names})")

    for pair in spec.split(","):
        a, b = (cid(x) for x in pair.split(":"))
        out[a], out[b] = b, a
    return out


def derived(dc: DataConfig) -> bool:
    """Whether the crop or a short side is left to :func:`resolve_data`."""
    return dc.crop_size == 0 or dc.train_short_side == [0, 0] or dc.test_short_side == 0


def resolve_data(cfg: Config, labeled: list[VideoItem]) -> Config:
    """Fill the data-derived sizes in place (``data.crop_size=0``, ``train_short_side=[0, 0]``,
    ``test_short_side=0``) from the first readable labeled video, and return ``cfg``.

    Why at start and in the config: the resolved values are what runs log to MLflow and store in checkpoints,
    so evaluation and prediction decode exactly as training did."""
    dc = cfg.data
    if not derived(dc):
        return cfg
    crop = dc.crop_size
    if not crop:
        import decord

        short, errors = None, []
        for it in labeled[:8]:
            try:
                h, w = decord.VideoReader(_fetch(resolve_path(dc.root, it.path)), num_threads=1)[0].shape[:2]
                short = min(h, w)
                break
            except Exception as e:  # an unreadable first video must not decide the crop
                errors.append(f"{it.path}: {e}")
        if short is None:
            raise ValueError(f"data.crop_size=0 (derived) needs a readable labeled video; errors: {errors[:2]}")
        crop = max(8, min(dc.max_crop, short // 8 * 8))
    train_ss = dc.train_short_side if dc.train_short_side != [0, 0] else [crop, int(round(crop * 8 / 7))]
    cfg.data = dataclasses.replace(dc, crop_size=crop, train_short_side=train_ss,
                                   test_short_side=dc.test_short_side or crop)  # re-validated here
    return cfg


def total_steps(cfg: Config, n_labeled: int, n_unlabeled: int, world: int) -> int:
    """Steps of a run sized by ``train.passes``: max(min_steps, passes x videos / (B_l + B_u) / workers).

    Why both terms: passes scale the run with the data (a 10x larger set trains 10x longer), the floor keeps
    a small set from stopping while the optimiser is still on its starting plateau (docs/recipe-study.md)."""
    b = cfg.train.batch_labeled * (1 + (cfg.algo.unlabeled_ratio if n_unlabeled else 0)) * world
    return max(cfg.train.min_steps, math.ceil(cfg.train.passes * (n_labeled + n_unlabeled) / b))


def steps_per_epoch(cfg: Config, n_labeled: int, n_unlabeled: int, world: int) -> int:
    """Steps per epoch, the same for every algorithm (so baselines train exactly as many steps as CMPL):
    ``train.steps_per_epoch`` if set; with ``train.passes`` the run's :func:`total_steps` over ``train.epochs``;
    else one pass over the unlabeled set, the labeled stream cycling to fill it."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    if cfg.train.passes:
        return -(-total_steps(cfg, n_labeled, n_unlabeled, world) // cfg.train.epochs)
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


def epoch_rows(n_labeled: int, n_unlabeled: int, per_epoch: int, ratio: int, seed: int) -> np.ndarray:
    """(per_epoch, 1 + ratio) list indices: column 0 a labeled video, the rest ``ratio`` unlabeled ones.

    Each list is laid out as concatenated seeded permutations, so within an epoch every unlabeled video
    appears once (truncated to whole steps) and the small labeled list cycles evenly.
    """
    rng = np.random.default_rng(seed)

    def cycled(n: int, k: int) -> np.ndarray:
        if n == 0 or k == 0:
            return np.zeros(k, np.int64)
        return np.concatenate([rng.permutation(n) for _ in range(-(-k // n))])[:k]

    lab = cycled(n_labeled, per_epoch)[:, None]
    unl = cycled(n_unlabeled, per_epoch * ratio).reshape(per_epoch, ratio)
    return np.concatenate([lab, unl], axis=1).astype(np.int64)


class ClipDecoder:
    """Decodes and augments videos into the clips a training step or an evaluation needs.

    mode "train": each input row (``data`` = list indices, see :func:`epoch_rows`) is one labeled video plus
    ``ratio`` unlabeled ones, so a batch of
    B_l rows carries B_l labeled and B_u = ratio x B_l unlabeled clips and one dataset feeds the whole step.
    Outputs ``l_p``/``l_a`` (standard views) and ``u_weak_p``, ``u_strong_p``, ``u_weak_a``, ``u_strong_a``
    of shape (ratio, C, T, S, S). mode "val": ``v_p``/``v_a`` (views, C, T, S, S) for clips x crops.
    """

    def __init__(self, mode: str, data_cfg: dict[str, Any], num_classes: int, with_aux: bool, seed: int = 0,
                 labeled: list[tuple[str, int]] | None = None, unlabeled: list[tuple[str, int]] | None = None,
                 ratio: int = 0, flip_map: list[int] | None = None):
        import torch

        torch.set_num_threads(1)  # one decode actor = one core; parallelism comes from the pool
        self.mode, self.dc, self.k, self.with_aux = mode, DataConfig(**data_cfg), num_classes, with_aux
        self.rng = np.random.default_rng([seed, os.getpid(), int.from_bytes(os.urandom(4), "little")])
        self.seed, self.labeled, self.unlabeled = seed, labeled or [], unlabeled or []
        self.ratio = ratio
        self.flip_map = list(flip_map) if flip_map else list(range(num_classes))  # label of a flipped clip
        self.t_p = self.dc.raw_clip_len // self.dc.primary_stride
        self.t_a = self.dc.raw_clip_len // self.dc.aux_stride
        self.warned: set[str] = set()

    # -- one video --------------------------------------------------------------------------------------
    def _decode_train(self, path: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, bool]:
        dc = self.dc
        t_p = dc.raw_clip_len // dc.primary_stride

        def choose(n: int, fps: float) -> np.ndarray:
            idx_p, idx_a = sample_train_indices(n, fps, dc.raw_clip_len, dc.primary_stride, dc.aux_stride,
                                                dc.time_offset, rng)
            return np.concatenate([idx_p, idx_a]) if self.with_aux else idx_p

        frames, n, _ = read_sampled(_fetch(path), choose, short_side=size, timeout_s=dc.decode_timeout_s)  # (T,H,W,3)
        return frames[:t_p], (frames[t_p:] if self.with_aux else None), n < dc.raw_clip_len

    def _decode_val(self, path: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
        import torch

        dc = self.dc
        t_p, t_a = dc.raw_clip_len // dc.primary_stride, dc.raw_clip_len // dc.aux_stride

        def choose(n: int, fps: float) -> np.ndarray:
            starts = eval_clip_starts(n, dc.raw_clip_len, dc.eval_clips)
            ip = [clip_indices(n, s, dc.raw_clip_len, dc.primary_stride) for s in starts]
            ia = [clip_indices(n, s, dc.raw_clip_len, dc.aux_stride) for s in starts] if self.with_aux else []
            return np.concatenate(ip + ia)

        frames, n, _ = read_sampled(_fetch(path), choose, short_side=dc.test_short_side,
                                    timeout_s=dc.decode_timeout_s)
        out, pos = [], 0
        for t, count in ((t_p, dc.eval_clips), (t_a, dc.eval_clips if self.with_aux else 0)):
            views = []
            for _ in range(count):
                views.append(augment.eval_views(frames[pos: pos + t], dc.crop_size, dc.eval_crops))
                pos += t
            out.append(torch.cat(views).numpy() if views else None)  # (clips*crops, C, T, S, S)
        return out[0], out[1], n < dc.raw_clip_len

    def _views(self, kind: str, path: str, label: int,
               rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], int, int]:
        """(views, code, label) of one video, or raises BadVideo. kind: labeled | unlabeled | val. The label
        comes back remapped (``data.flip_label_map``) when a labeled clip was flipped."""
        dc, rng = self.dc, rng or self.rng
        if not 0 <= label < self.k:
            raise BadVideo("bad_label")
        if kind == "val":
            vp, va, short = self._decode_val(path)
            views = {"v_p": vp} if va is None else {"v_p": vp, "v_a": va}
            return views, LOOPED if short else 0, label
        size = dc.train_short_side[1] if kind == "labeled" else dc.crop_size  # weak/strong need no resize
        fp, fa, short = self._decode_train(path, size, rng)
        clips = {"p": fp, "a": fa} if fa is not None else {"p": fp}
        if kind == "labeled":
            flipped = bool(dc.flip and rng.random() < 0.5)  # one decision for both networks' clips
            views = {f"l_{n}": augment.standard(c, dc.crop_size, tuple(dc.train_short_side), rng, flipped)
                     for n, c in clips.items()}
            label = self.flip_map[label] if flipped else label
        else:
            views = {}
            for n, c in clips.items():
                views[f"u_weak_{n}"] = augment.weak(c, dc.crop_size, dc.weak_flip, rng)
                views[f"u_strong_{n}"] = augment.strong(c, dc.crop_size, dc.weak_flip, rng, dc.randaug_n,
                                                        dc.randaug_m, dc.cutout, dc.cutout_uniform)
        return {k: v.numpy() for k, v in views.items()}, LOOPED if short else 0, label

    def _shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        s, tp, ta = self.dc.crop_size, self.t_p, self.t_a
        v = self.dc.eval_clips * self.dc.eval_crops
        keys = {"labeled": {"l_p": (3, tp, s, s), "l_a": (3, ta, s, s)},
                "unlabeled": {"u_weak_p": (3, tp, s, s), "u_strong_p": (3, tp, s, s),
                              "u_weak_a": (3, ta, s, s), "u_strong_a": (3, ta, s, s)},
                "val": {"v_p": (v, 3, tp, s, s), "v_a": (v, 3, ta, s, s)}}[kind]
        return {k: shp for k, shp in keys.items() if self.with_aux or not k.endswith("_a")}

    def safe_views(self, kind: str, path: str, label: int,
                   rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], bool, int, int]:
        """(views, valid, err code, label): a bad video becomes zero clips + an error code, never an exception."""
        code = PAD
        if path:
            try:
                views, code, label = self._views(kind, path, label, rng)
                if code == LOOPED:
                    self._warn_once(path, code)
                return views, True, code, label
            except BadVideo as e:
                code = _code(e)
            except Exception as e:  # a decoder bug or odd file must not kill the epoch either
                log.debug("decode failed for %s: %r", path, e)
                code = 3
            self._warn_once(path, code)
        return {k: np.zeros(shp, np.uint8) for k, shp in self._shapes(kind).items()}, False, code, label

    def _row_rngs(self, batch: dict[str, np.ndarray], n: int):
        """One generator per row from (seed, key, video slot) when rows carry a ``key`` (the sample's identity:
        epoch and position), so a clip does not depend on which actor decodes it or in what order; else the
        actor's own stream."""
        if "key" not in batch:
            return [lambda j: self.rng] * n
        return [(lambda j, key=int(key): np.random.default_rng([self.seed, key, j])) for key in batch["key"]]

    def _warn_once(self, path: str, code: int) -> None:
        if path not in self.warned:
            self.warned.add(path)
            log.warning("%s video %s: %s", "looping short" if code == LOOPED else "skipping", path, ERR_CODES[code])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mode == "val":  # rows: path, label, index ("" = padding row)
            out = self.decode_val([(str(p), int(y)) for p, y in zip(batch["path"], batch["label"])])
            out["index"] = np.asarray(batch["index"], np.int64)
            return out
        rows = np.asarray(batch["data"], np.int64).reshape(len(batch["data"]), -1)  # (B, 1 + ratio)
        cols: dict[str, list] = {}
        meta: dict[str, list] = {k: [] for k in ("y_l", "l_valid", "l_err", "l_index")}
        if self.unlabeled:
            meta.update({k: [] for k in ("y_u", "u_valid", "u_err", "u_index")})
        for row, rng_of in zip(rows, self._row_rngs(batch, len(rows))):
            path, label = self.labeled[row[0]]
            views, ok, code, label = self.safe_views("labeled", path, label, rng_of(0))
            for k, v in views.items():
                cols.setdefault(k, []).append(v)
            meta["y_l"].append(label if ok else 0), meta["l_valid"].append(ok)
            meta["l_err"].append(code), meta["l_index"].append(row[0])
            if not self.unlabeled:
                continue
            per: dict[str, list] = {}
            for j, ui in enumerate(row[1: 1 + self.ratio]):
                path, label = self.unlabeled[ui]
                views, ok, code, _ = self.safe_views("unlabeled", path, label if 0 <= label < self.k else 0,
                                                     rng_of(1 + j))
                for k, v in views.items():
                    per.setdefault(k, []).append(v)
                meta["y_u"].append(label), meta["u_valid"].append(ok)
                meta["u_err"].append(code), meta["u_index"].append(ui)
            for k, v in per.items():
                cols.setdefault(k, []).append(np.stack(v))  # (ratio, C, T, S, S)
        out = {k: np.stack(v) for k, v in cols.items()}
        n = len(rows)
        for k, v in meta.items():
            arr = np.asarray(v, bool if k.endswith("valid") else np.int64)
            out[k] = arr.reshape(n, self.ratio) if k.startswith(("u_", "y_u")) else arr
        return out

    def decode_val(self, items: list[tuple[str, int]]) -> dict[str, np.ndarray]:
        """Evaluation views of a few videos (in-process; used by training-time eval and ``cmpl-ray eval``)."""
        cols: dict[str, list] = {}
        ys, valid, errs = [], [], []
        for path, label in items:
            views, ok, code, _ = self.safe_views("val", path, label)
            for k, v in views.items():
                cols.setdefault(k, []).append(v)
            ys.append(label if ok else 0), valid.append(ok), errs.append(code)
        out = {k: np.stack(v) for k, v in cols.items()}
        out.update(y=np.asarray(ys, np.int64), valid=np.asarray(valid, bool), err=np.asarray(errs, np.int64))
        return out


def quiet_data() -> None:
    """No per-operator progress bars: they flood job logs; training prints its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False


def _pairs(items: list[VideoItem], root: str) -> list[tuple[str, int]]:
    return [(resolve_path(root, it.path), it.label) for it in items]


def build_train_dataset(cfg: Config, labeled: list[VideoItem], unlabeled: list[VideoItem], num_classes: int,
                        world: int, steps: int, flip_map: list[int] | None = None):
    """One epoch of rows (steps x B_l x world), each = 1 labeled + ``ratio`` unlabeled videos, iterated once
    per epoch. Only small index blocks are materialised; their order is re-randomised every epoch (seeded,
    no all-to-all shuffle tasks) and decoding happens lazily in one actor pool, so memory stays bounded and
    a single executor owns Ray Data's CPU budget (two concurrent datasets starve each other on a laptop).
    """
    import ray.data

    quiet_data()
    semi = cfg.algo.name != "supervised"
    ratio = cfg.algo.unlabeled_ratio if semi else 0
    per_epoch = steps * cfg.train.batch_labeled * world
    rows = epoch_rows(len(labeled), len(unlabeled) if semi else 0, per_epoch, ratio, cfg.train.seed)
    chunk = max(cfg.data.decode_batch, -(-per_epoch // 4000))  # bounded block count on big datasets
    ds = ray.data.from_numpy([rows[i: i + chunk] for i in range(0, per_epoch, chunk)])  # column "data"
    try:
        from ray.data._internal.random_config import RandomSeedConfig

        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=cfg.train.seed, reseed_after_execution=True))
    except (ImportError, TypeError):  # older Ray: unseeded, still a new order per epoch
        ds = ds.randomize_block_order()
    return ds.map_batches(
        ClipDecoder,
        fn_constructor_kwargs={"mode": "train", "data_cfg": dataclasses.asdict(cfg.data), "num_classes": num_classes,
                               "with_aux": cfg.uses_aux, "seed": cfg.train.seed,
                               "labeled": _pairs(labeled, cfg.data.root),
                               "unlabeled": _pairs(unlabeled, cfg.data.root) if semi else None, "ratio": ratio,
                               "flip_map": flip_map},
        batch_size=cfg.data.decode_batch,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_actors),
        num_cpus=cfg.data.cpus_per_decoder,
        batch_format="numpy",
    )


def build_val_dataset(cfg: Config, items: list[VideoItem], num_classes: int, world: int, with_aux: bool):
    """Validation videos decoded by Ray Data, padded with empty rows (err = padding) to a multiple of
    ``world`` so an equal ``streaming_split`` drops none: evaluation over all ranks is exact. It only runs
    between training epochs, when the training stream's actors are gone, so the two never compete."""
    import ray.data

    quiet_data()
    rows = [{"path": p, "label": y, "index": i} for i, (p, y) in enumerate(_pairs(items, cfg.data.root))]
    rows += [{"path": "", "label": 0, "index": -1}] * ((-len(rows)) % world)
    return ray.data.from_items(rows).map_batches(
        ClipDecoder,
        fn_constructor_kwargs={"mode": "val", "data_cfg": dataclasses.asdict(cfg.data), "num_classes": num_classes,
                               "with_aux": with_aux, "seed": cfg.train.seed},
        batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_actors),
        num_cpus=cfg.data.cpus_per_decoder,
        batch_format="numpy",
    )


def val_decoder(cfg: Config, num_classes: int, with_aux: bool) -> ClipDecoder:
    return ClipDecoder("val", dataclasses.asdict(cfg.data), num_classes, with_aux, seed=cfg.train.seed)


def iter_val_batches(cfg: Config, items: list[VideoItem], num_classes: int, with_aux: bool, rank: int = 0,
                     world: int = 1, batch_size: int = 2, threads: int = 2):
    """Validation videos as torch batches decoded in-process by a small thread pool (decord and torch release
    the GIL), this rank's share items[rank::world]: for ``cmpl-ray eval`` / ``predict`` without Ray."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    dec = val_decoder(cfg, num_classes, with_aux)
    mine = _pairs(items, cfg.data.root)[rank::world]
    chunks = [mine[i: i + batch_size] for i in range(0, len(mine), batch_size)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for out in pool.map(dec.decode_val, chunks):
            yield {k: torch.from_numpy(v) for k, v in out.items()}


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
