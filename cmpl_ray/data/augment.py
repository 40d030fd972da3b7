"""Temporally consistent spatial augmentation of uint8 clips (paper Sec. 3.3).

Every view returned here is a torch uint8 tensor laid out (C, T, crop, crop),
the channels-first video layout the 3D CNNs take; the trainer normalises.
Inputs are (T, H, W, C) uint8, numpy (straight from the decoder) or torch.

Why the code is split this way:

* Crop, resize and flip are exact, cheap tensor ops, so they are done in plain
  torch on the uint8 clip: slicing (a view), one ``F.interpolate`` over all T
  frames, ``torch.flip``.  The (T, H, W, C) input permuted to (T, C, H, W) is
  already channels-last in memory, which is what torch's fast uint8 bilinear
  kernel wants, so no float copy is made for the weak / standard views.
* RandAugment comes from kornia (``kornia.augmentation.auto.RandAugment``).
  kornia cannot run it inside ``VideoSequential`` (stack-notes), so we sample
  its parameters once for a batch of one frame (``forward_parameters``) and
  replay them on all T frames as one batch: one set of ops and magnitudes per
  clip, identical on every frame, different per clip.
* Cutout is hand-written: FixMatch's Cutout is one square of side
  ``cutout * crop`` centred anywhere in the image (so it may be clipped by the
  border), filled with grey.  kornia's ``RandomErasing`` samples an area and an
  aspect ratio inside the image instead, and would need per-frame parameter
  repetition too; two slice assignments are simpler and exact.
* Randomness: numpy draws come from the caller's ``rng``; kornia draws from
  torch's global RNG, so it runs inside ``torch.random.fork_rng`` seeded from
  ``rng``.  A view is therefore reproducible from the seed and the caller's
  torch RNG state is left untouched.  (``fork_rng`` swaps the *process-wide*
  CPU generator: concurrent ``strong`` calls in several threads of one
  process may interleave draws; they stay valid, just not bit-reproducible.)
"""

from __future__ import annotations

import math
import threading
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["standard", "weak", "strong", "eval_views", "CUTOUT_FILL"]

Clip = Union[np.ndarray, torch.Tensor]

#: Grey used to fill the Cutout square (FixMatch).
CUTOUT_FILL = 127


# ----------------------------------------------------------------------------- helpers
def _to_tchw(clip: Clip) -> torch.Tensor:
    """(T, H, W, C) uint8 numpy/torch -> (T, C, H, W) uint8 view (channels-last memory, no copy)."""
    if isinstance(clip, np.ndarray):
        if not clip.flags.writeable:  # torch.from_numpy warns on read-only arrays
            clip = clip.copy()
        clip = torch.from_numpy(np.ascontiguousarray(clip))
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"clip must be a numpy array or torch tensor, got {type(clip).__name__}")
    if clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"clip must be uint8 (T, H, W, C) with C in (1, 3), got {clip.dtype} {tuple(clip.shape)}")
    return clip.permute(0, 3, 1, 2)  # (T, C, H, W)


