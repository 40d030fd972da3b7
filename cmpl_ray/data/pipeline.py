"""Ray Data streaming: list files -> decord decode + augment in an actor pool -> Train worker shards.

The training dataset holds only row positions; what each epoch samples is drawn from (seed, epoch,
position) (:mod:`cmpl_ray.data.epochs`) and decoded lazily in ``map_batches`` actors
(:class:`~cmpl_ray.data.clip_decoder.ClipDecoder`), so the dataset is never materialised and memory stays bounded
by Ray Data's streaming backpressure. Clips stay uint8 until the training worker normalises them on its
device. Bad videos become flagged zero clips (:data:`~cmpl_ray.data.clip_decoder.ERR_CODES`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Any

import numpy as np

from ..config import Config, DataConfig
from .clip_decoder import ERR_CODES, ClipDecoder, fetch_video  # noqa: F401  (ERR_CODES: re-exported)
from .epochs import epoch_rows  # noqa: F401  (re-exported)
from .lists import VideoItem, read_classes, read_list, resolve_path


def classes_path(cfg: Config) -> str:
    """``data.classes_file``, else the first ``classes.txt`` that exists beside the labeled list or in
    ``data.root`` (the layout ``cmpl-ray synth`` and ``cmpl-ray split`` write: splits in ``<root>/splits``)."""
    if cfg.data.classes_file:
        return cfg.data.classes_file
    beside = os.path.join(os.path.dirname(cfg.data.labeled_list) or ".", "classes.txt")
    in_root = os.path.join(cfg.data.root, "classes.txt") if cfg.data.root and "://" not in cfg.data.root else ""
    return in_root if in_root and not os.path.exists(beside) and os.path.exists(in_root) else beside


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
    raise FileNotFoundError(
        f"data.classes_file: {path} not found and model.num_classes is 0; "
        "pass --set model.num_classes=N or write classes.txt beside the labeled list or in data.root"
    )


def resolve_flip_map(spec: str, names: list[str]) -> list[int] | None:
    """``data.flip_label_map`` (``a:b,c:d``, names or ids) -> the label of each class after a horizontal flip;
    None when no pair is given. Pairs swap both ways; an unknown class is refused naming the key, and so are pairs
    that are not disjoint once names and ids are resolved (``right:left,1:2``), which the config check, blind to
    the class names, cannot see."""
    from ..config.schema import flip_pairs_problem

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

    pairs = [tuple(cid(x) for x in pair.split(":")) for pair in spec.split(",")]
    problem = flip_pairs_problem([(names[a], names[b]) for a, b in pairs])
    if problem:
        raise ValueError(f"data.flip_label_map: {problem}, got {spec!r}")
    for a, b in pairs:
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
                h, w = decord.VideoReader(fetch_video(resolve_path(dc.root, it.path)), num_threads=1)[0].shape[:2]
                short = min(h, w)
                break
            except Exception as e:  # an unreadable first video must not decide the crop
                errors.append(f"{it.path}: {e}")
        if short is None:
            raise ValueError(f"data.crop_size=0 (derived) needs a readable labeled video; errors: {errors[:2]}")
        crop = max(8, min(dc.max_crop, short // 8 * 8))
    train_ss = dc.train_short_side if dc.train_short_side != [0, 0] else [crop, int(round(crop * 8 / 7))]
    cfg.data = dataclasses.replace(
        dc, crop_size=crop, train_short_side=train_ss, test_short_side=dc.test_short_side or crop
    )  # re-validated here
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
        raise ValueError(
            f"too few videos for one step: {n_unlabeled} unlabeled / {n_labeled} labeled for "
            f"{world} workers x B_u={b_u}; lower train.batch_labeled or set train.steps_per_epoch"
        )
    return n


def quiet_data() -> None:
    """No per-operator progress bars: they flood job logs; training prints its own progress."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False


def _pairs(items: list[VideoItem], root: str) -> list[tuple[str, int]]:
    return [(resolve_path(root, it.path), it.label) for it in items]


