"""Synthetic dataset: real decodable mp4s, determinism, and the motion/appearance design.

Why: the synthetic set stands in for UCF-101/Kinetics in every end-to-end test, so
the videos must decode through decord like real data, and the classes must carry
the signal CMPL relies on (motion-only vs appearance-only differences).
"""

from __future__ import annotations

import os

import decord
import numpy as np
import pytest

from cmpl_ray.data.lists import read_classes, read_list
from cmpl_ray.data.synth import (
    DECORD_BAD_WIDTHS,
    SYNTH_CLASSES,
    class_families,
    make_synthetic_dataset,
    render_clip,
    video_codec,
    write_video,
)


def _decode(path):
    vr = decord.VideoReader(path)
    return vr.get_batch(list(range(len(vr)))).asnumpy(), vr.get_avg_fps()


def _circ_centroid(weights: np.ndarray) -> tuple[float, float]:
    """(x, y) centroid of a (H, W) weight map on a torus (objects wrap around)."""
    h, w = weights.shape
    out = []
    for axis, n in ((0, w), (1, h)):
        profile = weights.sum(axis=axis)
        ang = 2 * np.pi * np.arange(n) / n
        out.append(np.arctan2((profile * np.sin(ang)).sum(), (profile * np.cos(ang)).sum()) * n / (2 * np.pi))
    return out[0], out[1]


def _mean_step(centroids: np.ndarray, size: int) -> np.ndarray:
    """Mean per-frame displacement (dx, dy), unwrapping the torus."""
    d = np.diff(centroids, axis=0)
    d = (d + size / 2) % size - size / 2
    return d.mean(axis=0)


def test_synth_root_layout_and_decoding(synth_root):
    classes = read_classes(os.path.join(synth_root, "classes.txt"))
    assert classes == [n for n, _ in SYNTH_CLASSES[:4]]
    train = read_list(os.path.join(synth_root, "train.txt"), num_classes=4)
    val = read_list(os.path.join(synth_root, "val.txt"), num_classes=4)
    assert len(train) == 24 and len(val) == 8 and not {i.path for i in train} & {i.path for i in val}
    assert sorted({it.label for it in train}) == [0, 1, 2, 3]
    for it in train[::5] + val[:1]:
        assert it.path.startswith(f"videos/{classes[it.label]}/") and it.path.endswith(".mp4")
        frames, fps = _decode(os.path.join(synth_root, it.path))
        assert frames.shape == (32, 40, 40, 3) and frames.dtype == np.uint8 and fps == pytest.approx(12)


def test_decoded_matches_rendered(synth_root):
    """The mp4 holds what was rendered (codec loss ~ sensor-noise level)."""
    frames, _ = _decode(os.path.join(synth_root, "videos/move_down/3.mp4"))
    rendered, _ = render_clip("move_down", np.random.default_rng([0, 2, 3]), 32, 40)
    assert np.abs(frames.astype(int) - rendered).mean() < 8


def test_codec_is_usable():
    assert video_codec() in ("libx264", "h264", "mpeg4")


def test_deterministic_for_seed(tmp_path):
    kw = dict(num_classes=2, per_class=1, num_frames=8, size=32, val_per_class=0)
    make_synthetic_dataset(str(tmp_path / "a"), seed=5, **kw)
    make_synthetic_dataset(str(tmp_path / "b"), seed=5, **kw)
    make_synthetic_dataset(str(tmp_path / "c"), seed=6, **kw)
    for rel in ("videos/move_up/0.mp4", "videos/square/0.mp4"):
        a, b, c = (_decode(str(tmp_path / d / rel))[0] for d in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c)
    f1, m1 = render_clip("ring", np.random.default_rng(1), 8, 32)
    f2, m2 = render_clip("ring", np.random.default_rng(1), 8, 32)
    assert np.array_equal(f1, f2) and np.array_equal(m1, m2)


@pytest.mark.parametrize(
    "name,sign", [("move_right", (1, 0)), ("move_left", (-1, 0)), ("move_down", (0, 1)), ("move_up", (0, -1))]
)
def test_translation_moves_in_decoded_video(tmp_path, write_mp4, name, sign):
    """End to end: the object's centroid in the DECODED mp4 shifts the right way."""
    size, n = 64, 48
    frames, mask = render_clip(name, np.random.default_rng(7), n, size)
    path = str(tmp_path / f"{name}.mp4")
    write_mp4(path, frames, 12)
    decoded = _decode(path)[0].astype(np.float32)
    # Background is static and the object covers any pixel < half the time -> median = background.
    diff = np.abs(decoded - np.median(decoded, axis=0)).sum(-1)
    weights = np.where(diff > 60, diff, 0)
    cents = np.array([_circ_centroid(w) for w in weights])
    step = _mean_step(cents, size)
    true_step = _mean_step(np.array([_circ_centroid(m) for m in mask]), size)
    assert np.allclose(step, true_step, atol=0.15)
    along, across = step @ np.array(sign), abs(step @ np.array(sign[::-1]))
    assert along > 0.9 and across < 0.15  # >= 0.015 * 64 px per frame, ~0 sideways
    # Visible in a 16-frame window at stride 2: at least a third of the frame.
    assert along * 32 > size / 3


