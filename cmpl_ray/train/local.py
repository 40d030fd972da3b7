"""Ray-free runner: the trainer's decoder, loop and evaluation on one process, fed by a torch ``DataLoader``.

Why: the same ``ClipDecoder``, ``train_one_epoch`` and ``evaluate`` as a Ray Train run, without a cluster,
for recipe studies (``studies/recipe_study.py``), the GPU study on machines without Ray
(``studies/gpu_study.sh``) and tests. Results are NOT logged to MLflow and no checkpoints are written; use
``cmpl-ray train`` for real runs.

Sampling is a function of (``train.seed``, epoch, position): every epoch draws fresh labeled/unlabeled
groupings (``epoch_rows`` seeded by (seed, epoch)), and each sample's clip positions and augmentations come
from its own generator, so two runs with the same config see the same clips whatever the number of loader
processes.

On a GPU (``device="cuda"``, or ``"auto"`` when one is visible) it trains as the Ray Train worker does:
``train.amp`` autocast (a ``GradScaler`` for fp16), ``train.channels_last`` weights, cuDNN autotuning (clip
shapes are fixed), pinned loader memory. Nothing here imports Ray or MLflow, so it runs where neither is
installed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.epochs import epoch_rows, row_keys
from ..data.pipeline import (
    ClipDecoder,
    _pairs,
    class_names,
    iter_val_batches,
    read_split_lists,
    resolve_data,
    resolve_flip_map,
    steps_per_epoch,
)
from .loop import per_class_accuracy
from .runner import RunCounters, build_nets, run_epoch


class StepBatches(torch.utils.data.Dataset):
    """Item i = the decoded batch of step i: ``ClipDecoder`` over rows[i*B_l:(i+1)*B_l] with their keys."""

    def __init__(self, decoder: ClipDecoder, rows: np.ndarray, keys: np.ndarray, b_l: int):
        self.decoder, self.rows, self.keys, self.b_l = decoder, rows, keys, b_l

    def __len__(self) -> int:
        return len(self.rows) // self.b_l

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sl = slice(i * self.b_l, (i + 1) * self.b_l)
        out = self.decoder({"data": self.rows[sl], "key": self.keys[sl]})
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        return {k: (v.flatten(0, 1) if k.startswith(("u_", "y_u")) else v) for k, v in out.items()}


def loader_worker_init(_: int) -> None:
    torch.set_num_threads(1)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the first GPU when torch sees one, else the CPU; any other name is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_local(
    cfg: Config,
    *,
    loader_workers: int = 1,
    device: str = "cpu",
    threads: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train ``cfg`` and evaluate every ``train.eval_every`` epochs; returns the final metrics with a per-epoch
    ``history`` and ``per_class`` top-1 (primary, and auxiliary for CMPL). ``device``: see :func:`resolve_device`."""
    labeled, unlabeled, val = read_split_lists(cfg)
    resolve_data(cfg, labeled)
    names = class_names(cfg)
    k = cfg.model.num_classes or len(names)
    semi = cfg.algo.name != "supervised"
    ratio = cfg.algo.unlabeled_ratio if semi else 0
    steps = steps_per_epoch(cfg, len(labeled), len(unlabeled), 1)
    b_l = cfg.train.batch_labeled
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: autotuned kernels pay off after a few steps
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    nets = build_nets(cfg, k, dev)
    dec = ClipDecoder(
        "train", dataclasses.asdict(cfg.data), k, cfg.uses_aux, cfg.train.seed, _pairs(labeled, cfg.data.root),
        _pairs(unlabeled, cfg.data.root) if semi else None, ratio,
        flip_map=resolve_flip_map(cfg.data.flip_label_map, names), one_thread=False,
    )  # fmt: skip
    counters, out, t_run = RunCounters(), None, time.perf_counter()
    for epoch in range(cfg.train.epochs):
        rows = epoch_rows(len(labeled), len(unlabeled) if semi else 0, steps * b_l, ratio, [cfg.train.seed, epoch])
        keys = row_keys(epoch, np.arange(len(rows)))  # the Ray Train path keys its rows the same way
        loader = torch.utils.data.DataLoader(
            StepBatches(dec, rows, keys, b_l), batch_size=None, num_workers=loader_workers, pin_memory=on_gpu,
            prefetch_factor=4 if loader_workers else None,
            worker_init_fn=loader_worker_init if loader_workers else None,
        )  # fmt: skip
        out = run_epoch(
            nets, loader, cfg, counters, epoch=epoch, steps=steps, global_step=epoch * steps,
            total_steps=steps * cfg.train.epochs, device=dev, num_classes=k,
            val_batches=lambda: iter_val_batches(cfg, val, k, nets.aux is not None, threads=2),
        )  # fmt: skip
        row = counters.history[-1]
        for net, per_class in (out.pseudo or {}).items():  # this round's pseudo-labels per class (lists)
            row[f"pl_per_class_{net}"] = per_class
        if log:
            log(_epoch_line(row, cfg.train.epochs, time.perf_counter() - t_run))
    final = {k: v for k, v in counters.history[-1].items() if not k.startswith("pl_per_class_")}
    final.update(
        history=counters.history, seconds=time.perf_counter() - t_run, steps=steps * cfg.train.epochs,
        class_names=names, device=str(dev),
    )  # fmt: skip
    if out is not None and out.counts is not None:
        final["per_class"] = per_class_accuracy(out.counts)
        if nets.aux is not None:
            final["aux_per_class"] = per_class_accuracy(out.counts, "aux_")
    return final


def _epoch_line(row: dict[str, Any], epochs: int, wall: float) -> str:
    ev = f" val top1 {row['val_top1']:.1f}" if "val_top1" in row else ""
    ev += f" aux {row['aux_val_top1']:.1f}" if "aux_val_top1" in row else ""
    return (
        f"[local] epoch {int(row['epoch'])}/{epochs} loss {row.get('train_loss', float('nan')):.3f}"
        f"{ev} ({row['epoch_seconds']:.0f} s, {wall:.0f} s total)"
    )