def build_train_dataset(
    cfg: Config,
    labeled: list[VideoItem],
    unlabeled: list[VideoItem],
    num_classes: int,
    world: int,
    steps: int,
    flip_map: list[int] | None = None,
    clock: Any = None,
    preserve_order: bool = True,
    epochs: int = 1,
):
    """``epochs`` epochs of rows (steps x B_l x world each), each row = 1 labeled + ``ratio`` unlabeled videos.
    The training loop iterates it ONCE for the whole run (one stream, one decode actor pool: no pipeline
    restart per epoch; the next epoch's first batches decode while the last ones train) and counts ``steps``
    batches per epoch. The dataset holds only row positions; the decoders draw each epoch's groupings
    themselves from (``train.seed``, epoch), the first epoch being the one the ``clock`` says (0 without
    one; a resumed run starts later and leaves the stream's tail unread), and every row's clip from its key
    (:mod:`~cmpl_ray.data.epochs`), so an epoch's samples depend only on the seed and the epoch. Decoding
    happens lazily in one actor pool, so memory stays bounded.

    ``preserve_order`` (Ray Data's execution option, on this dataset's context; Ray Train takes it from
    the ``DataConfig`` instead, see launch.py) makes the batch sequence, and with several ranks which rows
    each rank gets, independent of which actor finishes first.
    """
    import ray.data

    quiet_data()
    semi = cfg.algo.name != "supervised"
    ratio = cfg.algo.unlabeled_ratio if semi else 0
    per_epoch = steps * cfg.train.batch_labeled * world
    n = per_epoch * max(1, epochs)
    chunk = max(cfg.data.decode_batch, -(-n // 4000))  # bounded block count on big datasets
    import pyarrow as pa

    # in-memory blocks, so no read or rename task: a task would wait for a CPU the train worker and decoders hold
    pos = np.arange(n, dtype=np.int64)
    ds = ray.data.from_arrow([pa.table({"pos": pos[i : i + chunk]}) for i in range(0, n, chunk)])
    ds.context.execution_options.preserve_order = preserve_order
    return ds.map_batches(
        ClipDecoder,
        fn_constructor_kwargs={
            "mode": "train",
            "data_cfg": dataclasses.asdict(cfg.data),
            "num_classes": num_classes,
            "with_aux": cfg.uses_aux,
            "seed": cfg.train.seed,
            "labeled": _pairs(labeled, cfg.data.root),
            "unlabeled": _pairs(unlabeled, cfg.data.root) if semi else None,
            "ratio": ratio,
            "flip_map": flip_map,
            "per_epoch": per_epoch,
            "clock": clock,
        },
        batch_size=cfg.data.decode_batch,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_actors),
        num_cpus=cfg.data.cpus_per_decoder,
        **decode_placement(cfg),
        batch_format="numpy",
    )


def decode_placement(cfg: Config) -> dict[str, dict[str, float]]:
    """Ray options placing the decode actors: only nodes that declare ``data.decode_resource`` host them (each
    asks a small share, so CPUs, not the resource's count, bound how many fit on a node)."""
    return {"resources": {cfg.data.decode_resource: 0.01}} if cfg.data.decode_resource else {}


def build_val_dataset(cfg: Config, items: list[VideoItem], num_classes: int, world: int, with_aux: bool):
    """Validation videos decoded by Ray Data, padded with empty rows (err = padding) to a multiple of
    ``world`` so an equal ``streaming_split`` drops none: evaluation over all ranks is exact. It runs between
    training epochs while the training stream waits (its actors stay, holding a few prefetched batches), so
    the CPUs for both pools must fit beside the train workers: 2 x decode_actors x cpus_per_decoder."""
    import ray.data

    quiet_data()
    rows = [{"path": p, "label": y, "index": i} for i, (p, y) in enumerate(_pairs(items, cfg.data.root))]
    rows += [{"path": "", "label": 0, "index": -1}] * ((-len(rows)) % world)
    return ray.data.from_items(rows).map_batches(
        ClipDecoder,
        fn_constructor_kwargs={
            "mode": "val",
            "data_cfg": dataclasses.asdict(cfg.data),
            "num_classes": num_classes,
            "with_aux": with_aux,
            "seed": cfg.train.seed,
        },
        batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_actors),
        num_cpus=cfg.data.cpus_per_decoder,
        **decode_placement(cfg),
        batch_format="numpy",
    )


def val_decoder(cfg: Config, num_classes: int, with_aux: bool) -> ClipDecoder:
    """The val-mode decoder for in-process use: it leaves the caller's torch threads as they are (a training
    worker that decodes its own evaluation keeps its intra-op threads)."""
    return ClipDecoder(
        "val", dataclasses.asdict(cfg.data), num_classes, with_aux, seed=cfg.train.seed, one_thread=False
    )


VAL_IN_WORKER_MAX = 256
"""Videos per rank up to which ``data.val_decode=auto`` decodes evaluation in the training worker. A Ray Data
evaluation starts a new actor pool every time (3.2-4.0 s of a ~10 s demo-sized epoch, docs/benchmarks.md),
but on a GPU node it decodes with the node's many decode CPUs while the worker has 2-3 threads: past a few hundred
multi-view videos per rank the pool wins. The cut-off is a judgement, not measured at cluster scale."""


def val_decode_mode(cfg: Config, num_val: int, world: int) -> str:
    """``data.val_decode`` resolved: ``worker`` (each rank decodes its share in threads) or ``ray_data`` (a Ray
    Data actor pool per evaluation). ``auto`` picks ``worker`` up to :data:`VAL_IN_WORKER_MAX` videos per rank."""
    mode = cfg.data.val_decode
    if mode == "auto":
        mode = "worker" if -(-num_val // max(1, world)) <= VAL_IN_WORKER_MAX else "ray_data"
    return mode


def iter_val_batches(
    cfg: Config,
    items: list[VideoItem],
    num_classes: int,
    with_aux: bool,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 2,
    threads: int = 2,
    prefetch: int = 0,
):
    """Validation videos as torch batches decoded in-process by a small thread pool (decord and torch release
    the GIL), this rank's share items[rank::world]: ``cmpl-ray eval`` / ``predict``, the Ray-free runner and
    training-time evaluation with ``data.val_decode=worker``. At most ``prefetch`` batches (default 2 x
    threads, at most 8) are decoded ahead of the consumer, so memory stays bounded on a big list."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    dec = val_decoder(cfg, num_classes, with_aux)
    mine = _pairs(items, cfg.data.root)[rank::world]
    chunks = iter([mine[i : i + batch_size] for i in range(0, len(mine), batch_size)])
    ahead = max(1, prefetch or min(8, 2 * threads))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending = deque(pool.submit(dec.decode_val, c) for c in itertools.islice(chunks, ahead))
        while pending:
            out = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(dec.decode_val, nxt))
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
