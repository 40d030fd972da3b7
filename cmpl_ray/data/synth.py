"""Synthetic action dataset written as real mp4 files.

Why: the trainer, the Ray Data decode path and the CMPL logic all need videos that
behave like the real thing (an mp4 container that decord opens and seeks) but
that a laptop CPU can make in seconds and a tiny 3D CNN can learn in minutes.

The classes mirror the CMPL paper's motivation (Fig. 1, Sec. 4.4): the small
auxiliary network is better on classes defined by *temporal dynamics*, the large
backbone on classes defined by *spatial semantics*.  So there are two families:

* **motion** classes: one soft-edged disc ("blob") whose colour, size and start
  position come from the SAME distribution for every motion class; only the way
  it moves differs (move right/left/up/down, grow, shrink, blink, orbit
  clockwise).  A single frame cannot tell them apart.
* **appearance** classes: a static object that only jitters by about one pixel
  per frame; its shape/texture defines the class (square, ring, stripes,
  checker, cross, triangle, diamond, frame).  Motion carries no information.

Templates are interleaved (motion, appearance, motion, ...) so any prefix of
``num_classes`` holds both families.  There are 16 templates; asking for more
raises ``ValueError`` rather than inventing combined classes whose identity would
overlap the pure ones (e.g. "ring moving right" vs "move_right").

Every video randomises background (gradient + low-frequency cosines), object
colour (contrast-constrained against the background), size, start position and
phase, and adds per-frame sensor noise, so clips are not memorisable
while the object stays clearly visible.  Translations advance ~1.5 % of the
frame per frame and wrap around the borders, so a 16-frame window at stride 2..4
sees the object travel a third of the frame or more.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from cmpl_ray.data.lists import VideoItem, write_classes, write_list

# (name, family), interleaved so every prefix mixes motion and appearance classes. The horizontal-flip pair
# move_right / move_left comes last: the standard augmentation flips clips (as on real datasets), which would
# turn one into the other, so sets of up to 14 classes stay flip-invariant.
SYNTH_CLASSES: tuple[tuple[str, str], ...] = (
    ("move_up", "motion"),
    ("square", "appearance"),
    ("move_down", "motion"),
    ("ring", "appearance"),
    ("grow", "motion"),
    ("stripes", "appearance"),
    ("shrink", "motion"),
    ("checker", "appearance"),
    ("blink", "motion"),
    ("cross", "appearance"),
    ("orbit_cw", "motion"),
    ("triangle", "appearance"),
    ("move_right", "motion"),
    ("diamond", "appearance"),
    ("move_left", "motion"),
    ("frame", "appearance"),
)
_NAMES = [n for n, _ in SYNTH_CLASSES]
# Codecs tried in order: H.264 is what real datasets use and what decord is tuned
# for; MPEG-4 part 2 is the fallback every FFmpeg build has.
_CODEC_CANDIDATES = ("libx264", "h264", "mpeg4")
# decord 0.6.0 cannot read frames of these widths (get_batch fails with "DECORDArrayCopyFromTo:
# The size must exactly match", whatever the codec); measured for all even widths 16..4096.
DECORD_BAD_WIDTHS = frozenset({16, 24, 48, 72})


def _codec_options(codec: str, fps: int) -> dict[str, str]:
    """Encoder options: high quality, short GOP (decord seeks to keyframes, so a
    1 s GOP keeps random clip access cheap), no B-frames (decode order equals
    display order; avoids frame-count surprises), one thread (deterministic and
    the videos are tiny)."""
    gop = str(max(1, int(fps)))
    if codec == "mpeg4":
        return {"qscale": "3", "g": gop, "bf": "0", "threads": "1"}
    return {"crf": "18", "preset": "veryfast", "g": gop, "bf": "0", "threads": "1"}


def _encode(path: str, frames: np.ndarray, fps: int, codec: str) -> None:
    import av

    t, h, w, _ = frames.shape
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = _codec_options(codec, fps)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@functools.lru_cache(maxsize=1)
def video_codec() -> str:
    """The first codec that this PyAV build can encode AND decord decodes back
    with the right frame count and size; checked once per process (~50 ms)."""
    import tempfile

    import av
    import decord

    probe = np.zeros((6, 32, 32, 3), np.uint8)
    probe[:, 8:24, 8:24] = 200
    errors = []
    for codec in _CODEC_CANDIDATES:
        try:
            av.codec.Codec(codec, "w")
        except Exception as exc:  # codec not compiled into this FFmpeg
            errors.append(f"{codec}: {exc}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.mp4")
            try:
                _encode(path, probe, 12, codec)
                vr = decord.VideoReader(path)
                if len(vr) == len(probe) and vr[0].shape == probe.shape[1:]:
                    return codec
                errors.append(f"{codec}: decord read {len(vr)} frames of {vr[0].shape}")
            except Exception as exc:
                errors.append(f"{codec}: {exc}")
    raise RuntimeError("no usable mp4 codec in PyAV/decord: " + "; ".join(errors))


def write_video(path: str, frames: np.ndarray, fps: int) -> None:
    """Write ``frames`` (T,H,W,3) uint8 RGB to an mp4 at ``path`` that decord can read.

    H and W must be even (yuv420p chroma subsampling); parent dirs are created."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2 or h < 2 or w < 2:
        raise ValueError(f"need >=1 frame and even H, W (yuv420p); got T={t} H={h} W={w}")
    if w in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"width {w} is unreadable by decord 0.6 (bad widths: {sorted(DECORD_BAD_WIDTHS)}); "
            "pick another width, e.g. 32, 40, 56 or 64"
        )
    if int(fps) <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _encode(path, np.ascontiguousarray(frames), int(fps), video_codec())


