"""AV1 and the PyAV fallback: decord 0.6 cannot decode AV1, so such files are read with PyAV, with the same
frame count, fps, indices, resize and uint8 layout; the decoder columns say which backend read each video."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

from cmpl_ray.data import video_reader as decode
from cmpl_ray.data.video_reader import DECODER_NAMES, DECORD, PYAV, BadVideo, probe, read_frames, read_sampled

N, H, W, FPS = 40, 64, 96, 20
LEVEL0, STEP = 8, 6  # frame t is a flat grey of LEVEL0 + STEP * t: the brightness encodes the index


def _write(path, frames: np.ndarray, fps: int, codec: str, options: dict, rotation: int = 0) -> str:
    """(T, H, W, 3) uint8 RGB -> a yuv420p file written by PyAV with ``codec``."""
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs its whole configuration at level 3 (default)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt, s.options = frames.shape[2], frames.shape[1], "yuv420p", options
        if rotation:
            s.set_display_rotation(rotation)
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return str(path)


def write_av1(path, frames, fps=FPS) -> str:
    return _write(path, frames, fps, "libsvtav1", {"preset": "12", "crf": "10", "g": "8"})  # keyframes 0, 8, ...


def write_h264(path, frames, fps=FPS, rotation=0) -> str:
    # small GOP and B-frames: the PyAV reader's seek and pts ordering are exercised
    return _write(path, frames, fps, "libx264", {"crf": "4", "g": "8", "bf": "2"}, rotation)


def _coded(n=N, h=H, w=W) -> np.ndarray:
    levels = LEVEL0 + STEP * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).astype(np.uint8)


def _textured(n=24, h=H, w=W) -> np.ndarray:
    """Moving 8x8 blocks plus noise: any resize or colour-conversion difference shows in the pixels."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
    clip = np.stack([np.roll(base, 3 * t, axis=1) for t in range(n)]) + rng.integers(-20, 20, (n, h, w, 3))
    return np.clip(clip, 0, 255).astype(np.uint8)


def _ids(frames: np.ndarray) -> np.ndarray:
    return np.rint((frames.reshape(len(frames), -1).mean(1) - LEVEL0) / STEP).astype(int)


@pytest.fixture(scope="module")
def av1(tmp_path_factory) -> str:
    return write_av1(tmp_path_factory.mktemp("av1") / "coded_av1.mp4", _coded())


@pytest.fixture(scope="module")
def h264(tmp_path_factory) -> str:
    return write_h264(tmp_path_factory.mktemp("h264") / "textured.mp4", _textured())


def _decoded_by_pyav(path) -> list[np.ndarray]:
    import av

    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_decord_cannot_open_av1(av1):
    with pytest.raises(Exception):  # noqa: B017 - decord raises its own DECORDError, whatever it reports
        decode._open(av1, -1, -1, 1)  # the reason this fallback exists
    assert len(_decoded_by_pyav(av1)) == N  # the file itself is fine


