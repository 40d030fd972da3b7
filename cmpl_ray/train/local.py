"""Ray-free runner: the trainer's decoder, loop and evaluation on one process, fed by a torch ``DataLoader``.

Why: the same ``ClipDecoder``, ``train_one_epoch`` and ``evaluate`` as a Ray Train run, without a cluster,
for recipe studies (``scripts/recipe_study.py``), the GPU study on machines without Ray
(``scripts/gpu_study.sh``) and tests. Results are NOT logged to MLflow and no checkpoints are written; use
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
from .build import build_networks, make_optimizer
from .ema import WeightEma
from .loop import evaluate, per_class_accuracy, pseudo_label_per_class, summarize_eval, train_one_epoch


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


def _worker_init(_: int) -> None:
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
    primary, aux = build_networks(cfg, k)
    primary, aux = primary.to(dev), (aux.to(dev) if aux is not None else None)
    if on_gpu and cfg.train.channels_last:  # as the Ray Train worker does
        primary = primary.to(memory_format=torch.channels_last_3d)
        aux = aux.to(memory_format=torch.channels_last_3d) if aux is not None else None
    scaler = torch.amp.GradScaler("cuda") if on_gpu and cfg.train.amp == "fp16" else None
    optimizer = make_optimizer(cfg, primary, aux)
    ema = WeightEma([primary, aux], cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    dec = ClipDecoder(
        "train",
        dataclasses.asdict(cfg.data),
        k,
        cfg.uses_aux,
        cfg.train.seed,
        _pairs(labeled, cfg.data.root),
        _pairs(unlabeled, cfg.data.root) if semi else None,
        ratio,
        flip_map=resolve_flip_map(cfg.data.flip_label_map, names),
        one_thread=False,
    )
    total = steps * cfg.train.epochs
    history: list[dict[str, float]] = []
    counts = None
    t_run = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        rows = epoch_rows(len(labeled), len(unlabeled) if semi else 0, steps * b_l, ratio, [cfg.train.seed, epoch])
        keys = row_keys(epoch, np.arange(len(rows)))  # the Ray Train path keys its rows the same way
        loader = torch.utils.data.DataLoader(
            StepBatches(dec, rows, keys, b_l),
            batch_size=None,
            num_workers=loader_workers,
            prefetch_factor=4 if loader_workers else None,
            worker_init_fn=_worker_init if loader_workers else None,
            pin_memory=on_gpu,
        )
        res = train_one_epoch(
            primary,
            aux,
            optimizer,
            loader,
            cfg,
            epoch=epoch,
            steps=steps,
            global_step=epoch * steps,
            total_steps=total,
            device=dev,
            scaler=scaler,
            ema=ema,
        )
        row = {f"train_{n}": v for n, v in res.means.items()}
        row.update(epoch=epoch + 1, epoch_seconds=res.seconds, skipped_samples=len(res.bad_samples))
        for net, c in res.pl_counts.items():  # this round's pseudo-labels per class (lists, not scalars)
            row[f"pl_per_class_{net}"] = pseudo_label_per_class(c)
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            nets = (ema.nets[0], ema.nets[1]) if ema is not None else (primary, aux)
            counts = evaluate(nets[0], nets[1], iter_val_batches(cfg, val, k, aux is not None, threads=2), k, dev)
            row.update(summarize_eval(counts, aux is not None))
        history.append(row)
        if log:
            ev = f" val top1 {row['val_top1']:.1f}" if "val_top1" in row else ""
            ev += f" aux {row['aux_val_top1']:.1f}" if "aux_val_top1" in row else ""
            log(
                f"[local] epoch {epoch + 1}/{cfg.train.epochs} loss {row.get('train_loss', float('nan')):.3f}"
                f"{ev} ({res.seconds:.0f} s, {time.perf_counter() - t_run:.0f} s total)"
            )
    final = {k: v for k, v in history[-1].items() if not k.startswith("pl_per_class_")}
    final.update(history=history, seconds=time.perf_counter() - t_run, steps=total, class_names=names, device=str(dev))
    if counts is not None:
        final["per_class"] = per_class_accuracy(counts)
        if aux is not None:
            final["aux_per_class"] = per_class_accuracy(counts, "aux_")
    return final
