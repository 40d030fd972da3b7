"""Clip decoding with decord: robust to bad files, resized in the decoder, uint8 out.

Why it looks like this:

* decord decodes a *set* of frame indices in one ``get_batch`` call and can
  resize in the decoder (``width=/height=``, cheap: the scaler runs on frames it
  decodes anyway).  The primary (8x8) and auxiliary (16x4) windows of a CMPL
  sample usually overlap, so we decode the sorted *unique* indices once and
  gather.
* Real datasets contain bad files.  Missing and zero-byte files are rejected
  *before* decord is called (cheap, and decord's messages are unhelpful).
  Corrupt files raise at ``VideoReader`` construction (upstream decord #162);
  some files hang forever (upstream #363), so decoding runs in a worker thread
  and we wait with ``future.result(timeout=...)``.  **Limitation:** a hung C
  call cannot be interrupted from Python; on timeout the (daemon) thread is
  abandoned and keeps its CPU/memory until the call returns or the process
  exits.  Callers (Ray Data actors) should count timeouts and recycle the
  worker process if they pile up.
* decord's frame count comes from the container and can over-report; a read
  that fails near the tail is retried with indices clamped a little earlier.
* All failures surface as :class:`BadVideo` with a machine-readable ``reason``
  so the data pipeline can skip and count them instead of crashing a run.

Source dimensions (needed to compute an aspect-preserving decoder resize; decord
has no API for them) are read from the container header with PyAV (~1 ms),
unless the caller already knows them (``src_hw``, e.g. from :func:`probe` at
indexing time).

decord 0.6 bundles an ffmpeg without an AV1 decoder, and AV1 is what video sites
now often serve.  When decord cannot *open* a file ("undecodable"), the file is
read with PyAV (a dependency already, and its wheel decodes AV1 with libdav1d),
which mirrors decord's frame count, fps, frame order, rotation and resize filter,
so the clip is the same whichever library reads it (H.264 through both:
pixel-identical).  decord stays the path for everything it opens; the fallback
runs inside the same timeout.  :func:`read_sampled` says which library read the
file (:data:`DECODER_NAMES`).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import decord
import numpy as np

decord.bridge.set_bridge("native")  # return decord NDArray -> .asnumpy(); no torch bridge surprises

__all__ = [
    "BadVideo",
    "DECODER_NAMES",
    "DECORD",
    "DECORD_BAD_WIDTHS",
    "NOT_READ",
    "PYAV",
    "REASONS",
    "Sampled",
    "Source",
    "probe",
    "read_frames",
    "read_sampled",
    "target_size",
]

Source = str | os.PathLike | bytes | bytearray | memoryview

#: Reasons a sample can be rejected.  "bad_label" is raised by the dataset layer, not here.
REASONS = ("missing", "empty", "undecodable", "timeout", "bad_label")

# How far below decord's reported frame count we retry when the tail cannot be read.
_TAIL_SHRINK = (1, 2, 3, 4, 8, 16, 32)
# decord 0.6.0 output widths whose frames cannot be copied out ("DECORDArrayCopyFromTo: The size
# must exactly match"); measured for widths 8..400 (any height).  Resize targets step around them.
DECORD_BAD_WIDTHS = frozenset({8, 12, 16, 24, 48, 72})

#: Which library read a video, as the data pipeline's ``l_dec`` / ``u_dec`` / ``dec`` columns code it:
#: decord (the fast path) or PyAV (files decord cannot open, e.g. AV1). NOT_READ: a bad video or a padding row.
DECORD, PYAV, NOT_READ = 0, 1, -1
DECODER_NAMES = {DECORD: "decord", PYAV: "pyav"}

T = TypeVar("T")


class BadVideo(Exception):
    """A video that cannot be used; ``reason`` is one of :data:`REASONS`.

    Arguments are passed to ``Exception.__init__`` so the error pickles across
    Ray process boundaries.  (Videos that are merely short are looped by the
    sampler, not rejected.)
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BadVideo reason {reason!r}; expected one of {REASONS}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class Sampled(tuple):
    """``(frames, num_frames, fps)`` from :func:`read_sampled`, plus ``decoder``: which library read the file
    (a key of :data:`DECODER_NAMES`). A tuple, so ``frames, n, fps = read_sampled(...)`` keeps working, and so
    do stand-in readers that return a plain tuple (``getattr(result, "decoder", DECORD)``)."""

    def __new__(cls, frames: np.ndarray, num_frames: int, fps: float, decoder: int = DECORD) -> Sampled:
        self = super().__new__(cls, (frames, num_frames, fps))
        self.decoder = decoder
        return self

    def __reduce__(self):
        return type(self), (*self, self.decoder)


