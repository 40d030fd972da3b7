"""Checkpoint files: both networks, optimizer, AMP scaler, progress, RNG states and the resolved config.

Saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``: only tensors and plain Python
containers are stored (RNG states as tensors / ints), so loading never unpickles arbitrary objects.
A truncated or foreign file is refused with :class:`CheckpointError` saying what is wrong.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FILENAME = "checkpoint.pt"
FORMAT = "cmpl-ray/1"


class CheckpointError(RuntimeError):
    """The file is not a readable cmpl-ray checkpoint."""


def unwrap(model: nn.Module | None) -> nn.Module | None:
    """The plain module behind a DDP wrapper (state dicts without the ``module.`` prefix)."""
    return getattr(model, "module", model)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": random.getstate()[1],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"]), None))


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    primary: nn.Module,
    aux: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    epoch: int,
    global_step: int,
    config: dict[str, Any],
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
    ema: Any = None,
) -> Path:
    """Write ``<directory>/checkpoint.pt`` atomically (tmp + rename) and return its path.

    ``ema`` (a :class:`~cmpl_ray.train.ema.WeightEma`) is stored under ``"ema"``: the averaged weights that
    validation measured, which ``eval`` / ``predict`` load.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "primary": unwrap(primary).state_dict(),
        "aux": unwrap(aux).state_dict() if aux is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "rng": rng_state(),
        "config": config,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "extra": extra or {},
        "ema": ema.state_dict() if ema is not None else None,
    }
    path = directory / FILENAME
    tmp = directory / (FILENAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or a directory containing ``checkpoint.pt`` safely (``weights_only``)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle with disallowed globals, garbage bytes
        raise CheckpointError(f"{p}: not a readable cmpl-ray checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a cmpl-ray checkpoint (missing format tag {FORMAT!r})")
    return state


def restore(
    state: dict[str, Any],
    *,
    primary: nn.Module,
    aux: nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    rng: bool = True,
    weights: str = "live",
) -> None:
    """Load weights (and optimizer/scaler/RNG when given) from a loaded checkpoint state.

    weights: ``live`` = the trained weights (resuming); ``ema`` = the averaged weights when the checkpoint has
    them (evaluation, inference), else the live ones.
    """
    sd_p, sd_a = state["primary"], state.get("aux")
    if weights == "ema" and state.get("ema"):
        sd_p, sd_a = state["ema"]["nets"][0], state["ema"]["nets"][1] if len(state["ema"]["nets"]) > 1 else None
    unwrap(primary).load_state_dict(sd_p)
    if aux is not None:
        if sd_a is None:
            raise CheckpointError("checkpoint has no auxiliary network but the config uses one (algo.name=cmpl)")
        unwrap(aux).load_state_dict(sd_a)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if rng and state.get("rng"):
        set_rng_state(state["rng"])
