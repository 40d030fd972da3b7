"""Benchmark suite: synthetic video families that differ in WHAT carries the class.

Why: a recipe developed on one synthetic set learns that set and little else (the first CPU recipes stayed
near chance on a held-out set). Each family fixes one cue and varies the nuisances a real
dataset varies, so a recipe that works on all of them has not just memorised one generator:

==============  ===========================  =========  ======  =====  ==========  ======  ===========
family          the class is carried by      classes    W x H   T/fps  background  camera  distractors
==============  ===========================  =========  ======  =====  ==========  ======  ===========
direction       motion direction              6         64x64   32/12  photo       static  0
speed           speed / vibration frequency   5         64x64   48/15  noise       static  1
scale           size change                   4         128x96  40/10  flat        pan     0
appearance      shape / texture (static cue)  7         64x64   32/12  noise       pan     0
flicker         brightness over time          5         64x48   48/12  photo       static  0
heldout         mixed (never tuned on)        6         80x64   40/10  photo*      shake   2
==============  ===========================  =========  ======  =====  ==========  ======  ===========

``heldout`` is the family the recipe is never tuned on: its classes (bounce, zigzag, spin cw/ccw, colour
swap, approach) mix cues in ways no tuned family has, and its backgrounds come from photographs
(``PHOTOS_HELDOUT``) that no tuned family uses. Direction-sensitive families name their horizontal-flip pairs
(``flip_pairs``): train them with ``data.flip=false`` or ``data.flip_label_map`` (what :func:`write_family`
records in ``suite.json``).

Object tracks live on a torus (positions wrap at the borders, as in :mod:`cmpl_ray.data.synth`), so a moving
object never leaves the frame and the clip window can start anywhere. Backgrounds are crops of scikit-image's
bundled sample photographs, smooth multi-octave noise, or a flat gradient; camera motion moves the crop window
(and the objects with it) by a pan velocity or a per-frame shake.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from .lists import VideoItem, write_classes, write_list
from .synth import shape_sd, write_video

PHOTOS_TUNE = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "ihc", "brick")
PHOTOS_HELDOUT = ("retina", "motorcycle_right", "camera", "coins", "gravel", "grass")
Track = dict  # per-frame arrays: cx, cy, s (half-size, px), angle (rad), alpha (0..1), colour (T, 3); shape


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]
    width: int
    height: int
    frames: int
    fps: int
    background: str  # flat | noise | photo
    camera: str  # static | pan | shake
    distractors: int
    cue: str
    held_out: bool = False
    flip_pairs: tuple[tuple[str, str], ...] = ()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "direction",
            ("right", "left", "up", "down", "orbit_cw", "orbit_ccw"),
            64,
            64,
            32,
            12,
            "photo",
            "static",
            0,
            "motion direction",
            flip_pairs=(("right", "left"), ("orbit_cw", "orbit_ccw")),
        ),
        Family(
            "speed",
            ("still", "slow", "medium", "fast", "vibrate"),
            64,
            64,
            48,
            15,
            "noise",
            "static",
            1,
            "speed / vibration frequency",
        ),
        Family("scale", ("grow", "shrink", "pulse", "steady"), 128, 96, 40, 10, "flat", "pan", 0, "size change"),
        Family(
            "appearance",
            ("disc", "square", "ring", "cross", "triangle", "stripes", "checker"),
            64,
            64,
            32,
            12,
            "noise",
            "pan",
            0,
            "shape / texture",
        ),
        Family(
            "flicker",
            ("steady", "blink_slow", "blink_fast", "ramp_up", "ramp_down"),
            64,
            48,
            48,
            12,
            "photo",
            "static",
            0,
            "brightness over time",
        ),
        Family(
            "heldout",
            ("bounce", "zigzag", "spin_cw", "spin_ccw", "colour_swap", "approach"),
            80,
            64,
            40,
            10,
            "photo",
            "shake",
            2,
            "mixed (never tuned on)",
            held_out=True,
            flip_pairs=(("spin_cw", "spin_ccw"),),
        ),
    )
}
TUNED = tuple(n for n, f in FAMILIES.items() if not f.held_out)
HELD_OUT = tuple(n for n, f in FAMILIES.items() if f.held_out)


# ----------------------------------------------------------------------------- backgrounds
@functools.lru_cache(maxsize=32)
def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image sample photograph as float32 RGB in [0, 1], short side about 192 px."""
    import os

    import skimage.data
    import skimage.io
    import skimage.transform

    root = os.path.dirname(skimage.data.__file__)  # bundled files, so no download is ever needed
    path = next(
        os.path.join(root, name + ext) for ext in (".png", ".jpg") if os.path.exists(os.path.join(root, name + ext))
    )
    img = np.asarray(skimage.io.imread(path), np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3] / (255.0 if img.max() > 1.5 else 1.0)
    scale = 192.0 / min(img.shape[:2])
    if scale < 1:
        img = skimage.transform.rescale(img, scale, channel_axis=2, anti_aliasing=True, order=1)
    return img.astype(np.float32)


