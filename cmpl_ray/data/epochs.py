"""What each epoch samples, as a function of (``train.seed``, epoch, position) only.

Why: a run must be reproducible from its seed and resumable at an epoch boundary, and with a Ray Data actor
pool neither the actor that decodes a row nor the order in which batches complete is reproducible. So
nothing random may depend on them:

* :func:`epoch_rows` draws the epoch's labeled/unlabeled groupings from ``[seed, epoch]``: fresh every
  epoch (no two epochs share their batches, hence their BatchNorm statistics), yet fixed for a seed;
* every row has a key ``epoch * KEY_STRIDE + position``, and :func:`row_rng` gives video slot ``j`` of the row
  its own generator from ``[seed, key, j]`` (clip start, t_s offset, crop, flip, RandAugment, Cutout), the
  way PyTorch's ``DataLoader`` seeds each worker from a base seed and Grain seeds each record from its index;
* the Ray Train path learns the epoch from an :class:`EpochClock` actor that rank 0 sets before each epoch
  (a Ray dataset is built once per run and re-executed per epoch, and after a worker restart its execution
  count starts again at 0, so it cannot say which epoch it is); a resumed run sets the clock to the epoch it
  resumes at and sees exactly the rows and clips an uninterrupted run would.

The weights' randomness (initialisation, dropout) comes from ``torch.manual_seed(train.seed)`` on every
worker and is checkpointed (:mod:`cmpl_ray.train.checkpoint`). Those two uses of ``train.seed`` are the only
ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..placement import start_on_driver_node

KEY_STRIDE = 1 << 32
"""key = epoch * KEY_STRIDE + position in the epoch: unique per sample of a run."""


def epoch_rows(n_labeled: int, n_unlabeled: int, per_epoch: int, ratio: int, seed: int | Sequence[int]) -> np.ndarray:
    """(per_epoch, 1 + ratio) list indices: column 0 a labeled video, the rest ``ratio`` unlabeled ones.

    Each list is laid out as concatenated seeded permutations, so within an epoch every unlabeled video
    appears once (truncated to whole steps) and the small labeled list cycles evenly. Pass ``[seed, epoch]``
    so every epoch groups the videos afresh.
    """
    rng = np.random.default_rng(seed)

    def cycled(n: int, k: int) -> np.ndarray:
        if n == 0 or k == 0:
            return np.zeros(k, np.int64)
        return np.concatenate([rng.permutation(n) for _ in range(-(-k // n))])[:k]

    lab = cycled(n_labeled, per_epoch)[:, None]
    unl = cycled(n_unlabeled, per_epoch * ratio).reshape(per_epoch, ratio)
    return np.concatenate([lab, unl], axis=1).astype(np.int64)


def row_keys(epoch: int, positions: np.ndarray) -> np.ndarray:
    """Keys of the rows at ``positions`` of ``epoch``."""
    return int(epoch) * KEY_STRIDE + np.asarray(positions, np.int64)


def row_rng(seed: int, key: int, slot: int) -> np.random.Generator:
    """The generator of video ``slot`` (0 = labeled, 1.. = unlabeled) of the row with ``key``."""
    return np.random.default_rng([int(seed), int(key), int(slot)])


class EpochTable:
    """The epoch's rows, drawn once per epoch and cached (a decode actor serves many batches of one epoch)."""

    def __init__(self, n_labeled: int, n_unlabeled: int, per_epoch: int, ratio: int, seed: int):
        self.args = (n_labeled, n_unlabeled, per_epoch, ratio)
        self.seed = seed
        self.epoch, self.rows = -1, None

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self.epoch:
            self.epoch, self.rows = epoch, epoch_rows(*self.args, [self.seed, epoch])
        return self.rows


class EpochClock:
    """Ray actor body: the epoch the training dataset's next execution draws (0 until set); it also collects
    which nodes decoded and trained (every decode actor and Train worker of the run holds it), for the run's
    record."""

    def __init__(self) -> None:
        self.epoch = 0
        self.nodes: dict[str, list[str]] = {"train": [], "decode": []}

    def placed(self, role: str, node: str) -> None:
        if node not in self.nodes.setdefault(role, []):
            self.nodes[role].append(node)

    def placements(self) -> dict[str, list[str]]:
        return self.nodes

    def set(self, epoch: int) -> int:
        self.epoch = int(epoch)
        return self.epoch

    def get(self) -> int:
        return self.epoch


def start_clock():
    """A 0-CPU :class:`EpochClock` actor on the caller's node, owned by it (the driver; it ends with it)."""
    return start_on_driver_node(EpochClock)


class RowLedger:
    """Which rows of epochs ``[start_epoch, epochs)`` one rank trained, as a bit per row, so that the ranks'
    ledgers can be checked at the end of a run: each row trained by exactly one rank, once (``split_check``).
    A byte per row here and a bit when gathered: a 200-epoch run of 47k rows per epoch is 9.4 MB per rank, and
    1.2 MB per rank on the wire."""

    def __init__(self, start_epoch: int, epochs: int, per_epoch: int) -> None:
        self.start, self.per_epoch = int(start_epoch), int(per_epoch)
        self.seen = np.zeros((max(0, int(epochs) - self.start), self.per_epoch), bool)
        self.twice = 0  # rows this rank trained more than once
        self.outside = 0  # keys of no epoch of this session (a bug upstream if ever > 0)

    def add(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, np.int64).ravel()
        e, i = keys // KEY_STRIDE - self.start, keys % KEY_STRIDE
        ok = (e >= 0) & (e < len(self.seen)) & (i < self.per_epoch)
        self.outside += int((~ok).sum())
        flat = e[ok] * self.per_epoch + i[ok]
        uniq = np.unique(flat)
        self.twice += int(flat.size - uniq.size) + int(self.seen.ravel()[uniq].sum())
        self.seen.ravel()[uniq] = True

    def packed(self) -> tuple[np.ndarray, tuple[int, int], int, int]:
        return np.packbits(self.seen, axis=None), self.seen.shape, self.twice, self.outside


def split_check(packed_ledgers: list[tuple[np.ndarray, tuple[int, int], int, int]]) -> dict[str, int]:
    """The ranks' ledgers combined: ``rows`` of the session's epochs, ``trained`` (summed over ranks), ``twice``
    (trained more than once, by one rank or by two) and ``missing`` (trained by no rank). A correct split of
    the stream gives twice == missing == 0 and trained == rows."""
    counts, within, outside = None, 0, 0
    for bits, shape, rank_twice, rank_outside in packed_ledgers:
        seen = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(np.int64)
        counts = seen if counts is None else counts + seen
        within, outside = within + rank_twice, outside + rank_outside
    if counts is None:
        return {"rows": 0, "trained": 0, "twice": 0, "missing": 0, "outside": 0}
    across = int(np.clip(counts - 1, 0, None).sum())  # rows more than one rank trained, beyond the first
    return {"rows": int(counts.size), "trained": int(counts.sum()) + within, "twice": within + across,
            "missing": int((counts == 0).sum()), "outside": outside}  # fmt: skip
