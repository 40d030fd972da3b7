"""Exponential moving average (EMA) of both networks' weights, used for evaluation and inference.

Why: with few labels the weights of the last step swing by several points of top-1 from one evaluation to
the next (measured on the synthetic set), so a run's final accuracy depends on where training happened to
stop. Evaluating an EMA of the weights (as FixMatch's reference code, USB and timm do) removes most of that
noise for every algorithm alike; it does not change what is trained. Pseudo-labels still come from the live
networks, as in the paper.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so a short CPU run is not dominated by the random init while
a 200-epoch cluster run gets the full ``decay``. BatchNorm running statistics are averaged like weights;
integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .checkpoint import unwrap


class WeightEma:
    """EMA copies of ``nets`` (DDP-wrapped or plain); ``nets`` attribute holds the averaged modules."""

    def __init__(self, nets: list[nn.Module | None], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        src = [unwrap(n) if n is not None else None for n in nets]
        self.nets = [copy.deepcopy(n).eval().requires_grad_(False) if n is not None else None for n in src]
        # state_dict() tensors share storage with the modules' parameters and buffers (load_state_dict copies in
        # place), so the pairs are collected once and each step is one fused foreach op, not a dict walk per net
        pairs = [
            (e, s)
            for m, n in zip(self.nets, src)
            if n is not None
            for e, s in zip(m.state_dict().values(), n.state_dict().values())
        ]
        floats = [(e, s) for e, s in pairs if e.dtype.is_floating_point]
        self._float = ([e for e, _ in floats], [s for _, s in floats])
        self._other = [(e, s) for e, s in pairs if not e.dtype.is_floating_point]

    def current_decay(self) -> float:
        """Decay applied by the next :meth:`update`."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live weights in: ema = d * ema + (1 - d) * live. Call after each optimizer step."""
        d = self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(self._float[0], self._float[1], 1.0 - d)
        for e, s in self._other:
            e.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "nets": [n.state_dict() if n is not None else None for n in self.nets],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for net, sd in zip(self.nets, state["nets"]):
            if net is not None and sd is not None:
                net.load_state_dict(sd)
