"""Index arithmetic of CMPL clips: strides, aux offset and clamping, looping, eval windows."""

from __future__ import annotations

import numpy as np
import pytest

from cmpl_ray.data.sampling import clip_indices, eval_clip_starts, max_start, sample_train_indices


def test_clip_indices_strided_window():
    idx = clip_indices(300, 10, 64, 8)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, np.arange(10, 74, 8))  # 8 frames: 10, 18, ..., 66
    assert len(clip_indices(300, 0, 64, 4)) == 16


def test_clip_indices_loops_short_video():
    np.testing.assert_array_equal(clip_indices(10, 0, 16, 4), [0, 4, 8, 2])
    np.testing.assert_array_equal(clip_indices(1, 0, 64, 8), np.zeros(8))


@pytest.mark.parametrize("kw", [dict(stride=3), dict(stride=0), dict(num_frames=0), dict(start=-1)])
def test_clip_indices_rejects_bad_arguments(kw):
    args = dict(num_frames=100, start=0, raw_len=64, stride=8) | kw
    with pytest.raises(ValueError):
        clip_indices(**args)


def test_train_indices_shapes_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, a = sample_train_indices(300, 30.0, 64, 8, 4, 2.0, rng)
        assert p.shape == (8,) and a.shape == (16,)
        assert np.all(np.diff(p) == 8) and np.all(np.diff(a) == 4)
        assert 0 <= p[0] <= 236 and 0 <= a[0] <= 236
        assert abs(int(a[0]) - int(p[0])) <= 60  # round(2.0 s * 30 fps)
        assert p[-1] < 300 and a[-1] < 300


def test_train_primary_start_covers_all_valid_starts():
    rng = np.random.default_rng(1)
    starts = {int(sample_train_indices(70, 30.0, 64, 8, 4, 0.0, rng)[0][0]) for _ in range(400)}
    assert starts == set(range(0, 7))  # max_start = 70 - 64 = 6


def test_train_offset_zero_gives_same_window():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p, a = sample_train_indices(500, 25.0, 64, 8, 4, 0.0, rng)
        assert p[0] == a[0]


def test_train_offset_is_clamped_into_the_video():
    rng = np.random.default_rng(3)
    hi = max_start(100, 64)
    a_starts = [int(sample_train_indices(100, 30.0, 64, 8, 4, 10.0, rng)[1][0]) for _ in range(300)]
    assert min(a_starts) == 0 and max(a_starts) == hi  # +-300 frames offset piles up at both clamps


def test_train_offset_spread_uses_both_signs():
    rng = np.random.default_rng(4)
    d = [int(a[0]) - int(p[0]) for p, a in (sample_train_indices(10_000, 10.0, 64, 8, 4, 1.0, rng) for _ in range(300))]
    assert min(d) < 0 < max(d) and max(abs(x) for x in d) <= 10


def test_train_short_video_loops_both_networks():
    p, a = sample_train_indices(20, 30.0, 64, 8, 4, 5.0, np.random.default_rng(0))
    np.testing.assert_array_equal(p, np.arange(0, 64, 8) % 20)
    np.testing.assert_array_equal(a, np.arange(0, 64, 4) % 20)


def test_train_is_reproducible_from_seed():
    a = sample_train_indices(300, 30.0, 64, 8, 4, 2.0, np.random.default_rng(7))
    b = sample_train_indices(300, 30.0, 64, 8, 4, 2.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_train_bad_fps_means_no_offset():
    p, a = sample_train_indices(300, float("nan"), 64, 8, 4, 3.0, np.random.default_rng(0))
    assert p[0] == a[0]


def test_eval_starts_uniform_over_video():
    starts = eval_clip_starts(300, 64, 10)
    assert len(starts) == 10 and starts == sorted(starts)
    assert starts[0] >= 0 and starts[-1] <= 236
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1  # equal segments (integer rounding)
    # centred: the unused margin at both ends is about half a segment
    seg = 237 / 10
    assert abs(starts[0] - seg / 2) <= 1 and abs((236 - starts[-1]) - seg / 2) <= 1.5


def test_eval_single_clip_is_centred_and_short_videos_start_at_zero():
    assert eval_clip_starts(164, 64, 1) == [50]
    assert eval_clip_starts(30, 64, 10) == [0] * 10
    assert eval_clip_starts(64, 64, 3) == [0, 0, 0]


def test_eval_rejects_zero_clips():
    with pytest.raises(ValueError):
        eval_clip_starts(100, 64, 0)
