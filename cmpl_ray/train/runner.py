"""One epoch of a run, and what a run carries between epochs: the same code for the Ray Train worker
(:mod:`cmpl_ray.train.worker`) and the Ray-free runner (:mod:`cmpl_ray.train.local`).

Why one module: the evaluation cadence, which weights are evaluated (EMA or raw), the bad-sample accounting and
the metrics an epoch reports are decided here once, so the two runners cannot drift apart. What differs between
them is passed in: how ranks combine (:class:`Collectives`; one process by default), where the batches come from,
and how a network is placed on its device (``wrap``: ``ray.train.torch.prepare_model`` or ``.to(device)``).
Nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..data.clip_decoder import ERR_CODES
from ..data.video_reader import DECODER_NAMES
from . import checkpoint as ckpt
from .build import build_networks, make_optimizer
from .ema import WeightEma
from .loop import evaluate, pseudo_label_per_class, summarize_eval, train_one_epoch

CHECKPOINT_SCORE = "checkpoint_score"  # what Ray ranks checkpoints by: val_top1 of an evaluated epoch
UNEVALUATED_SCORE = -1.0  # below any top-1: an epoch without evaluation is never the best checkpoint


def _no_sync(nets: list[nn.Module | None]) -> None:
    return None


@dataclass
class Collectives:
    """How the ranks of a run combine; the defaults are a single process's."""

    world: int = 1
    reduce_counts: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda counts: counts
    """Sum count tensors over ranks (evaluation counts, pseudo-label counts)."""
    gather: Callable[[Any], list[Any]] = lambda obj: [obj]
    """Every rank's ``obj``, in rank order."""
    sync_eval_weights: Callable[[list[nn.Module | None]], None] = _no_sync
    """Make every rank evaluate rank 0's weights (BatchNorm statistics differ per rank)."""


