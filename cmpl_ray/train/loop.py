"""Ray-free training and evaluation loops: plain PyTorch over an iterable of batches.

The Ray glue (shards, DDP wrapping, reports, checkpoints) lives in :mod:`cmpl_ray.train.worker`; these
functions only need models, an optimizer and batches, so tests and benchmarks call them directly.
Batches arrive as uint8 clips (B, C, T, H, W) and are normalised here, on the training device, so the data
pipeline moves 4x fewer bytes than float32 would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..algorithm import PL_COUNTS, compute_objective
from ..config import Config
from ..data.clip_decoder import LOOPED, OK, PAD
from ..data.video_reader import PYAV
from .build import objective_kwargs
from .ema import WeightEma

MEAN, STD = 0.45, 0.225  # PySlowFast's Kinetics normalisation, per channel
CLIP_KEYS = ("l_p", "l_a", "u_weak_p", "u_strong_p", "u_weak_a", "u_strong_a")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run stops; the last checkpoint is still usable."""


def normalize(clip: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """uint8 (B, C, T, H, W) -> float normalised on ``device``."""
    x = clip.to(device, non_blocking=True).float().div_(255.0).sub_(MEAN).div_(STD)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr`` then half-cosine decay to 0 (the paper's cosine schedule)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lambda_at(epoch_progress: float, lambda_u: float, warmup_epochs: float) -> float:
    """Linear ramp of the unsupervised weight: early pseudo-labels of a net that knows nothing are noise."""
    if warmup_epochs <= 0:
        return lambda_u
    return lambda_u * min(1.0, epoch_progress / warmup_epochs)


@dataclass
class EpochResult:
    steps: int = 0
    skipped_steps: int = 0
    clips: int = 0
    seconds: float = 0.0
    means: dict[str, float] = field(default_factory=dict)
    bad_samples: list[tuple[str, int, int]] = field(default_factory=list)  # (stream, index, err)
    looped_samples: int = 0
    good_samples: int = 0  # decoded clips that trained (labeled + unlabeled, looped short videos included)
    pl_counts: dict[str, Tensor] = field(default_factory=dict)  # "f"/"a" -> (K, 4) pseudo_label_counts sums
    read_by: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # decoder code -> {(stream, index)}


def _any_nonfinite(loss: Tensor) -> bool:
    flag = (~torch.isfinite(loss.detach())).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag)  # every rank skips together, so DDP's collectives stay matched
    return bool(flag.item() > 0)


def _collect_bad(batch: Mapping[str, Tensor], res: EpochResult) -> None:
    for stream in ("l", "u"):
        err = batch.get(f"{stream}_err")
        if err is None:
            continue
        idx = batch[f"{stream}_index"]
        res.good_samples += int(((err == OK) | (err == LOOPED)).sum())
        dec = batch.get(f"{stream}_dec")
        if dec is not None:  # which library read each good video (decord, or PyAV for what decord cannot open)
            for d, i in zip(dec.flatten().tolist(), idx.flatten().tolist()):
                if d >= 0:
                    res.read_by.setdefault(int(d), set()).add((stream, int(i)))
        for i in torch.nonzero(err > 0).flatten().tolist():
            code = int(err[i])
            if code == LOOPED:  # usable, only counted
                res.looped_samples += 1
            else:
                res.bad_samples.append((stream, int(idx[i]), code))


def _to_device(batch: Mapping[str, Tensor], device: torch.device, channels_last: bool) -> dict[str, Tensor]:
    """The step's inputs on the device: clips normalised (float), labels and validity masks as they are."""
    x = {k: normalize(batch[k], device, channels_last) for k in CLIP_KEYS if k in batch}
    for k in ("y_l", "y_u", "l_valid", "u_valid"):
        if k in batch:
            x[k] = batch[k].to(device, non_blocking=True)
    return x


def _backward_and_step(
    loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, params: list, clip: float
) -> None:
    """Backward, optional gradient clipping (on unscaled gradients), optimizer step; through the GradScaler for
    fp16."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _step_stats(stats: dict[str, Tensor], res: EpochResult) -> dict[str, float]:
    """The step's scalar statistics as floats; its per-class pseudo-label counts are summed into ``res``."""
    for k in [k for k in stats if k.startswith(PL_COUNTS)]:
        c = stats.pop(k).detach()
        net = k[len(PL_COUNTS) :]
        res.pl_counts[net] = res.pl_counts[net] + c if net in res.pl_counts else c
    # one device->host copy for all statistics (a float() per entry would sync the GPU ~15 times a step)
    return dict(zip(stats, torch.stack([v.detach().float() for v in stats.values()]).tolist()))


def train_one_epoch(
    primary: nn.Module,
    aux: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Mapping[str, Tensor]],
    cfg: Config,
    *,
    epoch: int,
    steps: int,
    global_step: int,
    total_steps: int,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    ema: WeightEma | None = None,
) -> EpochResult:
    """One epoch of ``steps`` synchronized steps; returns mean statistics and counts.

    ``ema`` (optional :class:`~cmpl_ray.train.ema.WeightEma`) is updated after every optimizer step.

    ``log_fn(global_step, stats)`` is called every ``cfg.train.log_every`` steps (rank 0 logs/prints).
    """
    primary.train()
    if aux is not None:
        aux.train()
    res = EpochResult()
    sums: dict[str, float] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    warmup_steps = int(cfg.optim.warmup_epochs * steps)
    use_amp = cfg.train.amp != "none" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    channels_last = cfg.train.channels_last and device.type == "cuda"
    aux_stream = (
        torch.cuda.Stream(device)
        if cfg.train.aux_stream and device.type == "cuda" and aux is not None and cfg.algo.name == "cmpl"
        else None
    )
    bad_in_a_row = 0
    t0 = time.perf_counter()
    window_t, window_clips = t0, 0
    for i, batch in enumerate(batches):
        if i >= steps:  # keep draining: a streaming split ends its epoch only when fully consumed
            continue
        _collect_bad(batch, res)
        step = global_step + res.steps + res.skipped_steps
        lr = lr_at(step, total_steps, warmup_steps, cfg.optim.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        lam = lambda_at(epoch + i / max(1, steps), cfg.algo.lambda_u, cfg.algo.unsup_warmup_epochs)
        x = _to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss, stats = compute_objective(
                primary, aux, x, **objective_kwargs(cfg, lambda_u=lam), aux_stream=aux_stream
            )
        optimizer.zero_grad(set_to_none=True)
        if _any_nonfinite(loss):
            res.skipped_steps += 1
            bad_in_a_row += 1
            if bad_in_a_row >= cfg.train.max_bad_steps:
                raise NonFiniteLossError(
                    f"{bad_in_a_row} consecutive non-finite losses at epoch {epoch} step {step} "
                    f"(train.max_bad_steps={cfg.train.max_bad_steps}); lower optim.lr or enable optim.grad_clip"
                )
            continue
        bad_in_a_row = 0
        _backward_and_step(loss, optimizer, scaler, params, cfg.optim.grad_clip)
        if ema is not None:
            ema.update()
        n_clips = int(batch["y_l"].shape[0]) + (int(batch["y_u"].shape[0]) if "y_u" in batch else 0)
        res.clips += n_clips
        window_clips += n_clips
        res.steps += 1
        stats = _step_stats(stats, res)
        stats.update(lr=lr, lambda_u=lam)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        if log_fn is not None and (res.steps % cfg.train.log_every == 0 or res.steps == steps):
            now = time.perf_counter()
            stats["clips_per_s"] = window_clips / max(now - window_t, 1e-9)
            window_t, window_clips = now, 0
            log_fn(global_step + res.steps + res.skipped_steps, stats)
    res.pl_counts = {k: v.cpu() for k, v in res.pl_counts.items()}
    res.seconds = time.perf_counter() - t0
    res.means = {k: v / max(1, res.steps) for k, v in sums.items()}
    res.means["clips_per_s"] = res.clips / max(res.seconds, 1e-9)
    return res


@torch.no_grad()
def evaluate(
    primary: nn.Module,
    aux: nn.Module | None,
    batches: Iterable[Mapping[str, Tensor]],
    num_classes: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Multi-view evaluation: softmax averaged over all clips x crops of a video (paper Sec. 4.1).

    batches: ``v_p`` uint8 (B, V, C, T, H, W) views for the primary, ``v_a`` for the auxiliary,
    ``y`` labels, ``valid`` bool. Returns per-class count tensors (summed over ranks by the caller):
    ``total``, ``top1``, ``top5`` for the primary and ``aux_top1``/``aux_top5`` when ``aux`` is given,
    plus ``invalid`` (videos that could not be decoded).

    DDP wrappers are looked through: a wrapped net's forward is a collective (it broadcasts BatchNorm buffers),
    and a rank whose val share is empty or unreadable runs no forward, which would leave the others waiting.
    The caller makes the ranks' weights equal first.
    """
    primary = getattr(primary, "module", primary)
    aux = getattr(aux, "module", aux) if aux is not None else None
    primary.eval()
    if aux is not None:
        aux.eval()
    out = {k: torch.zeros(num_classes, dtype=torch.float64) for k in ("total", "top1", "top5", "aux_top1", "aux_top5")}
    out["invalid"] = torch.zeros(1, dtype=torch.float64)
    out["read_by_pyav"] = torch.zeros(1, dtype=torch.float64)  # val videos decord could not open
    k5 = min(5, num_classes)
    for batch in batches:
        valid = batch["valid"].bool()
        pad = batch["err"] == PAD if "err" in batch else torch.zeros_like(valid)
        out["invalid"] += float((~valid & ~pad).sum())
        if "dec" in batch:
            out["read_by_pyav"] += float((batch["dec"] == PYAV).sum())
        if not bool(valid.any()):
            continue
        y = batch["y"][valid].long()
        nets = [("", primary, "v_p")] + ([("aux_", aux, "v_a")] if aux is not None else [])
        for prefix, net, key in nets:
            v = batch[key][valid]  # (B, V, C, T, H, W)
            b, nv = v.shape[:2]
            logits = net(normalize(v.flatten(0, 1), device))  # (B*V, K)
            prob = torch.softmax(logits.float(), dim=1).view(b, nv, -1).mean(dim=1).cpu()  # (B, K)
            top = prob.topk(k5, dim=1).indices  # (B, k5)
            hit1 = (top[:, 0] == y).double()
            hit5 = (top == y[:, None]).any(dim=1).double()
            out[f"{prefix}top1"].index_add_(0, y, hit1)
            out[f"{prefix}top5"].index_add_(0, y, hit5)
        out["total"].index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    return out


def summarize_eval(counts: Mapping[str, Tensor], has_aux: bool) -> dict[str, float]:
    """Aggregate per-class counts into top-1, top-5 and mean class accuracy (in %)."""
    total = counts["total"]
    n = float(total.sum())
    seen = total > 0
    res = {"val_videos": n, "val_invalid": float(counts["invalid"].sum())}
    if "read_by_pyav" in counts:
        res["val_read_by_pyav"] = float(counts["read_by_pyav"].sum())
    for prefix in ("",) + (("aux_",) if has_aux else ()):
        res[f"{prefix}val_top1"] = 100.0 * float(counts[f"{prefix}top1"].sum()) / max(n, 1.0)
        res[f"{prefix}val_top5"] = 100.0 * float(counts[f"{prefix}top5"].sum()) / max(n, 1.0)
        per_class = counts[f"{prefix}top1"][seen] / total[seen]
        res[f"{prefix}val_mean_class_acc"] = 100.0 * float(per_class.mean()) if bool(seen.any()) else 0.0
    return res


def per_class_accuracy(counts: Mapping[str, Tensor], prefix: str = "") -> list[float]:
    total = counts["total"]
    return [float(c / t) if t > 0 else float("nan") for c, t in zip(counts[f"{prefix}top1"], total)]


def pseudo_label_per_class(counts: Tensor) -> dict[str, list[float]]:
    """Per-class pseudo-label quality from summed (K, 4) :func:`~cmpl_ray.algorithm.pseudo_label_counts`:
    ``mask_rate`` (kept / clips of the class), ``precision`` (right / kept with that label) and ``recall``
    (right / clips of the class), in %; NaN where a class had no clip (or no kept label)."""
    c = counts.double()

    def ratio(a: Tensor, b: Tensor) -> list[float]:
        return [100.0 * float(x / y) if y > 0 else float("nan") for x, y in zip(a, b)]

    return {
        "mask_rate": ratio(c[:, 1], c[:, 0]),
        "precision": ratio(c[:, 2], c[:, 3]),
        "recall": ratio(c[:, 2], c[:, 0]),
    }