def _check_source(src: Source) -> None:
    """Reject missing / zero-byte inputs without touching decord."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise BadVideo("empty", "zero-byte input")
        return
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"src must be a path or bytes, got {type(src).__name__}")
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise BadVideo("missing", path)
    if os.path.getsize(path) == 0:
        raise BadVideo("empty", path)


def _file_like(src: Source) -> str | io.BytesIO:
    """decord takes a path or any object with ``.read()`` (it copies the bytes)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(src)
    return os.fspath(src)


def _run_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s`` seconds.

    A daemon thread (not a ``ThreadPoolExecutor``) so an abandoned hung decode
    never blocks interpreter exit and never starves a shared pool.
    ``timeout_s`` None or <= 0 runs inline.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    fut: cf.Future = cf.Future()

    def work() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            fut.set_exception(exc)

    threading.Thread(target=work, name="cmpl-decode", daemon=True).start()
    try:
        return fut.result(timeout=timeout_s)
    except cf.TimeoutError:
        raise BadVideo("timeout", f"no result after {timeout_s:.1f}s") from None


def _header_hw(src: Source) -> tuple[int, int]:
    """(height, width) of the first video stream from the container header (PyAV)."""
    import av  # local: only needed when the caller does not pass src_hw

    with av.open(_file_like(src)) as container:
        if not container.streams.video:
            raise BadVideo("undecodable", "no video stream")
        cc = container.streams.video[0].codec_context
        if cc.height <= 0 or cc.width <= 0:
            raise BadVideo("undecodable", "video stream without dimensions")
        return int(cc.height), int(cc.width)


def _open(src: Source, width: int, height: int, num_threads: int) -> decord.VideoReader:
    """Construct a VideoReader; construction errors mean a corrupt file (decord #162)."""
    try:
        return decord.VideoReader(
            _file_like(src), ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads
        )
    except AssertionError as exc:  # decord asserts frame count > 0
        raise BadVideo("empty", f"no frames: {exc}") from None
    except Exception as exc:  # DECORDError / RuntimeError("Error reading ...")
        raise BadVideo("undecodable", f"{type(exc).__name__}: {exc}") from None