def test_av1_read_frames_and_probe(av1):
    idx = np.array([30, 2, 2, 17, 39, 0, 30, 45])  # unsorted, repeated, one past the end (clamped)
    out = read_frames(av1, idx)
    assert out.shape == (8, H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(_ids(out), np.minimum(idx, N - 1))
    np.testing.assert_array_equal(_ids(read_frames(av1, np.array([21, 13, 30]))), [21, 13, 30])  # seek to 8
    small = read_frames(av1, np.array([5, 1]), short_side=40)
    assert small.shape == (2, 40, 60, 3)
    np.testing.assert_array_equal(_ids(small), [5, 1])
    assert probe(av1) == (N, pytest.approx(FPS), H, W)
    assert probe(open(av1, "rb").read())[0] == N


def test_av1_read_sampled_says_pyav(av1, h264):
    seen = {}

    def choose(n, fps):
        seen.update(n=n, fps=fps)
        return np.array([n - 1, 0, 5, 5])

    res = read_sampled(av1, choose, short_side=32)
    frames, n, fps = res  # still unpacks as a 3-tuple
    assert (n, fps) == (seen["n"], seen["fps"]) == (N, pytest.approx(FPS))
    assert frames.shape == (4, 32, 49, 3)  # 32 x 48 would be a decord-unreadable width: same target as decord
    assert _ids(frames).tolist() == [N - 1, 0, 5, 5]
    assert res.decoder == PYAV and DECODER_NAMES[res.decoder] == "pyav"
    assert read_sampled(h264, choose).decoder == DECORD and DECODER_NAMES[DECORD] == "decord"


@pytest.mark.parametrize("short_side", [None, 40, 32, 112])
def test_pyav_reader_is_pixel_identical_to_decord(h264, short_side):
    """The same file through decord and through the PyAV reader: identical indices and pixels (max diff 0:
    the PyAV reader resizes with decord's filter, ``scale=W:H`` with bilinear flags, then rgb24)."""
    hw = decode.target_size(H, W, short_side)
    choose = lambda n, fps: np.array([23, 0, 7, 7, 15, 22, 30, 3])  # noqa: E731
    ref = read_sampled(h264, choose, short_side=short_side)
    assert ref.decoder == DECORD
    reader = decode._open_pyav(h264, hw[1], hw[0], 1)
    assert (len(reader), reader.get_avg_fps()) == (ref[1], ref[2])
    got, decoded = reader.read(np.array([0, 3, 7, 15, 22, 23]))
    assert decoded.tolist() == [0, 3, 7, 15, 22, 23]
    want = read_frames(h264, decoded, short_side=short_side)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() == 0


def _pyav(path, indices, **attrs):
    reader = decode._open_pyav(path, -1, -1, 1)
    for k, v in attrs.items():
        setattr(reader, k, v(reader) if callable(v) else v)
    return reader.read(np.asarray(indices))


def test_pyav_reader_seek_order_and_tail(h264):
    """The reader's three ways in: a seek to a middle keyframe (GOP 8), decode order when pts are missing, and
    an over-reported count (decord's tail retry: clamped to the first n - 1 - s that was decoded)."""
    ref = read_frames(h264, np.arange(24))
    idx = [13, 14, 21, 23]  # first keyframe at or before 13: 8
    for how in ({}, {"_pts": None, "_index": {}, "_keys": []}):
        got, decoded = _pyav(h264, idx, **how)
        assert decoded.tolist() == idx and np.abs(got.astype(int) - ref[idx]).max() == 0
    got, decoded = _pyav(h264, [5, 26], n=lambda r: r.n + 3)  # claims 27 frames, 24 are there
    assert decoded.tolist() == [5, 23] and np.abs(got.astype(int) - ref[[5, 23]]).max() == 0
    got, decoded = _pyav(h264, [5, 26], n=lambda r: r.n + 6)  # 30 claimed: s = 8 -> clamped to frame 21
    assert decoded.tolist() == [5, 21] and np.abs(got.astype(int) - ref[[5, 21]]).max() == 0
    with pytest.raises(BadVideo, match="not decoded"):
        _pyav(h264, [2, 60], n=lambda r: r.n + 40)  # far past the end: not a tail problem


def test_forced_fallback_gives_decords_sampling(h264, monkeypatch):
    """read_sampled through the fallback: choose() sees the same (n, fps), the frames are decord's."""
    calls = []

    def choose(n, fps):
        calls.append((n, fps))
        return np.array([n + 3, 1, 1, 12, 0])  # past the end: clamped like decord

    ref, ref_probe = read_sampled(h264, choose, short_side=40), probe(h264)

    def no_decord(*a, **k):
        raise BadVideo("undecodable", "DECORDError: pretend the codec is missing")

    monkeypatch.setattr(decode, "_open", no_decord)
    got = read_sampled(h264, choose, short_side=40)
    assert got.decoder == PYAV and calls[0] == calls[1]
    np.testing.assert_array_equal(got[0], ref[0])
    assert probe(h264) == ref_probe


def test_rotated_video_matches_decord(tmp_path):
    path = write_h264(tmp_path / "rot.mp4", _textured(6), rotation=90)
    ref = read_frames(path, np.arange(6))
    assert ref.shape == (6, W, H, 3)  # decord applies the display rotation
    got, _ = decode._open_pyav(path, -1, -1, 1).read(np.arange(6))
    assert np.abs(got.astype(int) - ref).max() == 0


@pytest.mark.parametrize("short_side", [None, 32])
def test_garbage_stays_undecodable_with_both_reasons(tmp_path, short_side):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BadVideo) as e:
        read_frames(str(garbage), np.arange(4), short_side=short_side)
    assert e.value.reason == "undecodable"
    if short_side is None:  # decord was tried first, then PyAV: the detail names both failures
        assert "decord" in e.value.detail and "pyav" in e.value.detail