def _to_ctxx(x: torch.Tensor) -> torch.Tensor:
    """(T, C, h, w) -> contiguous (C, T, h, w), the 3D-CNN layout."""
    return x.permute(1, 0, 2, 3).contiguous()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (T, C, H, W) uint8 clip to ``size`` (one call for all frames)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # align_corners=False, no antialias: the PySlowFast / mmaction convention. uint8 in, uint8 out.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _centre_square(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Resize short side to ``crop`` then centre-crop ``crop`` x ``crop`` -> (T, C, crop, crop).

    Done as "centre square of side min(H, W), then resize to crop": the same
    pixels, but only crop*crop output pixels are interpolated.
    """
    h, w = x.shape[-2:]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return _resize(x[..., y0:y0 + s, x0:x0 + s], (crop, crop))


def _maybe_flip(x: torch.Tensor, flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """Horizontal flip with p=0.5 (same for every frame). Always draws once so the rng stream is stable."""
    u = rng.random()
    return torch.flip(x, dims=(-1,)) if flip and u < 0.5 else x


def _check_crop(crop: int) -> None:
    if int(crop) < 1:
        raise ValueError(f"crop must be >= 1, got {crop}")


# ----------------------------------------------------------------------------- views
def standard(clip: Clip, crop: int, scale: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """Labeled-data view (PySlowFast training augmentation) -> (C, T, crop, crop) uint8.

    Short-side scale jitter to ``S ~ U[scale[0], scale[1]]`` (rounded), random
    ``crop`` x ``crop`` crop, random horizontal flip; one draw per clip.
    """
    _check_crop(crop)
    lo, hi = int(scale[0]), int(scale[1])
    if not crop <= lo <= hi:
        raise ValueError(f"need crop <= scale[0] <= scale[1], got crop={crop} scale={scale}")
    x = _to_tchw(clip)  # (T, C, H, W)
    h, w = x.shape[-2:]
    size = int(round(rng.uniform(lo, hi)))
    if h <= w:
        new_h, new_w = size, max(size, int(math.floor(w / h * size)))
    else:
        new_h, new_w = max(size, int(math.floor(h / w * size))), size
    y0 = int(rng.integers(0, new_h - crop + 1))
    x0 = int(rng.integers(0, new_w - crop + 1))
    x = _resize(x, (new_h, new_w))[..., y0:y0 + crop, x0:x0 + crop]  # (T, C, crop, crop)
    return _to_ctxx(_maybe_flip(x, True, rng))


def weak(clip: Clip, crop: int, flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """Weak view for pseudo-labelling (paper: centre crop 224) -> (C, T, crop, crop) uint8.

    Resize short side to ``crop``, centre crop, optional random horizontal flip.
    """
    _check_crop(crop)
    x = _centre_square(_to_tchw(clip), crop)  # (T, C, crop, crop)
    return _to_ctxx(_maybe_flip(x, flip, rng))


_RA_CACHE = threading.local()


def _rand_augment(n_ops: int, magnitude: float):
    """One kornia RandAugment per (thread, n, m): the module caches state on each call."""
    cache = getattr(_RA_CACHE, "mods", None)
    if cache is None:
        cache = _RA_CACHE.mods = {}
    key = (int(n_ops), magnitude)
    if key not in cache:
        from kornia.augmentation.auto import RandAugment  # import cost paid once per worker

        cache[key] = RandAugment(n=int(n_ops), m=magnitude)
    return cache[key]


def _repeat_params(params: list, t: int) -> list:
    """Expand every batch-1 tensor of kornia ParamItems to batch ``t`` (same values for every frame)."""
    from kornia.augmentation.container.params import ParamItem

    out = []
    for item in params:
        data = item.data
        if isinstance(data, list):
            out.append(ParamItem(item.name, _repeat_params(data, t)))
        elif isinstance(data, dict):
            rep = {}
            for k, v in data.items():
                # forward_input_shape is a shape, not a per-sample value: keep, but update the batch size.
                if k == "forward_input_shape":
                    v = v.clone()
                    v[0] = t
                elif isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == 1:
                    v = v.expand(t, *v.shape[1:])
                rep[k] = v
            out.append(ParamItem(item.name, rep))
        else:
            out.append(item)
    return out


def _apply_rand_augment(x: torch.Tensor, n_ops: int, magnitude: float, seed: int) -> torch.Tensor:
    """kornia RandAugment with one parameter set for all T frames. (T, C, S, S) uint8 -> same."""
    ra = _rand_augment(n_ops, magnitude)
    t, c, h, w = x.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = ra.forward_parameters(torch.Size([1, c, h, w]))  # one frame: one draw per clip
    xf = x.float().div_(255.0)  # kornia needs float in [0, 1]
    xf = ra.transform_inputs(xf, params=_repeat_params(params, t))  # (T, C, S, S)
    return xf.mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)


def _cutout(x: torch.Tensor, frac: float, rng: np.random.Generator) -> torch.Tensor:
    """FixMatch Cutout: grey square of side ``frac * size`` at a random centre, same on all frames (in place)."""
    h, w = x.shape[-2:]
    side = int(round(frac * min(h, w)))
    cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
    if side <= 0:
        return x
    y0, y1 = max(0, int(cy - side / 2)), min(h, int(cy + side / 2))
    x0, x1 = max(0, int(cx - side / 2)), min(w, int(cx + side / 2))
    x[..., y0:y1, x0:x1] = CUTOUT_FILL
    return x


def strong(
    clip: Clip,
    crop: int,
    flip: bool,
    rng: np.random.Generator,
    n_ops: int = 2,
    magnitude: float = 10,
    cutout: float = 0.5,
) -> torch.Tensor:
    """Strong view (FixMatch): weak geometry + RandAugment(n_ops, magnitude) + Cutout -> (C, T, crop, crop) uint8.

    The geometry (centre crop, optional flip) is drawn independently of the
    weak view's flip.  ``magnitude`` is kornia's RandAugment ``m`` in (0, 30).
    ``n_ops=0`` skips RandAugment, ``cutout=0`` skips Cutout.
    """
    _check_crop(crop)
    if not 0.0 <= cutout <= 1.0:
        raise ValueError(f"cutout must be in [0, 1], got {cutout}")
    x = _centre_square(_to_tchw(clip), crop)  # (T, C, crop, crop) uint8, may be a view of the input
    x = _maybe_flip(x, flip, rng)
    seed = int(rng.integers(0, 2**63 - 1))
    if n_ops > 0:
        x = _apply_rand_augment(x, n_ops, magnitude, seed)  # new tensor
    else:
        x = x.clone()  # cutout writes in place: never into the caller's clip
    return _to_ctxx(_cutout(x, cutout, rng))


def eval_views(clip: Clip, crop: int, num_crops: int) -> torch.Tensor:
    """Test-time spatial crops -> (num_crops, C, T, crop, crop) uint8.

    The decoder already scaled the short side (paper: 256); if it is still
    below ``crop`` it is resized up here.  1 crop -> centre; N crops -> evenly
    spaced along the long side, short side centred (3 -> left/centre/right or
    top/centre/bottom, as PySlowFast ``uniform_crop``).
    """
    _check_crop(crop)
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    x = _to_tchw(clip)  # (T, C, H, W)
    h, w = x.shape[-2:]
    if min(h, w) < crop:
        s = crop / min(h, w)
        x = _resize(x, (max(crop, int(round(h * s))), max(crop, int(round(w * s)))))
        h, w = x.shape[-2:]
    long_is_w = w >= h
    span_long = (w if long_is_w else h) - crop
    short_off = int(math.ceil(((h if long_is_w else w) - crop) / 2))
    if num_crops == 1:
        offsets = [int(math.ceil(span_long / 2))]
    else:
        offsets = [int(math.ceil(i * span_long / (num_crops - 1))) for i in range(num_crops)]
    views = []
    for off in offsets:
        if long_is_w:
            v = x[..., short_off:short_off + crop, off:off + crop]
        else:
            v = x[..., off:off + crop, short_off:short_off + crop]
        views.append(v.permute(1, 0, 2, 3))  # (C, T, crop, crop)
    return torch.stack(views, dim=0)  # (num_crops, C, T, crop, crop)