class _PyAVReader:
    """What the readers use of ``decord.VideoReader`` (``len``, ``get_avg_fps``, reading frames), on PyAV.

    For files decord cannot open: decord 0.6's ffmpeg has no AV1 decoder, PyAV's has (libdav1d). It copies
    decord's choices so a clip does not depend on which library read it: the frame count is the number of
    the stream's packets and frame i the i-th smallest pts (decord's keyframe index); fps is the stream's
    average rate; frames pass through decord's filter (display rotation as ``transpose``, then
    ``scale=W:H`` with bilinear flags, the default of decord's ffmpeg 4, to rgb24: pixel-identical to
    decord on H.264); a tail that cannot be decoded is clamped as :func:`_decode_unique` clamps decord's.
    One :meth:`read` per reader (it closes the file).
    """

    def __init__(self, src: Source, width: int, height: int, num_threads: int) -> None:
        import av  # local: decord-only installs (and the GPU study's stub) never import it

        self._src, self._wh, self._threads, self._graph = src, (width, height), num_threads, None
        self._c = av.open(_file_like(src))
        try:
            self._s = self._c.streams.best("video")
            if self._s is None:
                raise BadVideo("undecodable", "pyav: no video stream")
            packets = [(p.pts, p.is_keyframe) for p in self._c.demux(self._s) if p.size]  # not the flush packets
        except BaseException:
            self._c.close()
            raise
        pts = [p for p, _ in packets]
        self._pts = sorted(pts) if None not in pts else None  # None: index frames by decode order instead
        self._index = {p: i for i, p in enumerate(self._pts or ())}
        self._keys = sorted(p for p, key in packets if key) if self._pts else []
        self.n = len(packets)
        rate = self._s.average_rate
        self.fps = float(rate) if rate is not None else float("nan")
        if self.n == 0:
            self._c.close()
            raise BadVideo("empty", "pyav: no frames")

    def __len__(self) -> int:
        return self.n

    def get_avg_fps(self) -> float:
        return self.fps

    def close(self) -> None:
        self._c.close()

    def _indexed(self, first: int):
        """(index, frame) in presentation order, from the last keyframe at or before frame ``first`` (decord
        seeks the same way); from the file's start if the seek lands past ``first`` or there are no pts."""
        key = max((p for p in self._keys if p <= self._pts[first]), default=None) if self._pts else None
        if key is not None and first > 0:
            self._c.seek(key, stream=self._s, backward=True)
            frames = (f for f in self._c.decode(self._s) if f.pts in self._index)
            f = next(frames, None)
            if f is not None and self._index[f.pts] <= first:
                yield self._index[f.pts], f
                yield from ((self._index[f.pts], f) for f in frames)
                return
        import av

        self._c.close()
        self._c = av.open(_file_like(self._src))  # from the start: packets in order, no seek needed
        self._s = self._c.streams.best("video")
        self._s.codec_context.thread_count = self._threads
        frames = self._c.decode(self._s)
        if self._pts:
            yield from ((self._index[f.pts], f) for f in frames if f.pts in self._index)
        else:
            yield from enumerate(frames)

    def _rgb(self, frame) -> np.ndarray:
        """decord's filter: rotation, ``scale=W:H`` (bilinear), rgb24 -> (H, W, 3) uint8."""
        if self._graph is None:
            import av

            theta = int(round(-(getattr(frame, "rotation", 0) or 0))) % 360  # decord's GetRotation
            turns = {90: ["1"], 180: ["1", "1"], 270: ["2"]}.get(theta, [])
            w, h = self._wh
            nat_w, nat_h = (frame.height, frame.width) if theta in (90, 270) else (frame.width, frame.height)
            g = av.filter.Graph()
            g.threads = 1  # as decord's graph
            nodes = [g.add_buffer(template=frame, time_base=self._s.time_base)]
            nodes += [g.add("transpose", t) for t in turns]
            nodes += [
                g.add("scale", f"{w if w > 0 else nat_w}:{h if h > 0 else nat_h}:flags=bilinear"),
                g.add("format", "rgb24"),
                g.add("buffersink"),
            ]
            g.link_nodes(*nodes)
            g.configure()
            self._graph = g
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()

    def read(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique indices (< len) -> (frames (U, H, W, 3) uint8, indices read), like :func:`_decode_unique`."""
        import av

        tail = self.n - 1 - _TAIL_SHRINK[-1]
        got, at_tail, last, err = {}, {}, -1, "pyav: stream ended early"
        wanted = set(uniq.tolist())
        try:
            self._s.codec_context.thread_count = self._threads
            try:
                for last, frame in self._indexed(int(uniq[0])):
                    if last in wanted:
                        got[last] = self._rgb(frame)
                    if last >= tail:
                        at_tail[last] = frame  # candidates of the tail retry
                    if last >= uniq[-1]:
                        break
            except av.error.FFmpegError as exc:  # a corrupt packet: the frames before it may still do
                err = f"pyav: {type(exc).__name__}: {exc}"
            if len(got) < len(uniq):
                uniq = self._clamp_tail(uniq, got, at_tail, last, err)
            return np.stack([got[i] for i in uniq]), uniq
        finally:
            self.close()

    def _clamp_tail(self, uniq: np.ndarray, got: dict, at_tail: dict, last: int, err: str) -> np.ndarray:
        """Frames missing after the last decoded one (over-reported count, truncated file): decord's retry, the
        indices clamped to the first ``n - 1 - s`` (s in ``_TAIL_SHRINK``) that was decoded. Frames missing
        elsewhere: undecodable."""
        first_missing = next(int(i) for i in uniq if i not in got)
        if first_missing > last and uniq[-1] >= self.n - 1 - _TAIL_SHRINK[-1]:
            limit = next((self.n - 1 - s for s in _TAIL_SHRINK if self.n - 1 - s <= last), -1)
            if limit in at_tail:
                if limit not in got:
                    got[limit] = self._rgb(at_tail[limit])
                return np.unique(np.minimum(uniq, limit))
        raise BadVideo("undecodable", f"frame {first_missing} of {self.n} not decoded ({err})")


def _open_pyav(src: Source, width: int, height: int, num_threads: int) -> _PyAVReader:
    """A :class:`_PyAVReader`; errors become ``BadVideo`` like :func:`_open`'s."""
    try:
        return _PyAVReader(src, width, height, num_threads)
    except BadVideo:
        raise
    except Exception as exc:  # av.error.InvalidDataError etc.
        raise BadVideo("undecodable", f"pyav: {type(exc).__name__}: {exc}") from None


def _open_any(src: Source, width: int, height: int, num_threads: int):
    """decord's reader; PyAV's when decord cannot open the file (missing codec: AV1 in decord 0.6).

    Only "undecodable" falls back: decord's "empty" (no frames) is a fact about the file. When PyAV cannot
    open it either (garbage, truncated), the error names both libraries' reasons.
    """
    try:
        return _open(src, width, height, num_threads)
    except BadVideo as exc:
        if exc.reason != "undecodable":
            raise
        decord_err = exc
    try:
        return _open_pyav(src, width, height, num_threads)
    except BadVideo as exc:
        if exc.reason != "undecodable":
            raise
        raise BadVideo("undecodable", f"decord: {decord_err.detail}; {exc.detail}") from None


def target_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """Decoder output (height, width) with the short side == ``short_side``, aspect kept.

    Returns (-1, -1) (decord's "unchanged") when no resize is needed.  A width
    decord cannot output (:data:`DECORD_BAD_WIDTHS`) is widened by a pixel or two.
    """
    if short_side is None or short_side <= 0 or min(height, width) == short_side:
        if width not in DECORD_BAD_WIDTHS:
            return -1, -1
        short_side = min(height, width)
    if height <= width:
        h, w = short_side, max(1, int(round(width * short_side / height)))
    else:
        h, w = max(1, int(round(height * short_side / width))), short_side
    while w in DECORD_BAD_WIDTHS:
        w += 1
    return h, w


def _as_numpy(batch) -> np.ndarray:
    # Another library may have switched decord's global bridge (e.g. to torch).
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def probe(path_or_bytes: Source, timeout_s: float = 30.0) -> tuple[int, float, int, int]:
    """Return ``(num_frames, fps, height, width)`` of the source (native size).

    ``num_frames`` is decord's count (what :func:`read_frames` clamps to); for a file decord cannot open
    (AV1), PyAV's count made the same way.
    """
    _check_source(path_or_bytes)

    def work() -> tuple[int, float, int, int]:
        h, w = _safe_header_hw(path_or_bytes)
        vr = _open_any(path_or_bytes, -1, -1, 1)
        if isinstance(vr, _PyAVReader):
            vr.close()
        return int(len(vr)), float(vr.get_avg_fps()), h, w

    return _run_with_timeout(work, timeout_s)


@functools.lru_cache(maxsize=65536)
def _cached_header_hw(path: str, mtime_ns: int, size: int) -> tuple[int, int]:
    return _header_hw(path)


def _safe_header_hw(src: Source) -> tuple[int, int]:
    """Frame size from the header; cached per (path, mtime, size): each video recurs every epoch."""
    try:
        if isinstance(src, (str, os.PathLike)):
            st = os.stat(src)
            return _cached_header_hw(os.fspath(src), st.st_mtime_ns, st.st_size)
        return _header_hw(src)
    except BadVideo:
        raise
    except Exception as exc:  # av.error.InvalidDataError etc.
        raise BadVideo("undecodable", f"{type(exc).__name__}: {exc}") from None


def _decode_unique(
    src: Source, wanted: np.ndarray, width: int, height: int, num_threads: int, vr: decord.VideoReader | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode sorted unique ``wanted`` -> (frames (U, H, W, 3) uint8, decoded indices (U,)).

    Indices are clamped to decord's frame count; if the read fails close to the
    tail (over-reported count, truncated file) retry with indices clamped further.
    A file decord cannot open is read with PyAV (:func:`_open_any`), which clamps the same way.
    """
    vr = vr if vr is not None else _open_any(src, width, height, num_threads)
    n = len(vr)
    uniq = np.unique(np.minimum(wanted, n - 1))  # (U,)
    if isinstance(vr, _PyAVReader):
        try:
            return vr.read(uniq)
        except BadVideo:
            raise
        except Exception as exc:  # noqa: BLE001 - a filter or decoder error on an odd file
            raise BadVideo("undecodable", f"pyav: {type(exc).__name__}: {exc}") from None
    try:
        return _as_numpy(vr.get_batch(uniq)), uniq
    except Exception as exc:  # noqa: BLE001
        first_err = exc
    del vr
    if uniq[-1] >= n - 1 - _TAIL_SHRINK[-1]:  # only a tail problem is worth retrying
        for shrink in _TAIL_SHRINK:
            limit = n - 1 - shrink
            if limit < 0:
                break
            retry = np.unique(np.minimum(uniq, limit))
            vr = _open(src, width, height, num_threads)  # fresh reader: a failed seek leaves state behind
            try:
                return _as_numpy(vr.get_batch(retry)), retry
            except Exception:  # noqa: BLE001
                continue
    raise BadVideo("undecodable", f"get_batch failed: {type(first_err).__name__}: {first_err}")


def read_sampled(
    src: Source,
    choose: Callable[[int, float], np.ndarray],
    short_side: int | None = None,
    timeout_s: float = 30.0,
    num_threads: int = 1,
) -> Sampled:
    """Open once, pick indices from the video's own length: ``choose(num_frames, fps) -> indices``.

    Returns (frames (len(indices), H, W, 3) uint8, num_frames, fps) as a :class:`Sampled`, whose ``decoder``
    says which library read the file (decord; PyAV for files decord cannot open, e.g. AV1). The training and
    evaluation samplers need the frame count before they can pick a window; asking the already-open
    (resizing) reader instead of a separate :func:`probe` saves one decoder construction per video (~10% of
    a short clip's decode).
    """
    _check_source(src)

    def work() -> Sampled:
        height, width = target_size(*_safe_header_hw(src), short_side)
        vr = _open_any(src, width, height, num_threads)
        n, fps = int(len(vr)), float(vr.get_avg_fps())
        idx = np.asarray(choose(n, fps), dtype=np.int64)  # (N,)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0:
            raise ValueError(f"choose() must return non-empty non-negative 1-D indices, got {idx}")
        frames, decoded = _decode_unique(src, np.unique(idx), width, height, num_threads, vr=vr)
        pos = np.searchsorted(decoded, np.minimum(idx, decoded[-1]))  # (N,)
        return Sampled(frames[pos], n, fps, PYAV if isinstance(vr, _PyAVReader) else DECORD)

    out = _run_with_timeout(work, timeout_s)
    if out[0].dtype != np.uint8 or out[0].ndim != 4:
        raise BadVideo("undecodable", f"unexpected decoder output {out[0].dtype} {out[0].shape}")
    return out


def read_frames(
    src: Source,
    indices: np.ndarray,
    short_side: int | None = None,
    timeout_s: float = 30.0,
    num_threads: int = 1,
    *,
    src_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode ``indices`` of ``src`` -> uint8 array (len(indices), H, W, 3), RGB.

    Args:
        src: local path, or the file's bytes (object-store URIs: the caller
            reads the bytes, e.g. with pyarrow, and passes them).
        indices: 1-D non-negative frame indices, any order, repeats allowed
            (e.g. primary and auxiliary windows concatenated).  Each distinct
            frame is decoded once.  Indices past decord's frame count are
            clamped to the last readable frame.
        short_side: resize in the decoder so min(H, W) == short_side (aspect
            kept; a width decord 0.6 cannot output, see ``DECORD_BAD_WIDTHS``,
            is widened by a pixel); None keeps the native size.
        timeout_s: give up (``BadVideo("timeout")``) after this many seconds;
            None or <= 0 decodes inline without a thread.
        num_threads: decoder threads (1 is as fast for short clips and leaves
            cores for other loader workers).
        src_hw: native (height, width) if already known (skips the ~1 ms header probe).

    Raises:
        BadVideo: reason "missing", "empty", "undecodable" or "timeout".
        ValueError: malformed ``indices``.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.min() < 0:
        raise ValueError("indices must be non-negative")
    _check_source(src)
    idx = idx.astype(np.int64, copy=False)
    wanted = np.unique(idx)  # (U,) sorted

    def work() -> np.ndarray:
        height = width = -1
        if short_side or src_hw is not None:
            h, w = src_hw if src_hw is not None else _safe_header_hw(src)
            height, width = target_size(h, w, short_side)
        frames, decoded = _decode_unique(src, wanted, width, height, num_threads)  # (U, H, W, 3)
        if decoded.size == idx.size and np.array_equal(decoded, idx):
            return frames  # already in request order: no gather copy
        pos = np.searchsorted(decoded, np.minimum(idx, decoded[-1]))  # (len(indices),)
        return frames[pos]

    out = _run_with_timeout(work, timeout_s)
    if out.dtype != np.uint8 or out.ndim != 4:
        raise BadVideo("undecodable", f"unexpected decoder output {out.dtype} {out.shape}")
    return out