def test_truncated_av1_is_undecodable(tmp_path, av1):
    data = open(av1, "rb").read()
    for src in (data[: len(data) // 2], data[:100]):
        with pytest.raises(BadVideo) as e:
            read_frames(src, np.arange(4))
        assert e.value.reason == "undecodable"


def test_empty_stream_does_not_fall_back(h264, monkeypatch):
    """decord's "no frames" is a fact about the file, not a missing codec: no second decoder."""

    def empty(*a, **k):
        raise BadVideo("empty", "no frames")

    monkeypatch.setattr(decode, "_open", empty)
    monkeypatch.setattr(decode, "_open_pyav", lambda *a, **k: pytest.fail("PyAV must not be tried"))
    with pytest.raises(BadVideo) as e:
        read_frames(h264, np.arange(3))
    assert e.value.reason == "empty"


def test_fallback_shares_the_timeout(h264, monkeypatch):
    """decord's failure plus a hanging PyAV read cost one timeout, not two."""

    def slow_failure(*a, **k):
        time.sleep(0.3)
        raise BadVideo("undecodable", "DECORDError: pretend the codec is missing")

    monkeypatch.setattr(decode, "_open", slow_failure)
    monkeypatch.setattr(decode, "_open_pyav", lambda *a, **k: time.sleep(5))
    t0 = time.perf_counter()
    with pytest.raises(BadVideo) as e:
        read_frames(h264, np.arange(3), timeout_s=0.5)
    assert e.value.reason == "timeout" and time.perf_counter() - t0 < 1.5


def test_clip_decoder_says_which_backend_read_each_video(tmp_path, av1):
    from cmpl_ray.config import load_config
    from cmpl_ray.data.clip_decoder import ClipDecoder

    sets = [
        "data.crop_size=32",
        "data.train_short_side=[32, 40]",
        "data.test_short_side=32",
        "data.raw_clip_len=16",
        "data.primary_stride=4",
        "data.aux_stride=2",
        "data.eval_clips=2",
        "data.eval_crops=1",
    ]
    dc = dataclasses.asdict(load_config("demo", overrides=sets).data)
    h = write_h264(tmp_path / "h.mp4", _coded())
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(3000))
    videos = [(h, 0), (av1, 1), (str(garbage), 2), (str(tmp_path / "missing.mp4"), 3)]
    dec = ClipDecoder("train", dc, 4, True, 0, videos[:2], videos, ratio=2)
    out = dec({"data": np.array([[0, 0, 1], [1, 2, 3]])})
    assert out["l_dec"].dtype == np.int64 and out["l_dec"].shape == (2,)
    assert out["l_dec"].tolist() == [DECORD, PYAV] and out["l_err"].tolist() == [0, 0] and out["l_valid"].all()
    assert out["u_dec"].dtype == np.int64 and out["u_dec"].shape == (2, 2)
    assert out["u_dec"].tolist() == [[DECORD, PYAV], [-1, -1]]
    assert out["u_err"].tolist() == [[0, 0], [3, 1]] and out["u_valid"].tolist() == [[True, True], [False, False]]
    assert out["l_p"].any(axis=(1, 2, 3, 4)).all()  # the AV1 clip has pixels, not a zero placeholder
    val = ClipDecoder("val", dc, 4, True, 0)
    v = val.decode_val([(h, 0), (av1, 1), (str(garbage), 2), ("", 0)])
    assert v["dec"].dtype == np.int64 and v["dec"].tolist() == [DECORD, PYAV, -1, -1]
    assert v["err"].tolist() == [0, 0, 3, 98] and v["valid"].tolist() == [True, True, False, False]
    b = val({"path": np.array([h, av1, ""]), "label": np.array([0, 1, 0]), "index": np.array([0, 1, 2])})
    assert b["dec"].tolist() == [DECORD, PYAV, -1]
