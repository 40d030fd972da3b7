"""Networks and optimizer from a config, Ray-free: the Ray Train worker, the local runner and the benchmarks
build them the same way."""

from __future__ import annotations

import torch

from ..config import Config
from ..models import build_model


def build_networks(cfg: Config, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Primary F and (for CMPL) auxiliary A, from ``model.*``; aux_arch 'same' = Table 3's separate-weights twin."""
    primary = build_model(cfg.model.primary_arch, num_classes, cfg.model.primary_width, cfg.model.dropout)
    aux = None
    if cfg.uses_aux:
        arch, width = cfg.aux_spec()
        aux = build_model(arch, num_classes, width, cfg.model.dropout)
    return primary, aux


def param_groups(cfg: Config, nets: list[torch.nn.Module]) -> list[dict]:
    """One SGD group, or two when ``optim.decay_norm_bias`` is off: BatchNorm weights and biases (1-d
    parameters) then get no weight decay (timm's / PySlowFast's ``ZERO_WD_1D_PARAM``)."""
    params = [p for net in nets for p in net.parameters()]
    if cfg.optim.decay_norm_bias:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def make_optimizer(cfg: Config, primary: torch.nn.Module, aux: torch.nn.Module | None) -> torch.optim.Optimizer:
    """ONE optimizer over both networks: Eq. 6 is one joint objective."""
    nets = [primary] + ([aux] if aux is not None else [])
    return torch.optim.SGD(
        param_groups(cfg, nets),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        nesterov=cfg.optim.nesterov,
    )


def objective_kwargs(cfg: Config, lambda_u: float | None = None) -> dict:
    """Keyword arguments of :func:`cmpl_ray.algorithm.compute_objective` that come from ``algo.*``, built here
    only, so no caller (trainer, ``cmpl-ray step``, lr-find) can forget a switch. ``lambda_u``: the weight at this
    step when a warm-up schedules it (default: the configured one). Runtime arguments (``aux_stream``) are the
    caller's."""
    a = cfg.algo
    return {
        "algo": a.name,
        "scheme": a.scheme,
        "threshold": a.threshold,
        "lambda_u": a.lambda_u if lambda_u is None else lambda_u,
        "aux_supervised": a.aux_supervised,
        "aux_unsupervised": a.aux_unsupervised,
        "bn_mode": a.bn_mode,
    }