@dataclass
class RunCounters:
    """What a run accumulates over its epochs; saved whole in every checkpoint's ``extra`` and restored from it
    (the key names are the checkpoint format)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: float = -1.0
    skipped_total: int = 0
    looped_total: int = 0
    good_total: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)  # "l:3" -> error name, once per file
    read_by: dict[str, set[str]] = field(default_factory=lambda: {n: set() for n in DECODER_NAMES.values()})

    def to_extra(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "best": self.best,
            "skipped_total": self.skipped_total,
            "good_total": self.good_total,
            "looped_total": self.looped_total,
            "bad_files": self.bad_files,
            "read_by": {n: sorted(k) for n, k in self.read_by.items()},
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> RunCounters:
        c = cls()
        extra = extra or {}
        c.history, c.best = extra.get("history", []), extra.get("best", -1.0)
        c.skipped_total, c.looped_total = extra.get("skipped_total", 0), extra.get("looped_total", 0)
        c.good_total, c.bad_files = extra.get("good_total", 0), extra.get("bad_files", {})
        c.read_by.update({n: set(keys) for n, keys in extra.get("read_by", {}).items()})
        return c


@dataclass
class Nets:
    """The two networks and what steps them. ``aux`` is None for supervised and FixMatch runs."""

    primary: nn.Module
    aux: nn.Module | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: WeightEma | None

    def for_eval(self) -> tuple[nn.Module, nn.Module | None]:
        """The weights evaluation measures: the EMA copies when EMA is on."""
        return (self.ema.nets[0], self.ema.nets[1]) if self.ema is not None else (self.primary, self.aux)


def build_nets(
    cfg: Config,
    num_classes: int,
    device: torch.device,
    state: Mapping[str, Any] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> Nets:
    """Networks (restored from ``state`` when given), placed by ``wrap`` (default ``.to(device)``), then ONE
    optimizer over both (Eq. 6; built after the move so its state lives on the device), the GradScaler for fp16
    on CUDA and the weight EMA."""
    primary, aux = build_networks(cfg, num_classes)
    on_gpu = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" and on_gpu else None
    if state is not None:
        ckpt.restore(state, primary=primary, aux=aux, scaler=scaler)  # the optimizer's after the move
    if cfg.train.channels_last and on_gpu:  # before DDP wraps (and buckets) the parameters
        primary = primary.to(memory_format=torch.channels_last_3d)
        aux = aux.to(memory_format=torch.channels_last_3d) if aux is not None else None
    wrap = wrap or (lambda m: m.to(device))
    primary, aux = wrap(primary), (wrap(aux) if aux is not None else None)
    optimizer = make_optimizer(cfg, primary, aux)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    # EMA of the (DDP-synchronised, hence identical on every rank) weights: what evaluation measures
    ema = WeightEma([primary, aux], cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    if ema is not None and state is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    return Nets(primary, aux, optimizer, scaler, ema)


def is_eval_epoch(cfg: Config, epoch: int) -> bool:
    """Every ``train.eval_every`` epochs, and always the last one."""
    return (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs


@dataclass
class EpochOutcome:
    metrics: dict[str, float]
    global_step: int
    evaluated: bool
    counts: dict[str, Tensor] | None  # evaluation counts over every rank (None when not evaluated)
    pseudo: dict[str, dict[str, list[float]]] | None  # this epoch's pseudo-labels per class and network
    new_bad: list[tuple[str, int, int]]  # (stream, index, code) of files that failed for the first time


def _account_samples(res: Any, counters: RunCounters, coll: Collectives) -> tuple[list, list]:
    """Every rank's bad, looped, good and decoder counts into ``counters``; (this epoch's bad, first-time bad)."""
    gathered = coll.gather((res.bad_samples, res.looped_samples, res.steps, res.good_samples, res.read_by))
    for g in gathered:
        for code, keys in g[4].items():
            counters.read_by[DECODER_NAMES[code]].update(f"{src}:{i}" for src, i in keys)
    counters.good_total += sum(g[3] for g in gathered)
    epoch_bad = [b for g in gathered for b in g[0]]
    counters.looped_total += sum(g[1] for g in gathered)
    counters.skipped_total += len(epoch_bad)
    new_bad = []
    for src, idx, code in epoch_bad:
        key = f"{src}:{idx}"
        if key not in counters.bad_files:
            counters.bad_files[key] = ERR_CODES.get(code, str(code))
            new_bad.append((src, idx, code))
    return epoch_bad, new_bad


def run_epoch(
    nets: Nets,
    batches: Iterable[Mapping[str, Tensor]],
    cfg: Config,
    counters: RunCounters,
    *,
    epoch: int,
    steps: int,
    global_step: int,
    total_steps: int,
    device: torch.device,
    val_batches: Callable[[], Iterable[Mapping[str, Tensor]]],
    num_classes: int,
    coll: Collectives | None = None,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
) -> EpochOutcome:
    """Train one epoch, account its samples over the ranks, evaluate when due; the epoch's metrics are appended
    to ``counters.history``. Every rank calls it (the collectives inside must match)."""
    coll = coll or Collectives()
    res = train_one_epoch(
        nets.primary, nets.aux, nets.optimizer, batches, cfg, epoch=epoch, steps=steps, global_step=global_step,
        total_steps=total_steps, device=device, scaler=nets.scaler, log_fn=log_fn, ema=nets.ema,
    )  # fmt: skip
    global_step += res.steps + res.skipped_steps
    pseudo = None
    if res.pl_counts:
        pseudo = {n: pseudo_label_per_class(c) for n, c in coll.reduce_counts(dict(res.pl_counts)).items()}
    epoch_bad, new_bad = _account_samples(res, counters, coll)
    semi = cfg.algo.name != "supervised"
    rows = steps * cfg.train.batch_labeled * coll.world * (1 + (cfg.algo.unlabeled_ratio if semi else 0))
    if len(epoch_bad) >= rows:
        raise RuntimeError("every training video of this epoch failed to decode: check data.root and the lists")
    metrics: dict[str, float] = {f"train_{k}": v for k, v in res.means.items()}
    metrics.update(
        epoch=epoch + 1, global_step=global_step, skipped_samples=counters.skipped_total,
        good_samples=counters.good_total, looped_samples=counters.looped_total, skipped_steps=res.skipped_steps,
        epoch_seconds=res.seconds, **(extra_metrics or {}),
        **{f"files_read_by_{n}": len(k) for n, k in counters.read_by.items()},
    )  # fmt: skip
    evaluated, counts = is_eval_epoch(cfg, epoch), None
    if evaluated:
        eval_p, eval_a = nets.for_eval()
        coll.sync_eval_weights([eval_p, eval_a])
        counts = coll.reduce_counts(evaluate(eval_p, eval_a, val_batches(), num_classes, device))
        ev = summarize_eval(counts, nets.aux is not None)
        counters.best = max(counters.best, ev["val_top1"])
        metrics.update(ev)
    metrics.update(
        val_top1_best=counters.best,
        evaluated=float(evaluated),
        **{CHECKPOINT_SCORE: metrics["val_top1"] if evaluated else UNEVALUATED_SCORE},
    )
    counters.history.append({k: float(v) for k, v in metrics.items()})
    return EpochOutcome(metrics, global_step, evaluated, counts, pseudo, new_bad)
