"""Decoding real mp4s with decord: frame order, resize, bytes input, bad files -> BadVideo(reason)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from cmpl_ray.data import video_reader as decode
from cmpl_ray.data.video_reader import BadVideo, probe, read_frames, target_size

N_FRAMES, H, W, FPS = 40, 64, 96, 20
LEVEL0, STEP = 8, 6  # frame t is a flat grey of LEVEL0 + STEP * t: the brightness encodes the index


def _encode(path, frames: np.ndarray, fps: int) -> str:
    """Write (T, H, W, 3) uint8 with PyAV; first codec that works: libx264, h264, mpeg4."""
    import av

    last = None
    for codec in ("libx264", "h264", "mpeg4"):
        try:
            with av.open(str(path), "w") as c:
                s = c.add_stream(codec, rate=fps)
                s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
                s.options = {"crf": "4", "g": "10", "bf": "0"} if codec != "mpeg4" else {"qscale": "2", "g": "10"}
                for f in frames:
                    c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                c.mux(s.encode())
            return codec
        except Exception as exc:  # noqa: BLE001 - codec missing from this PyAV build
            last = exc
    raise RuntimeError(f"no usable encoder: {last}")


def _coded_frames(n=N_FRAMES, h=H, w=W) -> np.ndarray:
    levels = LEVEL0 + STEP * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).astype(np.uint8)


def _frame_ids(frames: np.ndarray) -> np.ndarray:
    return np.rint((frames.reshape(len(frames), -1).mean(1) - LEVEL0) / STEP).astype(int)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dec") / "coded.mp4"
    _encode(path, _coded_frames(), FPS)
    return str(path)


def test_probe(video):
    n, fps, h, w = probe(video)
    assert (n, h, w) == (N_FRAMES, H, W) and fps == pytest.approx(FPS)


def test_read_frames_order_repeats_and_dtype(video):
    idx = np.array([30, 2, 2, 17, 39, 0, 30])  # unsorted, repeated (overlapping windows)
    out = read_frames(video, idx)
    assert out.shape == (7, H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(_frame_ids(out), idx)


def test_primary_and_aux_windows_in_one_call(video):
    p, a = np.arange(4, 36, 8), np.arange(6, 38, 4)  # 4 + 8 frames, overlapping
    out = read_frames(video, np.concatenate([p, a]))
    np.testing.assert_array_equal(_frame_ids(out[:4]), p)
    np.testing.assert_array_equal(_frame_ids(out[4:]), a)


def test_indices_past_the_end_are_clamped(video):
    out = read_frames(video, np.array([38, 39, 40, 55]))
    np.testing.assert_array_equal(_frame_ids(out), [38, 39, 39, 39])


def test_short_side_resize_keeps_aspect(video):
    out = read_frames(video, np.array([0, 5]), short_side=40)
    assert out.shape == (2, 40, 60, 3)
    np.testing.assert_array_equal(_frame_ids(out), [0, 5])
    # 32 -> width 48, which decord 0.6 cannot output: widened by one pixel
    assert read_frames(video, np.array([1]), short_side=32).shape == (1, 32, 49, 3)
    assert read_frames(video, np.array([1]), short_side=32, src_hw=(H, W)).shape == (1, 32, 49, 3)


def test_target_size():
    assert target_size(256, 340, 128) == (128, 170)
    assert target_size(340, 256, 128) == (170, 128)
    assert target_size(256, 340, 256) == (-1, -1)
    assert target_size(256, 340, None) == (-1, -1)


def test_bytes_input_matches_path(video):
    data = open(video, "rb").read()
    idx = np.array([3, 9, 27])
    np.testing.assert_array_equal(read_frames(data, idx, short_side=40), read_frames(video, idx, short_side=40))
    assert probe(data)[0] == N_FRAMES


def test_portrait_video(tmp_path):
    path = tmp_path / "portrait.mp4"
    _encode(path, _coded_frames(12, 96, 64), FPS)
    out = read_frames(str(path), np.arange(12), short_side=32)
    assert out.shape == (12, 48, 32, 3)
    np.testing.assert_array_equal(_frame_ids(out), np.arange(12))


@pytest.fixture
def no_decord(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decord must not be called")

    monkeypatch.setattr(decode.decord, "VideoReader", boom)


def test_missing_and_empty_never_reach_decord(tmp_path, no_decord):
    with pytest.raises(BadVideo) as e:
        read_frames(str(tmp_path / "nope.mp4"), np.arange(3))
    assert e.value.reason == "missing"
    (tmp_path / "empty.mp4").write_bytes(b"")
    for src in (str(tmp_path / "empty.mp4"), b""):
        with pytest.raises(BadVideo) as e:
            read_frames(src, np.arange(3))
        assert e.value.reason == "empty"
    with pytest.raises(BadVideo) as e:
        probe(str(tmp_path / "nope.mp4"))
    assert e.value.reason == "missing"


@pytest.mark.parametrize("short_side", [None, 32])
def test_garbage_and_truncated_are_undecodable(tmp_path, video, short_side):
    data = open(video, "rb").read()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 2])
    for src in (str(garbage), str(trunc), data[: len(data) // 3]):
        with pytest.raises(BadVideo) as e:
            read_frames(src, np.arange(4), short_side=short_side)
        assert e.value.reason == "undecodable"


def test_hanging_decode_times_out(video, monkeypatch):
    monkeypatch.setattr(decode, "_decode_unique", lambda *a, **k: time.sleep(5))
    t0 = time.perf_counter()
    with pytest.raises(BadVideo) as e:
        read_frames(video, np.arange(3), timeout_s=0.2)
    assert e.value.reason == "timeout" and time.perf_counter() - t0 < 2.0


class _OverReportingReader:
    """Claims 40 frames but fails on the last 3, like a container with a wrong frame count."""

    def __init__(self, n=40, readable=37):
        self.n, self.readable = n, readable

    def __len__(self):
        return self.n

    def get_batch(self, idx):
        idx = np.asarray(idx)
        if idx.max() >= self.readable:
            raise RuntimeError("Error seeking/reading frame")
        return np.broadcast_to(idx[:, None, None, None], (len(idx), 2, 2, 3)).astype(np.uint8)


def test_tail_failure_is_retried_with_fewer_frames(video, monkeypatch):
    monkeypatch.setattr(decode, "_open", lambda *a, **k: _OverReportingReader())
    out = read_frames(video, np.array([10, 36, 38, 39]))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [10, 36, 36, 36])


def test_middle_failure_is_not_retried(video, monkeypatch):
    calls = []

    class Broken(_OverReportingReader):
        def get_batch(self, idx):
            calls.append(1)
            raise RuntimeError("corrupt packet")

    monkeypatch.setattr(decode, "_open", lambda *a, **k: Broken())
    with pytest.raises(BadVideo) as e:
        read_frames(video, np.array([1, 2]))
    assert e.value.reason == "undecodable" and len(calls) == 1


def test_bad_indices_and_bad_video_api(video):
    for bad in (np.array([]), np.array([[1, 2]]), np.array([-1, 2]), np.array([1.5])):
        with pytest.raises(ValueError):
            read_frames(video, bad)
    err = pickle.loads(pickle.dumps(BadVideo("timeout", "x")))
    assert err.reason == "timeout" and err.detail == "x" and "timeout" in str(err)
    with pytest.raises(ValueError):
        BadVideo("weird")


def test_read_sampled_chooses_from_the_open_reader(video):
    from cmpl_ray.data.video_reader import read_sampled

    seen = {}

    def choose(n, fps):
        seen.update(n=n, fps=fps)
        return np.array([n - 1, 0, 5, 5])

    frames, n, fps = read_sampled(video, choose, short_side=None)
    assert (n, round(fps)) == (seen["n"], round(seen["fps"])) and n == probe(video)[0]
    assert frames.shape[0] == 4 and frames.dtype == np.uint8
    assert _frame_ids(frames).tolist() == [n - 1, 0, 5, 5]
    with pytest.raises(BadVideo):
        read_sampled(str(video) + ".missing", choose)