def _canvas(kind: str, rng: np.random.Generator, h: int, w: int, photos: tuple[str, ...]) -> np.ndarray:
    """A (h, w, 3) float background: photo crop (contrast halved around its mean), noise or flat gradient."""
    if kind == "photo":
        img = _photo(photos[int(rng.integers(len(photos)))])
        zoom = rng.uniform(0.6, 1.0)  # crop side as a fraction of the photo's short side
        ch = int(min(img.shape[:2]) * zoom)
        cw = min(img.shape[1], int(ch * w / h))
        y0, x0 = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = img[y0 : y0 + ch, x0 : x0 + cw]
        yi = np.linspace(0, ch - 1, h).astype(np.int64)
        xi = np.linspace(0, cw - 1, w).astype(np.int64)
        bg = crop[yi][:, xi]
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        return (bg.mean((0, 1)) + 0.5 * (bg - bg.mean((0, 1)))).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.15, 0.85) + rng.uniform(-0.06, 0.06, 3)
    bg = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    if kind == "flat":
        g = rng.uniform(-0.1, 0.1, 2)
        return bg + (g[0] * (xx / w - 0.5) + g[1] * (yy / h - 0.5))[..., None]
    if kind != "noise":
        raise ValueError(f"unknown background {kind!r}")
    for cells, amp in ((4, 0.14), (8, 0.08), (16, 0.05)):  # smooth value noise, three octaves
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
        gy, gx = yy / h * cells, xx / w * cells
        y0, x0 = gy.astype(np.int64), gx.astype(np.int64)
        fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
        top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
        bot = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
        bg += amp * (top * (1 - fy) + bot * fy)
    return bg


