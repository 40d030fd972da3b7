"""Decoding and augmenting videos into training and evaluation clips: :class:`ClipDecoder`.

It runs inside Ray Data's ``map_batches`` actors (the trainer), in-process (``cmpl-ray eval`` / ``predict``)
and in the Ray-free runner (:mod:`cmpl_ray.train.local`). A keyed training row's clips come from its own
generators (:mod:`cmpl_ray.data.epochs`), never from the process that decodes it.

A bad video never kills an epoch: its row comes out with ``valid=False``, zero pixels and an error code, so
batch shapes and the number of steps per rank stay fixed (``streaming_split`` needs equal consumption) and
the trainer counts and names it. Error codes: :data:`ERR_CODES`. Each item also says which library read it
(``l_dec``, ``u_dec``, ``dec``: :data:`~cmpl_ray.data.video_reader.DECODER_NAMES`, -1 = not read), since files decord
cannot open (AV1) are read with PyAV.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import DataConfig
from ..placement import node_label
from . import augment
from .epochs import EpochTable, row_keys, row_rng
from .sampling import clip_indices, eval_clip_starts, sample_train_indices
from .video_reader import DECORD, NOT_READ, BadVideo, read_sampled

log = logging.getLogger(__name__)

ERR_CODES = {
    0: "ok",
    1: "missing",
    2: "empty",
    3: "undecodable",
    4: "timeout",
    5: "bad_label",
    98: "padding",
    99: "looped_short",
}
_REASON_TO_CODE = {"missing": 1, "empty": 2, "undecodable": 3, "timeout": 4, "bad_label": 5}
OK, PAD, LOOPED = 0, 98, 99  # a good row; a row that evens out the ranks' shares; a short video looped to length


def fetch_video(path: str) -> str | bytes:
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
        raise BadVideo(
            "missing" if "not found" in str(e).lower() or "no such" in str(e).lower() else "undecodable"
        ) from e


def _code(e: BadVideo) -> int:
    return _REASON_TO_CODE.get(getattr(e, "reason", "undecodable"), 3)


def _decoder(res: tuple) -> int:
    """Which library read a video, from :func:`~cmpl_ray.data.video_reader.read_sampled`'s result. A stand-in reader
    returning a plain tuple (the GPU study's in-memory videos) counts as decord, the fast path it replaces."""
    return int(getattr(res, "decoder", DECORD))


class ClipDecoder:
    """Decodes and augments videos into the clips a training step or an evaluation needs.

    mode "train": each input row is one labeled video plus ``ratio`` unlabeled ones (list indices, see
    :func:`~cmpl_ray.data.epochs.epoch_rows`), so a batch of
    B_l rows carries B_l labeled and B_u = ratio x B_l unlabeled clips and one dataset feeds the whole step.
    A row is either ``pos`` (its position in the stream: the decoder draws the rows itself, position p being
    row ``p % per_epoch`` of epoch ``clock + p // per_epoch``, where the ``clock`` says at which epoch the
    stream starts) or ``data`` (the indices) with an optional ``key``.
    Every keyed video's clip comes from its own generator (:func:`~cmpl_ray.data.epochs.row_rng`), so it
    does not depend on the actor or the batch that decodes it.
    Outputs ``l_p``/``l_a`` (standard views) and ``u_weak_p``, ``u_strong_p``, ``u_weak_a``, ``u_strong_a``
    of shape (ratio, C, T, S, S), and ``key`` when rows have one. mode "val": ``v_p``/``v_a`` (views, C, T,
    S, S) for clips x crops.
    """

    def __init__(
        self,
        mode: str,
        data_cfg: dict[str, Any],
        num_classes: int,
        with_aux: bool,
        seed: int = 0,
        labeled: list[tuple[str, int]] | None = None,
        unlabeled: list[tuple[str, int]] | None = None,
        ratio: int = 0,
        flip_map: list[int] | None = None,
        per_epoch: int = 0,
        clock: Any = None,
        one_thread: bool = True,
    ):
        import torch

        if one_thread:  # one decode actor = one core; parallelism comes from the pool. In-process users (the
            torch.set_num_threads(1)  # Ray-free runner, a worker's own evaluation) keep their threads: False
        self.mode, self.dc, self.k, self.with_aux = mode, DataConfig(**data_cfg), num_classes, with_aux
        self.rng = np.random.default_rng(seed)  # unkeyed rows only (tests, benchmarks): never the training path
        self.seed, self.labeled, self.unlabeled = seed, labeled or [], unlabeled or []
        self.ratio, self.clock = ratio, clock
        self.table = EpochTable(len(self.labeled), len(self.unlabeled), per_epoch, ratio if self.unlabeled else 0, seed)
        self.flip_map = list(flip_map) if flip_map else list(range(num_classes))  # label of a flipped clip
        self.t_p = self.dc.raw_clip_len // self.dc.primary_stride
        self.t_a = self.dc.raw_clip_len // self.dc.aux_stride
        self.warned: set[str] = set()
        if clock is not None:  # the run records which nodes decoded
            clock.placed.remote("decode", node_label())

    # -- one video --------------------------------------------------------------------------------------
    def _decode_train(
        self, path: str, size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
        dc = self.dc
        t_p = dc.raw_clip_len // dc.primary_stride

        def choose(n: int, fps: float) -> np.ndarray:
            idx_p, idx_a = sample_train_indices(
                n, fps, dc.raw_clip_len, dc.primary_stride, dc.aux_stride, dc.time_offset, rng
            )
            return np.concatenate([idx_p, idx_a]) if self.with_aux else idx_p

        res = read_sampled(fetch_video(path), choose, short_side=size, timeout_s=dc.decode_timeout_s)
        frames, n, _ = res  # (T,H,W,3)
        return frames[:t_p], (frames[t_p:] if self.with_aux else None), n < dc.raw_clip_len, _decoder(res)

    def _decode_val(self, path: str) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
        import torch

        dc = self.dc
        t_p, t_a = dc.raw_clip_len // dc.primary_stride, dc.raw_clip_len // dc.aux_stride

        def choose(n: int, fps: float) -> np.ndarray:
            starts = eval_clip_starts(n, dc.raw_clip_len, dc.eval_clips)
            ip = [clip_indices(n, s, dc.raw_clip_len, dc.primary_stride) for s in starts]
            ia = [clip_indices(n, s, dc.raw_clip_len, dc.aux_stride) for s in starts] if self.with_aux else []
            return np.concatenate(ip + ia)

        res = read_sampled(fetch_video(path), choose, short_side=dc.test_short_side, timeout_s=dc.decode_timeout_s)
        frames, n, _ = res
        out, pos = [], 0
        for t, count in ((t_p, dc.eval_clips), (t_a, dc.eval_clips if self.with_aux else 0)):
            views = []
            for _ in range(count):
                views.append(augment.eval_views(frames[pos : pos + t], dc.crop_size, dc.eval_crops))
                pos += t
            out.append(torch.cat(views).numpy() if views else None)  # (clips*crops, C, T, S, S)
        return out[0], out[1], n < dc.raw_clip_len, _decoder(res)

    def _views(
        self, kind: str, path: str, label: int, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, np.ndarray], int, int]:
        """(views, code, label): :meth:`_decode_views` without the decoder."""
        return self._decode_views(kind, path, label, rng)[:3]

    def _decode_views(
        self, kind: str, path: str, label: int, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, np.ndarray], int, int, int]:
        """(views, code, label, decoder) of one video, or raises BadVideo. kind: labeled | unlabeled | val. The
        label comes back remapped (``data.flip_label_map``) when a labeled clip was flipped; decoder: which
        library read the file (:data:`~cmpl_ray.data.video_reader.DECODER_NAMES`)."""
        dc, rng = self.dc, rng or self.rng
        if not 0 <= label < self.k:
            raise BadVideo("bad_label")
        if kind == "val":
            vp, va, short, dec = self._decode_val(path)
            views = {"v_p": vp} if va is None else {"v_p": vp, "v_a": va}
            return views, LOOPED if short else 0, label, dec
        size = dc.train_short_side[1] if kind == "labeled" else dc.crop_size  # weak/strong need no resize
        fp, fa, short, dec = self._decode_train(path, size, rng)
        clips = {"p": fp, "a": fa} if fa is not None else {"p": fp}
        if kind == "labeled":
            flipped = bool(dc.flip and rng.random() < 0.5)  # one decision for both networks' clips
            views = {
                f"l_{n}": augment.standard(c, dc.crop_size, tuple(dc.train_short_side), rng, flipped)
                for n, c in clips.items()
            }
            label = self.flip_map[label] if flipped else label
        else:
            views = {}
            for n, c in clips.items():
                views[f"u_weak_{n}"] = augment.weak(c, dc.crop_size, dc.weak_flip, rng)
                views[f"u_strong_{n}"] = augment.strong(
                    c, dc.crop_size, dc.weak_flip, rng, dc.randaug_n, dc.randaug_m, dc.cutout, dc.cutout_uniform
                )
        return {k: v.numpy() for k, v in views.items()}, LOOPED if short else 0, label, dec

    def _shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        s, tp, ta = self.dc.crop_size, self.t_p, self.t_a
        v = self.dc.eval_clips * self.dc.eval_crops
        keys = {
            "labeled": {"l_p": (3, tp, s, s), "l_a": (3, ta, s, s)},
            "unlabeled": {
                "u_weak_p": (3, tp, s, s),
                "u_strong_p": (3, tp, s, s),
                "u_weak_a": (3, ta, s, s),
                "u_strong_a": (3, ta, s, s),
            },
            "val": {"v_p": (v, 3, tp, s, s), "v_a": (v, 3, ta, s, s)},
        }[kind]
        return {k: shp for k, shp in keys.items() if self.with_aux or not k.endswith("_a")}

    def safe_views(
        self, kind: str, path: str, label: int, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, np.ndarray], bool, int, int]:
        """(views, valid, err code, label): :meth:`safe_decode` without the decoder."""
        return self.safe_decode(kind, path, label, rng)[:4]

    def safe_decode(
        self, kind: str, path: str, label: int, rng: np.random.Generator | None = None
    ) -> tuple[dict[str, np.ndarray], bool, int, int, int]:
        """(views, valid, err code, label, decoder): a bad video becomes zero clips + an error code (decoder
        ``NOT_READ``), never an exception."""
        code = PAD
        if path:
            try:
                views, code, label, dec = self._decode_views(kind, path, label, rng)
                if code == LOOPED:
                    self._warn_once(path, code)
                return views, True, code, label, dec
            except BadVideo as e:
                code = _code(e)
            except Exception as e:  # a decoder bug or odd file must not kill the epoch either
                log.debug("decode failed for %s: %r", path, e)
                code = 3
            self._warn_once(path, code)
        return {k: np.zeros(shp, np.uint8) for k, shp in self._shapes(kind).items()}, False, code, label, NOT_READ

    def _row_rngs(self, keys: np.ndarray | None, n: int):
        """One generator per video slot of a row from (seed, key, slot) when rows carry a key (the sample's
        identity: epoch and position), so a clip does not depend on which actor decodes it or in what order;
        else the decoder's own stream (unkeyed calls from tests and benchmarks)."""
        if keys is None:
            return [lambda j: self.rng] * n
        return [(lambda j, key=int(key): row_rng(self.seed, key, j)) for key in keys]

    def _rows(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(list indices (B, 1 + ratio), keys or None) of a batch of ``pos`` or ``data`` rows."""
        if "pos" not in batch:
            rows = np.asarray(batch["data"], np.int64).reshape(len(batch["data"]), -1)
            return rows, (np.asarray(batch["key"], np.int64) if "key" in batch else None)
        pos = np.asarray(batch["pos"], np.int64)
        start = 0
        if self.clock is not None:
            import ray

            start = int(ray.get(self.clock.get.remote()))
        # a run-long stream holds every epoch's positions: position p is row p % per_epoch of epoch
        # start + p // per_epoch; a decode batch that straddles two epochs draws each part from its own
        per = max(1, self.table.args[2])
        epochs, within = start + pos // per, pos % per
        parts = [(int(e), within[epochs == e]) for e in np.unique(epochs)]  # ascending = the batch's order
        return (
            np.concatenate([self.table(e)[w] for e, w in parts]),
            np.concatenate([row_keys(e, w) for e, w in parts]),
        )

    def _warn_once(self, path: str, code: int) -> None:
        if path not in self.warned:
            self.warned.add(path)
            log.warning("%s video %s: %s", "looping short" if code == LOOPED else "skipping", path, ERR_CODES[code])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mode == "val":  # rows: path, label, index ("" = padding row)
            out = self.decode_val([(str(p), int(y)) for p, y in zip(batch["path"], batch["label"])])
            out["index"] = np.asarray(batch["index"], np.int64)
            return out
        rows, keys = self._rows(batch)  # (B, 1 + ratio)
        cols: dict[str, list] = {}
        meta: dict[str, list] = {k: [] for k in ("y_l", "l_valid", "l_err", "l_index", "l_dec")}
        if self.unlabeled:
            meta.update({k: [] for k in ("y_u", "u_valid", "u_err", "u_index", "u_dec")})
        for row, rng_of in zip(rows, self._row_rngs(keys, len(rows))):
            path, label = self.labeled[row[0]]
            views, ok, code, label, dec = self.safe_decode("labeled", path, label, rng_of(0))
            for k, v in views.items():
                cols.setdefault(k, []).append(v)
            meta["y_l"].append(label if ok else 0), meta["l_valid"].append(ok)
            meta["l_err"].append(code), meta["l_index"].append(row[0]), meta["l_dec"].append(dec)
            if not self.unlabeled:
                continue
            per: dict[str, list] = {}
            for j, ui in enumerate(row[1 : 1 + self.ratio]):
                path, label = self.unlabeled[ui]
                views, ok, code, _, dec = self.safe_decode(
                    "unlabeled", path, label if 0 <= label < self.k else 0, rng_of(1 + j)
                )
                for k, v in views.items():
                    per.setdefault(k, []).append(v)
                meta["y_u"].append(label), meta["u_valid"].append(ok)
                meta["u_err"].append(code), meta["u_index"].append(ui), meta["u_dec"].append(dec)
            for k, v in per.items():
                cols.setdefault(k, []).append(np.stack(v))  # (ratio, C, T, S, S)
        out = {k: np.stack(v) for k, v in cols.items()}
        n = len(rows)
        for k, v in meta.items():
            arr = np.asarray(v, bool if k.endswith("valid") else np.int64)
            out[k] = arr.reshape(n, self.ratio) if k.startswith(("u_", "y_u")) else arr
        if keys is not None:
            out["key"] = keys
        return out

    def decode_val(self, items: list[tuple[str, int]]) -> dict[str, np.ndarray]:
        """Evaluation views of a few videos (in-process; used by training-time eval and ``cmpl-ray eval``)."""
        cols: dict[str, list] = {}
        ys, valid, errs, decs = [], [], [], []
        for path, label in items:
            views, ok, code, _, dec = self.safe_decode("val", path, label)
            for k, v in views.items():
                cols.setdefault(k, []).append(v)
            ys.append(label if ok else 0), valid.append(ok), errs.append(code), decs.append(dec)
        out = {k: np.stack(v) for k, v in cols.items()}
        out.update(
            y=np.asarray(ys, np.int64),
            valid=np.asarray(valid, bool),
            err=np.asarray(errs, np.int64),
            dec=np.asarray(decs, np.int64),
        )
        return out
