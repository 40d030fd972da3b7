"""Temporally consistent spatial augmentation of uint8 clips (paper Sec. 3.3).

Every view is a torch uint8 tensor (C, T, crop, crop), the channels-first video
layout of the 3D CNNs (the trainer normalises).  Inputs are (T, H, W, C) uint8,
numpy (straight from the decoder) or torch.

Why the code looks like this:

* One parameter draw per clip, applied to every frame (temporal consistency).
* Crop, resize, flip are exact index ops: slicing and a flipped view, then ONE
  copy into the planar (C, T, h, w) output; ``F.interpolate`` (uint8 bilinear,
  all frames in one call) only when the short side is not already the target.
* RandAugment: kornia's ``RandAugment`` draws the ops and magnitudes (its
  policy) for one frame (``forward_parameters``; it cannot run inside
  ``VideoSequential``).  Replaying kornia's modules on the T frames with
  repeated parameters cost 3-10x the clip's decode time on CPU, so the drawn
  ops run as single-threaded uint8 numpy kernels (:func:`_rand_augment_clip`;
  no OpenMP stalls when loader workers share cores).
* Cutout is hand-written: FixMatch's Cutout is one grey square of side
  ``cutout * crop`` (or ``U(0, cutout) * crop``) centred anywhere (clipped by the border); kornia's
  ``RandomErasing`` samples area and aspect ratio inside the image instead.
* Randomness: numpy draws come from the caller's ``rng``; kornia's draws come
  from torch's global RNG inside ``torch.random.fork_rng`` seeded from ``rng``,
  so a view is reproducible from the seed and the caller's torch RNG state is
  untouched.  (``fork_rng`` swaps the process-wide CPU generator: ``strong``
  called from several threads at once stays valid but not bit-reproducible.)
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["standard", "weak", "strong", "eval_views", "CUTOUT_FILL"]

Clip = np.ndarray | torch.Tensor
CUTOUT_FILL = 127  #: grey of the Cutout square (FixMatch)
_LUT_OPS = {"Invert", "Posterize", "Solarize", "SolarizeAdd", "Contrast", "Brightness"}  # f(pixel value) only
_WARP_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
_GREY = (0.299, 0.587, 0.114)  # PIL "L" weights
_RA_CACHE = threading.local()
_PAIR_LO, _PAIR_HI = np.arange(65536) & 255, np.arange(65536) >> 8  # byte halves of every uint16


# ----------------------------------------------------------------------------- geometry helpers
def _as_thwc(clip: Clip) -> np.ndarray:
    """(T, H, W, C) uint8 numpy/torch -> numpy view (no copy)."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    if not isinstance(clip, np.ndarray):
        raise TypeError(f"clip must be a numpy array or torch tensor, got {type(clip).__name__}")
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 RGB (T, H, W, 3), got {clip.dtype} {clip.shape}")
    return clip


def _planar(a: np.ndarray) -> np.ndarray:
    """(T, h, w, C) view (any strides, flips included) -> contiguous (C, T, h, w): the single copy."""
    return np.ascontiguousarray(a.transpose(3, 0, 1, 2))


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of all frames at once: (T, H, W, C) -> (T, size[0], size[1], C) uint8."""
    if a.shape[1:3] == tuple(size):
        return a
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # (T, C, H, W), channels-last memory
    # align_corners=False, no antialias: the PySlowFast / mmaction convention; uint8 in, uint8 out.
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return y.permute(0, 2, 3, 1).numpy()


def _centre_square(a: np.ndarray, crop: int) -> np.ndarray:
    """Resize short side to ``crop``, centre crop -> (T, crop, crop, C).

    Done as "centre square of side min(H, W), resized to crop": the same
    pixels, but only crop*crop outputs are interpolated (none if the decoder
    already produced short side == crop).
    """
    h, w = a.shape[1:3]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return _resize(a[:, y0 : y0 + s, x0 : x0 + s], (crop, crop))


def _maybe_flip(a: np.ndarray, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip, p=0.5, same for all frames (a view). Always draws once: stable rng stream."""
    u = rng.random()
    return a[:, :, ::-1] if flip and u < 0.5 else a


def _check_crop(crop: int) -> None:
    if int(crop) < 1:
        raise ValueError(f"crop must be >= 1, got {crop}")


# ----------------------------------------------------------------------------- RandAugment kernels
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