def _camera(kind: str, rng: np.random.Generator, t: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Camera offsets (ox, oy) per frame and the canvas margin they need."""
    n = len(t)
    if kind == "pan":
        v = size * rng.uniform(0.004, 0.012)
        ang = rng.uniform(0, 2 * np.pi)
        ox, oy = v * np.cos(ang) * t, v * np.sin(ang) * t
    elif kind == "shake":
        ox, oy = rng.uniform(-1.5, 1.5, n), rng.uniform(-1.5, 1.5, n)
    elif kind == "static":
        ox, oy = np.zeros(n), np.zeros(n)
    else:
        raise ValueError(f"unknown camera {kind!r}")
    margin = int(np.ceil(max(np.abs(ox).max(), np.abs(oy).max()))) + 1
    return ox, oy, margin


# ----------------------------------------------------------------------------- object tracks
def _track(
    rng: np.random.Generator,
    t: np.ndarray,
    w: int,
    h: int,
    shape: str = "blob",
    size: tuple[float, float] = (0.10, 0.16),
) -> Track:
    s = min(w, h)
    n = len(t)
    return {
        "cx": np.full(n, rng.uniform(0, w)),
        "cy": np.full(n, rng.uniform(0, h)),
        "s": np.full(n, s * rng.uniform(*size)),
        "angle": np.full(n, rng.uniform(-0.3, 0.3)),
        "alpha": np.ones(n),
        "colour": None,
        "shape": shape,
    }


def _move(tr: Track, vx: float, vy: float, t: np.ndarray) -> Track:
    tr["cx"], tr["cy"] = tr["cx"] + vx * t, tr["cy"] + vy * t
    return tr


def _drift(tr: Track, rng: np.random.Generator, t: np.ndarray, speed: float) -> Track:
    """Uninformative motion: a slow drift in a random direction plus a +-0.7 px jitter."""
    ang = rng.uniform(0, 2 * np.pi)
    _move(tr, speed * np.cos(ang), speed * np.sin(ang), t)
    tr["cx"] = tr["cx"] + rng.uniform(-0.7, 0.7, len(t))
    tr["cy"] = tr["cy"] + rng.uniform(-0.7, 0.7, len(t))
    return tr


def _saw(t: np.ndarray, period: float, phase: float) -> np.ndarray:
    return ((t + phase) % period) / period  # 0 -> 1 ramps


def _class_track(fam: str, name: str, rng: np.random.Generator, t: np.ndarray, w: int, h: int) -> Track:
    """The class-carrying object of one video. Every nuisance draw (position, size, colour, phase) comes from
    the same distribution for all classes of a family; only the named behaviour differs."""
    s = min(w, h)
    n = len(t)
    if fam == "direction":
        tr, v = _track(rng, t, w, h), s * rng.uniform(0.02, 0.035)
        if name.startswith("orbit"):
            r, period = s * rng.uniform(0.16, 0.24), rng.uniform(24, 40)
            ang = rng.uniform(0, 2 * np.pi) + (1 if name == "orbit_cw" else -1) * 2 * np.pi * t / period
            tr["cx"], tr["cy"] = tr["cx"] + r * np.cos(ang), tr["cy"] + r * np.sin(ang)  # y down: + is clockwise
            return tr
        vx, vy = {"right": (v, 0), "left": (-v, 0), "up": (0, -v), "down": (0, v)}[name]
        return _move(tr, vx, vy, t)
    if fam == "speed":
        tr = _track(rng, t, w, h, shape=str(rng.choice(["blob", "square", "diamond"])))
        ang = rng.uniform(0, 2 * np.pi)
        if name == "vibrate":  # fast back-and-forth, period 3 frames: visible at strides 1, 2 and 4, not 3
            a = rng.uniform(2.5, 4.0)
            off = a * np.sin(2 * np.pi * t / 3.0 + rng.uniform(0, 2 * np.pi))
            tr["cx"], tr["cy"] = tr["cx"] + off * np.cos(ang), tr["cy"] + off * np.sin(ang)
            return tr
        v = {"still": 0.0, "slow": 0.006, "medium": 0.018, "fast": 0.045}[name] * s * rng.uniform(0.8, 1.25)
        _move(tr, v * np.cos(ang), v * np.sin(ang), t)
        tr["cx"] = tr["cx"] + rng.uniform(-0.4, 0.4, n)
        return tr
    if fam == "scale":
        tr = _drift(_track(rng, t, w, h, shape=str(rng.choice(["blob", "square"]))), rng, t, s * 0.004)
        lo, hi = 0.06 * s, 0.28 * s
        if name in ("grow", "shrink"):
            ramp = (rng.uniform(0, hi - lo) + s * rng.uniform(0.004, 0.006) * t) % (hi - lo)
            tr["s"] = lo + ramp if name == "grow" else hi - ramp
        elif name == "pulse":
            tr["s"] = 0.5 * (lo + hi) + 0.35 * (hi - lo) * np.sin(
                2 * np.pi * t / rng.uniform(8, 14) + rng.uniform(0, 6.3)
            )
        else:
            tr["s"] = np.full(n, rng.uniform(lo, hi))
        return tr
    if fam == "appearance":
        shape = {"disc": "blob"}.get(name, name)
        return _drift(_track(rng, t, w, h, shape=shape, size=(0.16, 0.24)), rng, t, s * rng.uniform(0, 0.01))
    if fam == "flicker":
        tr = _drift(_track(rng, t, w, h, size=(0.14, 0.22)), rng, t, 0.0)
        phase = rng.uniform(0, 100)
        if name.startswith("blink"):
            period = rng.uniform(14, 20) if name == "blink_slow" else rng.uniform(5.0, 7.0)
            tr["alpha"] = (_saw(t, period, phase) < 0.5).astype(np.float64)
        elif name.startswith("ramp"):  # sawtooth fade: only the ORDER of frames tells up from down
            ramp = _saw(t, rng.uniform(10, 16), phase)
            tr["alpha"] = 0.1 + 0.9 * (ramp if name == "ramp_up" else 1 - ramp)
        return tr
    if fam == "heldout":
        if name in ("spin_cw", "spin_ccw"):
            tr = _drift(_track(rng, t, w, h, shape="bar", size=(0.16, 0.22)), rng, t, s * 0.005)
            tr["angle"] = rng.uniform(0, np.pi) + (1 if name == "spin_cw" else -1) * rng.uniform(0.12, 0.2) * t
            return tr
        tr = _track(rng, t, w, h, shape=str(rng.choice(["blob", "square", "triangle"])), size=(0.09, 0.14))
        if name == "bounce":
            period, amp = rng.uniform(10, 16), s * rng.uniform(0.2, 0.3)
            tr["cy"] = tr["cy"] - amp * np.abs(np.sin(np.pi * (t / period + rng.uniform(0, 1))))
        elif name == "zigzag":
            period, amp = rng.uniform(8, 12), s * rng.uniform(0.12, 0.2)
            tri = 2 * np.abs(2 * _saw(t, period, rng.uniform(0, period)) - 1) - 1
            tr["cx"] = tr["cx"] + s * 0.02 * t * rng.choice([-1, 1])
            tr["cy"] = tr["cy"] + amp * tri
        elif name == "colour_swap":
            _drift(tr, rng, t, s * 0.005)
            c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            c2 = np.where(np.abs(c2 - c1) < 0.4, 1 - c1, c2)
            on = (_saw(t, rng.uniform(6, 10), rng.uniform(0, 10)) < 0.5)[:, None]
            tr["colour"] = np.where(on, c1, c2)
        elif name == "approach":  # grows while sliding down: something coming towards the camera
            ramp = (rng.uniform(0, 1) + t / rng.uniform(20, 30)) % 1.0
            tr["s"] = s * (0.05 + 0.2 * ramp)
            tr["cy"] = tr["cy"] + s * 0.3 * ramp
        return tr
    raise KeyError(f"unknown family {fam!r}")


def _distractor(rng: np.random.Generator, t: np.ndarray, w: int, h: int) -> Track:
    tr = _track(rng, t, w, h, shape=str(rng.choice(["blob", "square", "ring", "cross"])), size=(0.05, 0.09))
    ang, v = rng.uniform(0, 2 * np.pi), min(w, h) * rng.uniform(0.0, 0.02)
    return _move(tr, v * np.cos(ang), v * np.sin(ang), t)


# ----------------------------------------------------------------------------- rendering
def _sd(shape: str, dx: np.ndarray, dy: np.ndarray, s: np.ndarray) -> np.ndarray:
    if shape == "bar":  # a long thin bar: its orientation is visible, so a spin direction is too
        return np.minimum(s - np.abs(dx), 0.22 * s - np.abs(dy))
    return shape_sd(shape, dx, dy, s)


def _contrast_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    """A random colour far in luminance from the background mean: the object is always clearly visible."""
    lum = float(bg_mean @ np.array([0.299, 0.587, 0.114]))
    return rng.uniform(0.6, 1.0, 3) if lum < 0.5 else rng.uniform(0.0, 0.35, 3)


def render_family_clip(family: str | Family, name: str, rng: np.random.Generator) -> np.ndarray:
    """Render one video of class ``name`` of ``family`` -> (T, H, W, 3) uint8 RGB."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    if name not in fam.classes:
        raise KeyError(f"{name!r} is not a class of family {fam.name!r}; classes: {list(fam.classes)}")
    w, h, n = fam.width, fam.height, fam.frames
    t = np.arange(n, dtype=np.float64)
    ox, oy, m = _camera(fam.camera, rng, t, min(w, h))
    canvas = _canvas(fam.background, rng, h + 2 * m, w + 2 * m, PHOTOS_HELDOUT if fam.held_out else PHOTOS_TUNE)
    iy = (m + np.rint(oy)).astype(np.int64)
    ix = (m + np.rint(ox)).astype(np.int64)
    video = np.stack([canvas[iy[i] : iy[i] + h, ix[i] : ix[i] + w] for i in range(n)])  # (T, H, W, 3)
    tracks = [_class_track(fam.name, name, rng, t, w, h)] + [_distractor(rng, t, w, h) for _ in range(fam.distractors)]
    gx = np.arange(w, dtype=np.float32)[None, None, :]
    gy = np.arange(h, dtype=np.float32)[None, :, None]
    bg_mean = canvas.mean((0, 1))
    for tr in tracks:
        colour = tr["colour"] if tr["colour"] is not None else _contrast_colour(rng, bg_mean)
        colour = np.broadcast_to(np.asarray(colour, np.float32), (n, 3))
        # screen position = world position - camera offset, wrapped on the torus
        dx = (gx - (tr["cx"] - ox).astype(np.float32)[:, None, None] + w / 2) % w - w / 2  # (T, 1, W)
        dy = (gy - (tr["cy"] - oy).astype(np.float32)[:, None, None] + h / 2) % h - h / 2  # (T, H, 1)
        ca = np.cos(tr["angle"]).astype(np.float32)[:, None, None]
        sa = np.sin(tr["angle"]).astype(np.float32)[:, None, None]
        rx, ry = ca * dx + sa * dy, -sa * dx + ca * dy  # object frame: rotated by its angle
        sd = _sd(tr["shape"], rx, ry, np.asarray(tr["s"], np.float32)[:, None, None])
        a = np.clip(sd + 0.5, 0.0, 1.0) * np.asarray(tr["alpha"], np.float32)[:, None, None]  # (T, H, W)
        video = video + a[..., None] * (colour[:, None, None, :] - video)
    video = video + rng.normal(0.0, 0.02, video.shape).astype(np.float32)  # sensor noise
    return np.clip(video * 255.0 + 0.5, 0, 255).astype(np.uint8)


def flip_label_map(fam: Family) -> str:
    """The family's horizontal-flip pairs as a ``data.flip_label_map`` value (``a:b,c:d``); '' if none."""
    return ",".join(f"{a}:{b}" for a, b in fam.flip_pairs)


def write_family(out_dir: str, family: str, per_class: int = 60, val_per_class: int = 50, seed: int = 0) -> dict:
    """Write one family as ``videos/<class>/<i>.mp4`` + ``train.txt``, ``val.txt``, ``classes.txt`` and
    ``suite.json`` (the family's spec and its ``flip_label_map``). Video i of class c comes from its own generator
    seeded by (seed, family, c, i): the output does not depend on generation order, and a larger set keeps the
    smaller one's videos."""
    import json
    import zlib

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {list(FAMILIES)}")
    if per_class < 1 or val_per_class < 0 or seed < 0:
        raise ValueError("per_class must be >= 1, val_per_class >= 0 and seed >= 0")
    fam = FAMILIES[family]
    start = time.perf_counter()
    fam_key = zlib.crc32(family.encode())
    train: list[VideoItem] = []
    val: list[VideoItem] = []
    for label, name in enumerate(fam.classes):
        for i in range(per_class + val_per_class):
            frames = render_family_clip(fam, name, np.random.default_rng([seed, fam_key, label, i]))
            rel = f"videos/{name}/{i}.mp4"
            write_video(os.path.join(out_dir, rel), frames, fam.fps)
            (train if i < per_class else val).append(VideoItem(rel, label))
    write_list(os.path.join(out_dir, "train.txt"), train)
    write_list(os.path.join(out_dir, "val.txt"), val)
    write_classes(os.path.join(out_dir, "classes.txt"), list(fam.classes))
    info = {
        **asdict(fam),
        "flip_label_map": flip_label_map(fam),
        "seed": seed,
        "train": len(train),
        "val": len(val),
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(os.path.join(out_dir, "suite.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info