# ----------------------------------------------------------------------------- rendering
def _wrap(v: np.ndarray, period: float) -> np.ndarray:
    """Signed offset in [-period/2, period/2): toroidal geometry, so objects wrap."""
    return (v + period / 2) % period - period / 2


def shape_sd(name: str, dx: np.ndarray, dy: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Approximate signed distance (px, >0 inside) of shape ``name`` with half-size s."""
    adx, ady = np.abs(dx), np.abs(dy)
    r, cheb = np.hypot(dx, dy), np.maximum(adx, ady)
    if name == "blob":
        return s - r
    if name == "square":
        return s - cheb
    if name == "ring":
        return np.minimum(s - r, r - 0.5 * s)
    if name == "frame":
        return np.minimum(s - cheb, cheb - 0.5 * s)
    if name == "cross":
        arm = 0.35 * s
        return np.maximum(np.minimum(arm - adx, s - ady), np.minimum(arm - ady, s - adx))
    if name == "diamond":
        return (1.3 * s - (adx + ady)) * 0.7071
    if name == "triangle":  # apex up, base at +0.8 s
        return np.minimum((dy + s - 1.8 * adx) / 2.06, 0.8 * s - dy)
    if name == "stripes":  # horizontal stripes of width s/2 inside a square
        return np.minimum(s - cheb, s / 4 - np.abs(_wrap(dy, s)))
    if name == "checker":  # 4x4 checkerboard inside a square
        a, b = s / 4 - np.abs(_wrap(dx, s)), s / 4 - np.abs(_wrap(dy, s))
        return np.minimum(s - cheb, np.sign(a * b) * np.minimum(np.abs(a), np.abs(b)))
    raise KeyError(name)


def _background(rng: np.random.Generator, size: int, dark: bool) -> np.ndarray:
    """Smooth random background: level + linear gradient + two low-frequency cosines."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    level = rng.uniform(0.12, 0.32) if dark else rng.uniform(0.68, 0.88)
    bg = np.full((size, size, 3), level, np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    g = rng.uniform(-0.08, 0.08, 2)
    bg += (g[0] * (xx - 0.5) + g[1] * (yy - 0.5))[..., None]
    for _ in range(2):
        f = rng.uniform(0.5, 2.0, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.02, 0.05, 3)
        bg += np.cos(2 * np.pi * (f[0] * xx + f[1] * yy) + phase)[..., None] * amp
    return bg.astype(np.float32)


def render_clip(
    name: str,
    rng: np.random.Generator,
    num_frames: int = 48,
    size: int = 64,
    object_size: tuple[float, float] = (0.11, 0.16),
) -> tuple[np.ndarray, np.ndarray]:
    """Render one video of class ``name``: (frames (T,S,S,3) uint8, object mask (T,S,S) float).

    ``object_size``: range of the object's half-size as a fraction of the frame (shape classes; the motion blob
    starts there). The mask is returned so tests can check the geometry without decoding."""
    if name not in _NAMES:
        raise KeyError(f"unknown synthetic class {name!r}; known: {_NAMES}")
    T, S = int(num_frames), int(size)
    t = np.arange(T, dtype=np.float32)
    dark = bool(rng.random() < 0.5)
    bg = _background(rng, S, dark)
    # Object colour far in luminance from the background: always clearly visible.
    colour = (rng.uniform(0.55, 1.0, 3) if dark else rng.uniform(0.0, 0.42, 3)).astype(np.float32)
    s0 = S * rng.uniform(*object_size)
    cx0, cy0 = rng.uniform(0, S, 2)
    cx, cy = np.full(T, cx0, np.float32), np.full(T, cy0, np.float32)
    s = np.full(T, s0, np.float32)
    visible = np.ones(T, np.float32)
    shape = name
    if dict(SYNTH_CLASSES)[name] == "motion":
        shape = "blob"  # shared appearance: only the dynamics differ
        v = S * rng.uniform(0.015, 0.025)  # px / frame, independent of T
        if name == "move_right":
            cx = cx0 + v * t
        elif name == "move_left":
            cx = cx0 - v * t
        elif name == "move_down":
            cy = cy0 + v * t
        elif name == "move_up":
            cy = cy0 - v * t
        elif name in ("grow", "shrink"):
            lo, hi = 0.05 * S, 0.30 * S
            g = S * rng.uniform(0.0035, 0.005)
            start = rng.uniform(0, max(0.0, (hi - lo) - g * T))  # no reset jump if T fits
            ramp = (start + g * t) % (hi - lo)
            s = lo + ramp if name == "grow" else hi - ramp
        elif name == "blink":
            # Odd periods never divide the usual clip strides (2, 4, 8), so a sampled
            # clip never shows the same phase in every frame (that would look static).
            period = int(rng.choice([5, 7, 9]))
            phase = int(rng.integers(period))
            visible = (((t + phase) % period) < period / 2).astype(np.float32)
        elif name == "orbit_cw":  # y points down, so increasing angle is clockwise on screen
            radius = S * rng.uniform(0.18, 0.25)
            ang = rng.uniform(0, 2 * np.pi) + 2 * np.pi * t / rng.uniform(36, 60)
            cx, cy = cx0 + radius * np.cos(ang), cy0 + radius * np.sin(ang)
    else:  # appearance: static object jittering by up to 1 px per frame
        cx = cx0 + rng.uniform(-1, 1, T)
        cy = cy0 + rng.uniform(-1, 1, T)
    # Offsets broadcast as (T,1,S) and (T,S,1): x only depends on column, y on row.
    grid = np.arange(S, dtype=np.float32)
    dx = _wrap(grid[None, None, :] - np.asarray(cx, np.float32)[:, None, None], S)
    dy = _wrap(grid[None, :, None] - np.asarray(cy, np.float32)[:, None, None], S)
    sd = shape_sd(shape, dx, dy, np.asarray(s, np.float32)[:, None, None])
    mask = (np.clip(sd + 0.5, 0.0, 1.0) * visible[:, None, None]).astype(np.float32)
    video = bg[None] + mask[..., None] * (colour - bg)[None]
    # Sensor noise, uniform with std 0.03 (cheaper than Gaussian, same effect here).
    video += (rng.random(video.shape, dtype=np.float32) - 0.5) * np.float32(0.03 * 12**0.5)
    frames = np.clip(video * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames, mask.astype(np.float32)


def class_families(num_classes: int) -> list[str]:
    """'motion' / 'appearance' for each of the first ``num_classes`` classes (for
    per-family accuracy reports: the temporal vs spatial split CMPL relies on)."""
    _check_num_classes(num_classes)
    return [fam for _, fam in SYNTH_CLASSES[:num_classes]]


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= int(num_classes) <= len(SYNTH_CLASSES):
        raise ValueError(
            f"num_classes must be in 1..{len(SYNTH_CLASSES)} (the number of synthetic "
            f"class templates; combined motion x appearance classes are not generated), "
            f"got {num_classes}"
        )


def make_synthetic_dataset(
    out_dir: str,
    num_classes: int = 8,
    per_class: int = 20,
    seed: int = 0,
    num_frames: int = 48,
    size: int = 64,
    fps: int = 12,
    val_per_class: int | None = None,
    object_size: tuple[float, float] = (0.11, 0.16),
) -> dict:
    """Write ``videos/<class>/<i>.mp4`` plus ``train.txt``, ``val.txt``, ``classes.txt``.

    Train videos are indices 0..per_class-1, val videos follow them
    (``val_per_class`` defaults to max(1, per_class // 4)).  Each video is drawn
    from its own generator seeded by (seed, class, index), so the output does not
    depend on generation order and a larger ``per_class`` keeps the smaller set's train
    videos.  ``object_size`` (half-size range, fraction of the frame) sets how hard the shape classes are:
    at the default (0.11, 0.16) a 40-56 px crop leaves shapes of 9-18 px, which the tiny CPU networks cannot
    learn well even with every label (44% top-1 in 720 steps), so few-label comparisons use (0.20, 0.26)
    (73% with every label). Returns a summary dict (counts, classes, families, codec, seconds).
    """
    if not 0.0 < object_size[0] <= object_size[1] <= 0.3:
        raise ValueError(f"object_size must satisfy 0 < lo <= hi <= 0.3, got {object_size}")
    start = time.perf_counter()
    _check_num_classes(num_classes)
    if per_class < 1 or num_frames < 1 or seed < 0:
        raise ValueError("per_class and num_frames must be >= 1 and seed >= 0")
    if size < 32 or size % 2 or size in DECORD_BAD_WIDTHS:
        raise ValueError(
            f"size must be an even number >= 32 and not in {sorted(DECORD_BAD_WIDTHS)} "
            f"(decord cannot read those widths), got {size}"
        )
    n_val = max(1, per_class // 4) if val_per_class is None else int(val_per_class)
    if n_val < 0:
        raise ValueError(f"val_per_class must be >= 0, got {val_per_class}")
    names = _NAMES[:num_classes]
    train: list[VideoItem] = []
    val: list[VideoItem] = []
    for label, name in enumerate(names):
        for i in range(per_class + n_val):
            rng = np.random.default_rng([seed, label, i])
            frames, _ = render_clip(name, rng, num_frames, size, object_size)
            rel = f"videos/{name}/{i}.mp4"
            write_video(os.path.join(out_dir, rel), frames, fps)
            (train if i < per_class else val).append(VideoItem(rel, label))
    write_list(os.path.join(out_dir, "train.txt"), train)
    write_list(os.path.join(out_dir, "val.txt"), val)
    write_classes(os.path.join(out_dir, "classes.txt"), names)
    families = class_families(num_classes)
    return {
        "root": out_dir,
        "num_classes": num_classes,
        "classes": names,
        "families": families,
        "motion_classes": families.count("motion"),
        "appearance_classes": families.count("appearance"),
        "train": len(train),
        "val": len(val),
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "object_size": list(object_size),
        "codec": video_codec(),
        "seconds": round(time.perf_counter() - start, 3),
    }