def _f32_to_u8(pf: np.ndarray) -> np.ndarray:
    np.clip(pf, 0.0, 255.0, out=pf)
    pf += 0.5
    return pf.astype(np.uint8)


def _take_u8(lut: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = lut[x] for contiguous uint8 ``x``, two pixels per lookup (65536-entry uint16 table, ~2.5x faster)."""
    if x.size % 2 or x.size < (1 << 18):  # building the pair table (~0.2 ms) only pays off on big clips
        np.take(lut, x, out=out, mode="clip")
        return
    pair = lut[_PAIR_LO].astype(np.uint16) | (lut[_PAIR_HI].astype(np.uint16) << 8)  # same on either endianness
    np.take(pair, x.reshape(-1).view(np.uint16), out=out.reshape(-1).view(np.uint16), mode="clip")


def _apply_lut(p: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    """Per-channel lookup: p (C, T, H, W) contiguous uint8, lut (C, 256) uint8 -> new (C, T, H, W)."""
    if lut is None:
        return p
    out = np.empty_like(p)
    if (lut == lut[:1]).all():  # value-only ops: one table for every channel
        _take_u8(lut[0], p, out)
    else:
        for ch in range(p.shape[0]):
            _take_u8(lut[ch], p[ch], out[ch])
    return out


def _stats_lut(p: np.ndarray, kind: str) -> np.ndarray:
    """AutoContrast / PIL Equalize tables (C, 256) from each channel's histogram over the WHOLE clip."""
    rows = []
    ident = np.arange(256, dtype=np.float64)
    for ch in range(p.shape[0]):
        if kind == "AutoContrast":
            lo, hi = int(p[ch].min()), int(p[ch].max())
            rows.append(ident if hi <= lo else (ident - lo) * (255.0 / (hi - lo)))
        else:
            hc = np.bincount(p[ch].ravel(), minlength=256)
            nz = np.flatnonzero(hc)
            step = (int(hc.sum()) - int(hc[nz[-1]])) // 255
            lut = (np.cumsum(hc) + step // 2) // max(step, 1)
            rows.append(ident if step == 0 else np.concatenate([[0], lut[:-1]]))
    return np.clip(np.rint(np.stack(rows)), 0, 255).astype(np.uint8)


def _warp_nearest(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Affine warp (3x3 ``m``: source -> output pixel coords), nearest neighbour, zero fill.

    The source pixel of each output pixel is computed once (H*W) and gathered
    for all C*T planes; a zero pixel appended to each plane serves the
    out-of-image positions.
    """
    c, t, h, w = p.shape
    inv = np.linalg.inv(m)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = np.rint(inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]).astype(np.intp)
    sy = np.rint(inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]).astype(np.intp)
    valid = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    idx = np.where(valid, sy * w + sx, h * w).ravel()  # (H*W,)
    src = np.zeros((c * t, h * w + 1), np.uint8)  # (C*T, H*W + 1)
    src[:, :-1] = p.reshape(c * t, h * w)
    return np.take(src, idx, axis=1).reshape(c, t, h, w)


def _color(p: np.ndarray, f: float) -> np.ndarray:
    """PIL ``ImageEnhance.Color``: f * image + (1 - f) * greyscale."""
    pf = p.astype(np.float32)
    grey = pf[0] * np.float32(_GREY[0] * (1 - f))  # (T, H, W)
    for i in (1, 2):
        grey += pf[i] * np.float32(_GREY[i] * (1 - f))
    pf *= np.float32(f)
    pf += grey
    return _f32_to_u8(pf)


def _sharpness(p: np.ndarray, f: float) -> np.ndarray:
    """PIL/kornia sharpness: blend with the [[1,1,1],[1,5,1],[1,1,1]]/13 smoothed image; border kept."""
    r = p[..., :-2].astype(np.uint16)
    r += p[..., 1:-1]
    r += p[..., 2:]  # horizontal 3-sums, uint16 (half the bytes of float32)
    s = r[..., :-2, :] + r[..., 1:-1, :]
    s += r[..., 2:, :]  # 3x3 box sums, (C, T, H-2, W-2)
    # f*x + (1-f)*(box + 4x)/13  (box = 3x3 sum incl. the centre)
    inner = np.multiply(s, np.float32((1 - f) / 13), dtype=np.float32)
    inner += np.multiply(p[..., 1:-1, 1:-1], np.float32(4 * (1 - f) / 13 + f), dtype=np.float32)
    out = p.copy()
    out[..., 1:-1, 1:-1] = _f32_to_u8(inner)
    return out


def _rand_augment_clip(p: np.ndarray, n_ops: int, magnitude: float, seed: int) -> np.ndarray:
    """RandAugment(n_ops, magnitude) on a planar (C, T, S, S) uint8 clip, one parameter set for all frames.

    * value-only ops (invert, posterize, solarize(+add), contrast, brightness):
      kornia's op is run on a 256-value ramp and used as a lookup table
      (kornia's exact semantics); consecutive tables are fused;
    * autocontrast / equalize: tables from the histogram of the *whole clip*,
      so every frame gets the same intensity mapping (no flicker);
    * rotate / shear / translate: kornia computes the matrix; applied by a
      nearest-neighbour gather (PIL's default resampling, as in FixMatch);
    * color / sharpness: PIL's definitions (kornia's HSV round trip is slower).
    """
    ra = _rand_augment(n_ops, magnitude)
    p = np.ascontiguousarray(p)  # the lookup kernels view planes as flat uint16 pairs
    c, _, h, w = p.shape
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also pokes CUDA/XPU (~1 ms)
        params = ra.forward_parameters(torch.Size([1, c, h, w]))  # one frame: one draw per clip
    lut = None  # pending (C, 256) table, applied lazily
    for item in params:
        op = ra.get_submodule(item.name)[0]
        kind, prm = type(op).__name__, item.data[0].data
        if kind in _LUT_OPS:
            ramp = torch.arange(256, dtype=torch.float32).div_(255.0).expand(1, c, 1, 256).contiguous()
            new = np.rint(ra.transform_inputs(ramp, [item])[0, :, 0].numpy() * 255.0).clip(0, 255).astype(np.uint8)
            lut = new if lut is None else np.take_along_axis(new, lut.astype(np.intp), axis=1)
            continue
        p, lut = _apply_lut(p, lut), None
        if kind in ("AutoContrast", "Equalize"):
            lut = _stats_lut(p, kind)
        elif kind in _WARP_OPS:
            m = op.op.compute_transformation(torch.empty(1, c, h, w), prm, op.op.flags)
            p = _warp_nearest(p, m.double().reshape(3, 3).numpy())
        elif kind == "Saturate":
            p = _color(p, float(prm["saturation_factor"].reshape(-1)[0]))
        elif kind == "Sharpness":
            p = _sharpness(p, float(prm["sharpness"].reshape(-1)[0]))
        else:  # kornia's default policy changed: fail loudly rather than skip an op
            raise NotImplementedError(f"RandAugment op {kind} has no clip implementation")
    return _apply_lut(p, lut)


def _cutout(p: np.ndarray, frac: float, rng: np.random.Generator, uniform: bool = False) -> np.ndarray:
    """FixMatch Cutout on planar (C, T, H, W), in place: grey square, same on all frames.

    Side ``frac * size`` (FixMatch-pytorch's ``CutoutAbs(img, 16)`` on 32 px), or with ``uniform`` a side
    ``v * size``, ``v ~ U(0, frac)`` per clip (TorchSSL/USB's ``Cutout(img, random() * 0.5)``): half the
    average erasure.
    """
    h, w = p.shape[-2:]
    side = int(round((float(rng.uniform(0.0, frac)) if uniform else frac) * min(h, w)))
    cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
    if side > 0:
        y0, y1 = max(0, int(cy - side / 2)), min(h, int(cy + side / 2))
        x0, x1 = max(0, int(cx - side / 2)), min(w, int(cx + side / 2))
        p[..., y0:y1, x0:x1] = CUTOUT_FILL
    return p


# ----------------------------------------------------------------------------- views
def standard(
    clip: Clip, crop: int, scale: tuple[int, int], rng: np.random.Generator, flip: bool | None = None
) -> torch.Tensor:
    """Labeled-data view (PySlowFast train augmentation) -> (C, T, crop, crop) uint8.

    Short-side scale jitter to ``S ~ U[scale[0], scale[1]]`` (rounded), random
    ``crop`` x ``crop`` crop, horizontal flip; one draw per clip. ``flip``: None = flip with p 0.5,
    True / False = the caller decided (one decision per video, shared by the primary's and the
    auxiliary's clips, so a remapped label fits both).
    """
    _check_crop(crop)
    lo, hi = int(scale[0]), int(scale[1])
    if not crop <= lo <= hi:
        raise ValueError(f"need crop <= scale[0] <= scale[1], got crop={crop} scale={scale}")
    a = _as_thwc(clip)  # (T, H, W, C)
    h, w = a.shape[1:3]
    size = int(round(rng.uniform(lo, hi)))
    if h <= w:
        new_h, new_w = size, max(size, int(math.floor(w / h * size)))
    else:
        new_h, new_w = max(size, int(math.floor(h / w * size))), size
    y0 = int(rng.integers(0, new_h - crop + 1))
    x0 = int(rng.integers(0, new_w - crop + 1))
    a = _resize(a, (new_h, new_w))[:, y0 : y0 + crop, x0 : x0 + crop]  # (T, crop, crop, C)
    if flip is None:
        return torch.from_numpy(_planar(_maybe_flip(a, True, rng)))
    return torch.from_numpy(_planar(a[:, :, ::-1] if flip else a))


def weak(clip: Clip, crop: int, flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """Weak view (paper: centre crop 224) -> (C, T, crop, crop) uint8.

    Resize short side to ``crop``, centre crop, optional random horizontal flip.
    """
    _check_crop(crop)
    a = _centre_square(_as_thwc(clip), crop)  # (T, crop, crop, C)
    return torch.from_numpy(_planar(_maybe_flip(a, flip, rng)))


def strong(
    clip: Clip,
    crop: int,
    flip: bool,
    rng: np.random.Generator,
    n_ops: int = 2,
    magnitude: float = 10,
    cutout: float = 0.5,
    cutout_uniform: bool = False,
) -> torch.Tensor:
    """Strong view (FixMatch): weak geometry + RandAugment(n_ops, magnitude) + Cutout -> (C, T, crop, crop) uint8.

    The flip is drawn independently of the weak view's.  ``magnitude`` is
    kornia's RandAugment ``m`` in (0, 30); ``cutout`` is the Cutout side as a
    fraction of the crop (with ``cutout_uniform``, its upper bound); ``n_ops=0`` /
    ``cutout=0`` skip RandAugment / Cutout.
    """
    _check_crop(crop)
    if not 0.0 <= cutout <= 1.0:
        raise ValueError(f"cutout must be in [0, 1], got {cutout}")
    a = _maybe_flip(_centre_square(_as_thwc(clip), crop), flip, rng)  # (T, crop, crop, C)
    p = _planar(a)  # (C, T, crop, crop), own memory: the ops below may write in place
    seed = int(rng.integers(0, 2**63 - 1))
    if n_ops > 0:
        p = _rand_augment_clip(p, n_ops, magnitude, seed)
    return torch.from_numpy(_cutout(p, cutout, rng, cutout_uniform))


def eval_views(clip: Clip, crop: int, num_crops: int) -> torch.Tensor:
    """Test-time spatial crops -> (num_crops, C, T, crop, crop) uint8.

    The decoder already scaled the short side (paper: 256); if it is below
    ``crop`` it is resized up here.  1 crop -> centre; N crops -> evenly spaced
    along the long side, short side centred (3 -> left/centre/right or
    top/centre/bottom, as PySlowFast ``uniform_crop``).
    """
    _check_crop(crop)
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    a = _as_thwc(clip)  # (T, H, W, C)
    h, w = a.shape[1:3]
    if min(h, w) < crop:
        s = crop / min(h, w)
        a = _resize(a, (max(crop, int(round(h * s))), max(crop, int(round(w * s)))))
        h, w = a.shape[1:3]
    long_is_w = w >= h
    span = (w if long_is_w else h) - crop
    short_off = int(math.ceil(((h if long_is_w else w) - crop) / 2))
    if num_crops == 1:
        offsets = [int(math.ceil(span / 2))]
    else:
        offsets = [int(math.ceil(i * span / (num_crops - 1))) for i in range(num_crops)]
    out = np.empty((num_crops, a.shape[3], a.shape[0], crop, crop), np.uint8)  # (N, C, T, crop, crop)
    for i, off in enumerate(offsets):
        y, x = (short_off, off) if long_is_w else (off, short_off)
        out[i] = a[:, y : y + crop, x : x + crop].transpose(3, 0, 1, 2)
    return torch.from_numpy(out)
