"""Clip augmentations: shapes/dtypes, one draw per clip (temporal consistency), seeds, crops, kornia parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmpl_ray.data import augment as A

T, H, W = 4, 40, 56


def _random_clip(seed=0, t=T, h=H, w=W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _static_clip(seed=0, t=T, h=H, w=W) -> np.ndarray:
    """All frames identical: any temporally consistent augmentation keeps them identical."""
    return np.repeat(_random_clip(seed, 1, h, w), t, axis=0)


def _smooth_image(h=32, w=32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / 7.0), 40 + 4 * y + x, 200 - 3 * x - 2 * y], -1)
    return np.clip(img, 0, 255).astype(np.uint8)  # (h, w, 3)


def _views(clip, rng):
    return {
        "standard": A.standard(clip, 32, (32, 40), rng),
        "weak": A.weak(clip, 32, True, rng),
        "strong": A.strong(clip, 32, True, rng),
    }


def test_shapes_and_dtypes_numpy_and_torch():
    for clip in (_random_clip(), torch.from_numpy(_random_clip())):
        for name, v in _views(clip, np.random.default_rng(0)).items():
            assert isinstance(v, torch.Tensor) and v.dtype == torch.uint8, name
            assert v.shape == (3, T, 32, 32) and v.is_contiguous(), name


@pytest.mark.parametrize("seed", range(12))
def test_same_parameters_on_every_frame(seed):
    clip = _static_clip(seed)
    for name, v in _views(clip, np.random.default_rng(seed)).items():
        for t in range(1, T):
            assert torch.equal(v[:, 0], v[:, t]), f"{name}: frame {t} differs from frame 0"


def test_different_seeds_differ_and_same_seed_reproduces():
    clip = _random_clip(1)
    a = _views(clip, np.random.default_rng(1))
    b = _views(clip, np.random.default_rng(2))
    c = _views(clip, np.random.default_rng(1))
    for name in ("standard", "strong"):
        assert not torch.equal(a[name], b[name]), name
    for name in a:
        assert torch.equal(a[name], c[name]), name
    # the caller's torch RNG state is untouched by kornia's draws
    torch.manual_seed(0)
    before = torch.get_rng_state()
    A.strong(clip, 32, True, np.random.default_rng(3))
    assert torch.equal(before, torch.get_rng_state())


def test_strong_views_vary_across_clips_of_a_batch():
    rng = np.random.default_rng(5)
    clip = _static_clip(5)
    outs = [A.strong(clip, 32, False, rng) for _ in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) == 8


def test_weak_is_exact_centre_crop_and_flips_sometimes():
    clip = _random_clip(2, h=32, w=48)  # short side == crop: no resize, pure slicing
    centre = torch.from_numpy(np.ascontiguousarray(clip[:, :, 8:40].transpose(3, 0, 1, 2)))
    assert torch.equal(A.weak(clip, 32, False, np.random.default_rng(0)), centre)
    outs = [A.weak(clip, 32, True, np.random.default_rng(s)) for s in range(16)]
    assert any(torch.equal(o, centre) for o in outs)
    assert any(torch.equal(o, centre.flip(-1)) for o in outs)


def test_weak_resizes_short_side():
    v = A.weak(_random_clip(3, h=64, w=80), 32, False, np.random.default_rng(0))
    assert v.shape == (3, T, 32, 32)


def test_standard_is_a_crop_of_the_rescaled_clip():
    clip = _random_clip(4, h=32, w=48)
    v = A.standard(clip, 32, (32, 32), np.random.default_rng(0))  # scale == short side: crop only
    windows = [clip[:, :, x : x + 32].transpose(3, 0, 1, 2) for x in range(17)]
    assert any(np.array_equal(v.numpy(), wdw) or np.array_equal(v.numpy(), wdw[..., ::-1]) for wdw in windows)
    with pytest.raises(ValueError):
        A.standard(clip, 32, (24, 40), np.random.default_rng(0))  # scale below crop


def _grey_sides(clip, uniform, seeds=40):
    sides = []
    for seed in range(seeds):
        v = A.strong(clip, 32, False, np.random.default_rng(seed), n_ops=0, cutout=0.5, cutout_uniform=uniform).numpy()
        grey = v == A.CUTOUT_FILL
        assert (grey == grey[:, :1]).all()  # same position on every frame
        if not grey.any():
            sides.append(0)
            continue
        ys, xs = np.nonzero(grey[0, 0])
        assert ys.max() - ys.min() + 1 <= 16 and xs.max() - xs.min() + 1 <= 16  # side <= 0.5 * 32
        assert grey[0, 0].sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle
        sides.append(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    return sides


def test_cutout_is_a_grey_square_on_all_frames():
    clip = np.full((T, 32, 32, 3), 10, np.uint8)
    fixed = _grey_sides(clip, uniform=False)
    assert min(fixed) >= 8 and fixed.count(16) >= 10  # side 16 unless the border clips it
    # uniform: the side is drawn in [0, cutout * crop], so sizes vary, small squares included
    drawn = _grey_sides(clip, uniform=True)
    assert min(drawn) <= 6 and max(drawn) >= 13 and len(set(drawn)) >= 6
    untouched = A.strong(clip, 32, False, np.random.default_rng(0), n_ops=0, cutout=0.0)
    assert (untouched.numpy() == 10).all()


def test_strong_never_writes_into_the_input():
    clip = _random_clip(6, h=32, w=32)
    keep = clip.copy()
    A.strong(clip, 32, True, np.random.default_rng(0), n_ops=0)
    A.strong(torch.from_numpy(clip), 32, True, np.random.default_rng(1))
    np.testing.assert_array_equal(clip, keep)


def test_eval_views_three_crops_along_the_long_side():
    clip = _random_clip(7, h=32, w=64)
    v = A.eval_views(clip, 32, 3)
    assert v.shape == (3, 3, T, 32, 32) and v.dtype == torch.uint8
    for i, x in enumerate((0, 16, 32)):  # left, centre, right
        np.testing.assert_array_equal(v[i].numpy(), clip[:, :, x : x + 32].transpose(3, 0, 1, 2))
    portrait = _random_clip(8, h=64, w=32)
    v = A.eval_views(portrait, 32, 3)
    for i, y in enumerate((0, 16, 32)):  # top, centre, bottom
        np.testing.assert_array_equal(v[i].numpy(), portrait[:, y : y + 32].transpose(3, 0, 1, 2))
    one = A.eval_views(clip, 32, 1)
    assert one.shape == (1, 3, T, 32, 32) and torch.equal(one[0], v.new_tensor(clip[:, :, 16:48].transpose(3, 0, 1, 2)))
    assert A.eval_views(_random_clip(9, h=24, w=40), 32, 3).shape == (3, 3, T, 32, 32)  # short side resized up


# ----------------------------------------------------------------------------- kornia parity of the RandAugment ops
def _ops():
    ra = A._rand_augment(1, 10)
    return [(i, type(m[0]).__name__) for i, (_, m) in enumerate(ra.named_children())]


# Exact (max |diff| <= 1) except: warps are nearest-neighbour here vs kornia's bilinear (mean |diff|
# bound; measured 0.3-3.1 on this image), Color is PIL's grey blend vs kornia's HSV (by design).
_WARP_MEAN_TOL = 4.0


@pytest.mark.parametrize("i,kind", _ops())
def test_rand_augment_ops_match_kornia(i, kind, monkeypatch):
    ra = A._rand_augment(1, 10)
    monkeypatch.setattr(ra, "rand_selector", lambda n: torch.tensor([i]))
    img = _smooth_image()
    one = img[None].transpose(3, 0, 1, 2).copy()  # planar (C, 1, 32, 32)
    clip = np.repeat(one, 3, axis=1)  # (C, 3, 32, 32), identical frames
    for seed in (0, 1):
        many = A._rand_augment_clip(clip, 1, 10, seed)
        assert many.shape == clip.shape and many.dtype == np.uint8
        assert (many == many[:, :1]).all(), "frames must stay identical"
        ours = A._rand_augment_clip(one, 1, 10, seed)
        if kind != "Equalize":  # PIL's integer bin step depends on the pixel count (3 frames vs 1)
            np.testing.assert_array_equal(many[:, :1], ours)
        torch.default_generator.manual_seed(seed)
        params = ra.forward_parameters(torch.Size([1, 3, 32, 32]))
        frame = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        ref = (ra.transform_inputs(frame, params)[0] * 255).round().clamp(0, 255).numpy()
        diff = np.abs(ours[:, 0].astype(float) - ref)
        if kind == "Saturate":  # PIL Color (grey blend) by design, not kornia's HSV: same direction only
            assert np.corrcoef(ours[:, 0].ravel(), ref.ravel())[0, 1] > 0.95
        elif kind in A._WARP_OPS:
            assert diff.mean() <= _WARP_MEAN_TOL, (kind, diff.mean())
        else:
            assert diff.max() <= 1, (kind, diff.max())


def test_color_kernel_properties():
    grey = np.full((3, 2, 8, 8), 90, np.uint8)
    np.testing.assert_array_equal(A._color(grey, 1.7), grey)  # grey has no colour to change
    p = _random_clip(0, 2, 8, 8).transpose(3, 0, 1, 2).copy()
    np.testing.assert_array_equal(A._color(p, 1.0), p)
