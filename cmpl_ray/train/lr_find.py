"""Learning-rate range test (Smith 2017; fastai's ``lr_find``): a short supervised run whose learning rate
grows exponentially every step, recording the loss, to choose ``optim.lr`` for a new dataset or network.

Why: the CPU recipes' ``optim.lr`` was set on one synthetic set; a new dataset, crop or architecture may want
another. The test costs a few hundred steps (under a minute on 2 CPU cores for the tiny networks) instead
of a sweep of full runs. It trains the primary network only, on the labeled list, with the config's
optimizer (SGD, momentum, weight decay) and data pipeline (the Ray-free runner's decoder and loader), so
what it measures is what ``cmpl-ray train`` would see in its first steps.

Reading it: ``lr_min_loss`` is where the smoothed loss was lowest; the usual choice is an order of magnitude
below it (``suggested_lr``, fastai's ``minimum / 10`` rule), because the loss at the minimum is already
on its way to diverging. ``lr_steepest`` (fastest descent) is a second, often lower, estimate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..algorithm import compute_objective
from ..config import Config
from ..data.pipeline import (
    ClipDecoder,
    _pairs,
    class_names,
    epoch_rows,
    read_split_lists,
    resolve_data,
    resolve_flip_map,
)
from .build import build_networks, make_optimizer, objective_kwargs
from .local import StepBatches, loader_worker_init
from .loop import normalize


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """Geometric sequence from ``start`` to ``end`` over ``steps`` steps."""
    if not (0 < start < end) or steps < 2:
        raise ValueError(f"need 0 < start < end and steps >= 2, got start={start}, end={end}, steps={steps}")
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


def analyse(lrs: list[float], losses: list[float], beta: float = 0.9) -> dict[str, float]:
    """Bias-corrected exponential smoothing of the loss, then the lr at its minimum and at its steepest
    descent (most negative d loss / d log lr over the part before the minimum)."""
    sm, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        sm.append(avg / (1 - beta ** (i + 1)))
    i_min = int(np.argmin(sm))
    out = {
        "lr_min_loss": float(lrs[i_min]),
        "min_smoothed_loss": float(sm[i_min]),
        "suggested_lr": float(lrs[i_min]) / 10,
    }
    if i_min >= 2:
        grad = np.gradient(np.asarray(sm[: i_min + 1]), np.log(np.asarray(lrs[: i_min + 1])))
        out["lr_steepest"] = float(lrs[int(np.argmin(grad))])
    out["smoothed"] = sm  # type: ignore[assignment]
    return out


def lr_range_test(
    cfg: Config,
    *,
    start: float = 1e-4,
    end: float = 10.0,
    steps: int = 200,
    diverge: float = 4.0,
    loader_workers: int = 1,
    threads: int = 0,
    seed: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the test; returns ``lrs``, ``losses``, ``smoothed`` and :func:`analyse`'s estimates. Stops early once
    the smoothed loss exceeds ``diverge`` x its minimum (after 10 steps)."""
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, name="supervised"))  # labeled clips only
    labeled, _, _ = read_split_lists(cfg)
    resolve_data(cfg, labeled)
    names = class_names(cfg)
    k = cfg.model.num_classes or len(names)
    if threads:
        torch.set_num_threads(threads)
    seed = cfg.train.seed if seed is None else seed
    torch.manual_seed(seed)
    net, _ = build_networks(cfg, k)
    opt = make_optimizer(cfg, net, None)
    b_l = cfg.train.batch_labeled
    # one_thread=False: the decoder is built in this process, whose thread count is the caller's (``threads``);
    # loader worker processes get one thread each from loader_worker_init
    dec = ClipDecoder(
        "train",
        dataclasses.asdict(cfg.data),
        k,
        False,
        seed,
        _pairs(labeled, cfg.data.root),
        None,
        0,
        flip_map=resolve_flip_map(cfg.data.flip_label_map, names),
        one_thread=False,
    )
    rows = epoch_rows(len(labeled), 0, steps * b_l, 0, [seed, 0])
    loader = torch.utils.data.DataLoader(
        StepBatches(dec, rows, np.arange(len(rows), dtype=np.int64), b_l),
        batch_size=None,
        num_workers=loader_workers,
        worker_init_fn=loader_worker_init if loader_workers else None,
    )
    schedule = lr_schedule(start, end, steps)
    lrs: list[float] = []
    losses: list[float] = []
    net.train()
    avg, best = 0.0, math.inf
    for i, batch in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = float(schedule[i])
        x = {"l_p": normalize(batch["l_p"], torch.device("cpu")), "y_l": batch["y_l"]}
        if "l_valid" in batch:
            x["l_valid"] = batch["l_valid"]
        loss, _ = compute_objective(net, None, x, **objective_kwargs(cfg))  # cfg's algo is "supervised" here
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        lrs.append(float(schedule[i]))
        losses.append(value if math.isfinite(value) else float("inf"))
        avg = 0.9 * avg + 0.1 * value  # the same smoothing as analyse()
        cur = avg / (1 - 0.9 ** (i + 1))
        best = min(best, cur)
        if log and i % max(1, steps // 10) == 0:
            log(f"[lr-find] step {i:4d} lr {schedule[i]:.2e} loss {value:.3f} smoothed {cur:.3f}")
        if i >= 10 and (not math.isfinite(cur) or cur > diverge * best):
            if log:
                log(
                    f"[lr-find] stopped at lr {schedule[i]:.2e}: the loss diverged ({cur:.3f} > {diverge} x {best:.3f})"
                )
            break
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    res = analyse([a for a, _ in finite], [b for _, b in finite])
    res.update(lrs=lrs, losses=losses, steps_run=len(lrs), configured_lr=cfg.optim.lr)
    return res
