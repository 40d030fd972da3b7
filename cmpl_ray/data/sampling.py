"""Frame-index arithmetic for CMPL clips (pure numpy, no decoding).

Why a separate module: the index plan decides *which* frames are decoded, so it
must be cheap, deterministic given an ``np.random.Generator`` and testable
without any video file.

Conventions (paper Sec. 4.1 and Sec. 3.3):

* A *raw clip* is ``raw_len`` consecutive frames (paper: 64).  A network with
  stride ``s`` sees ``raw_len // s`` of them (primary 64/8 = 8 frames, auxiliary
  64/4 = 16 frames).
* The auxiliary window is the primary window shifted by a random integer offset
  of at most ``round(t_s * fps)`` frames (time offset ``t_s``, Table 5), then
  clamped so it stays inside the video.
* Videos shorter than ``raw_len`` are *looped* (index modulo ``num_frames``)
  rather than rejected: short clips are common in Kinetics/UCF and dropping them
  would bias the label distribution.
* Evaluation takes ``num_clips`` windows uniformly over the whole video, centred
  in equal segments (mmaction ``SampleFrames(test_mode=True)``; PySlowFast's
  multi-clip test is the same idea).
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_indices", "sample_train_indices", "eval_clip_starts", "max_start"]


def _check_common(num_frames: int, raw_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if raw_len < 1:
        raise ValueError(f"raw_len must be >= 1, got {raw_len}")


def max_start(num_frames: int, raw_len: int) -> int:
    """Largest window start that keeps ``raw_len`` frames inside the video (0 if shorter)."""
    return max(0, int(num_frames) - int(raw_len))


def clip_indices(num_frames: int, start: int, raw_len: int, stride: int) -> np.ndarray:
    """Indices ``start, start+stride, ...`` of one strided clip -> int64 array of shape (raw_len // stride,).

    Indices past the end wrap around (``% num_frames``) so a video shorter than
    the raw window is looped instead of padded with a repeated last frame.

    Raises:
        ValueError: ``stride`` < 1, ``stride`` does not divide ``raw_len``,
            ``num_frames`` < 1 or ``start`` < 0.
    """
    _check_common(num_frames, raw_len)
    if stride < 1 or raw_len % stride != 0:
        raise ValueError(f"stride {stride} must be >= 1 and divide raw_len {raw_len}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    idx = np.arange(int(start), int(start) + int(raw_len), int(stride), dtype=np.int64)  # (raw_len//stride,)
    return idx % int(num_frames)


def sample_train_indices(
    num_frames: int,
    fps: float,
    raw_len: int,
    primary_stride: int,
    aux_stride: int,
    time_offset_s: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the (primary, auxiliary) training index arrays of one video.

    The primary start is uniform over every valid start ``[0, max_start]``; the
    auxiliary start adds a uniform integer offset in ``[-k, +k]`` with
    ``k = round(time_offset_s * fps)`` and is clamped back into ``[0, max_start]``
    (clamping rather than re-drawing keeps exactly two RNG draws per sample, so
    the plan is reproducible from the seed).  ``time_offset_s == 0`` gives the
    same start for both networks.

    Returns:
        ``(primary, aux)``: int64 arrays of shape ``(raw_len // primary_stride,)``
        and ``(raw_len // aux_stride,)``.
    """
    _check_common(num_frames, raw_len)
    if time_offset_s < 0:
        raise ValueError(f"time_offset_s must be >= 0, got {time_offset_s}")
    if not np.isfinite(fps) or fps <= 0:
        # A broken container can report fps 0/NaN; fall back to no offset rather than crash.
        fps = 0.0
    hi = max_start(num_frames, raw_len)
    p_start = int(rng.integers(0, hi + 1))
    k = int(round(time_offset_s * fps))
    delta = int(rng.integers(-k, k + 1))
    a_start = min(max(p_start + delta, 0), hi)
    primary = clip_indices(num_frames, p_start, raw_len, primary_stride)
    aux = clip_indices(num_frames, a_start, raw_len, aux_stride)
    return primary, aux


def eval_clip_starts(num_frames: int, raw_len: int, num_clips: int) -> list[int]:
    """Starts of ``num_clips`` test windows spread uniformly over the video.

    The ``max_start + 1`` valid starts are split into ``num_clips`` equal
    segments and the centre of each is taken (mmaction's test sampling), so the
    windows cover the whole video symmetrically.  Videos no longer than
    ``raw_len`` give all zeros (each window is then looped by ``clip_indices``).
    """
    _check_common(num_frames, raw_len)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    hi = max_start(num_frames, raw_len)
    seg = (hi + 1) / num_clips
    starts = (np.arange(num_clips) * seg + seg / 2.0).astype(np.int64)
    return [int(s) for s in np.clip(starts, 0, hi)]