def test_other_motion_classes_by_mask():
    rng = np.random.default_rng(3)
    area = {n: render_clip(n, rng, 48, 64)[1].sum(axis=(1, 2)) for n in ("grow", "shrink", "blink")}
    assert area["grow"][-1] > 3 * area["grow"][0] and np.all(np.diff(area["grow"]) >= -1)
    assert area["shrink"][0] > 3 * area["shrink"][-1] and np.all(np.diff(area["shrink"]) <= 1)
    visible = area["blink"] > 1
    assert 0.3 < visible.mean() < 0.7 and np.count_nonzero(np.diff(visible)) >= 8
    for stride in (2, 3, 4, 8):  # blinking stays visible when subsampled
        assert len(set(visible[::stride][:16].tolist())) == 2
    _, mask = render_clip("orbit_cw", rng, 48, 64)
    cents = np.array([_circ_centroid(m) for m in mask])
    d = np.diff(cents, axis=0)
    d = (d + 32) % 64 - 32
    assert np.linalg.norm(d, axis=1).mean() > 1.0  # moves ...
    rel = cents[:-1] - cents.mean(0)
    assert (rel[:, 0] * d[:, 1] - rel[:, 1] * d[:, 0]).mean() > 0  # ... clockwise on screen (y down)


def _fill_ratio(mask2d: np.ndarray) -> float:
    """Object area / bounding-box area, for a mask that does not wrap (centred render)."""
    ys, xs = np.nonzero(mask2d > 0.5)
    return (mask2d > 0.5).sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))


def _centred_first_mask(name, seed):
    _, mask = render_clip(name, np.random.default_rng(seed), 8, 64)
    # Shift the object to the centre so the bounding box is not split by the wrap.
    x, y = _circ_centroid(mask[0])
    return np.roll(np.roll(mask, 32 - int(round(y)), axis=1), 32 - int(round(x)), axis=2)


def test_appearance_classes_differ_only_in_appearance():
    fill = {}
    for name in ("square", "ring", "stripes", "checker", "cross", "triangle", "diamond", "frame"):
        masks = _centred_first_mask(name, 11)
        fill[name] = _fill_ratio(masks[0])
        cents = np.array([_circ_centroid(m) for m in masks])
        drift = (cents - cents[0] + 32) % 64 - 32
        assert np.abs(drift).max() < 2.1  # only +-1 px jitter, no motion
    assert fill["square"] > 0.9 and fill["ring"] < 0.7 and fill["frame"] < 0.85
    assert 0.35 < fill["stripes"] < 0.7 and 0.35 < fill["checker"] < 0.7
    assert 0.4 < fill["triangle"] < 0.65 and 0.4 < fill["diamond"] < 0.65 and 0.4 < fill["cross"] < 0.7
    stripes = _centred_first_mask("stripes", 11)[0] > 0.5
    ys, xs = np.nonzero(stripes)
    box = stripes[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.mean(1).std() > 0.3 and box.mean(0).std() < 0.15  # horizontal stripes


def test_motion_classes_share_appearance():
    """A single frame of any translation class is the same kind of disc."""
    for name in ("move_right", "move_left", "move_up", "move_down", "orbit_cw"):
        for seed in (1, 2):
            ratio = _fill_ratio(_centred_first_mask(name, seed)[0])
            assert abs(ratio - np.pi / 4) < 0.08, (name, ratio)


def test_families_and_limits(tmp_path):
    fams = class_families(16)
    assert fams.count("motion") == 8 and fams.count("appearance") == 8
    assert set(class_families(2)) == {"motion", "appearance"}
    with pytest.raises(ValueError, match="1..16"):
        make_synthetic_dataset(str(tmp_path), num_classes=17)
    with pytest.raises(ValueError, match="decord"):
        make_synthetic_dataset(str(tmp_path), size=48)


def test_write_video_validation_and_roundtrip(tmp_path, write_mp4):
    frames = np.zeros((5, 32, 40, 3), np.uint8)
    frames[:, 8:24, 10:30] = (200, 40, 90)
    write_mp4(str(tmp_path / "deep" / "x.mp4"), frames, 10)
    got, fps = _decode(str(tmp_path / "deep" / "x.mp4"))
    assert got.shape == frames.shape and fps == pytest.approx(10)
    assert np.abs(got.astype(int) - frames).mean() < 4
    for bad in (
        frames.astype(np.float32),
        frames[..., :2],
        np.zeros((2, 31, 40, 3), np.uint8),
        np.zeros((2, 32, min(DECORD_BAD_WIDTHS), 3), np.uint8),
    ):
        with pytest.raises(ValueError):
            write_video(str(tmp_path / "bad.mp4"), bad, 10)


def test_object_size_sets_the_shape_scale(tmp_path):
    """Few-label comparisons use larger objects (compare_algorithms.py --object-size): the rendered area grows
    with the range, the default stays the demo's, and an impossible range is refused."""

    def area(size):
        return np.mean(
            [render_clip("square", np.random.default_rng([0, 1, i]), 4, 64, size)[1][0].sum() for i in range(8)]
        )

    small, large = area((0.11, 0.16)), area((0.20, 0.26))
    assert 2.0 < large / small < 4.5  # half-size about 1.7x -> area about 3x
    default = render_clip("square", np.random.default_rng([0, 1, 0]), 4, 64)[1]
    assert np.array_equal(default, render_clip("square", np.random.default_rng([0, 1, 0]), 4, 64, (0.11, 0.16))[1])
    with pytest.raises(ValueError, match="object_size"):
        make_synthetic_dataset(str(tmp_path / "bad"), num_classes=2, per_class=1, object_size=(0.3, 0.2))
    s = make_synthetic_dataset(
        str(tmp_path / "big"), num_classes=2, per_class=1, val_per_class=0, object_size=(0.2, 0.26)
    )
    assert s["object_size"] == [0.2, 0.26] and s["train"] == 2
