"""The motiongram: the one motion feature that both the host and the device use.

Per frame: the absolute difference from the previous grey frame, a noise threshold
(values below it are set to zero, as the Musical Gestures Toolbox does), then the
mean of each column and the mean of each row. The result for one frame is a
vector of ``width + height`` values in [0, 1]: the column means first (where, left
to right, things moved) then the row means (where, top to bottom). The first frame
of a stream has no predecessor and gives all zeros.

``motiongram`` (a whole take at once, for training) and ``MotiongramStream`` (one
frame at a time, for the live loop) do the same integer arithmetic and the same
final division, so they give bit-identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MotiongramParams:
    """How frames become motion features. Recorded in every bundle."""

    width: int = field(default=64, metadata={"min": 8, "max": 640})
    """Frame width in pixels; the motiongram has this many column means."""
    height: int = field(default=48, metadata={"min": 8, "max": 480})
    """Frame height in pixels; the motiongram has this many row means."""
    threshold: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    """Differences below this fraction of full scale count as sensor noise (0)."""

    @property
    def features(self) -> int:
        """Length of one frame's motion vector: column means, then row means."""
        return self.width + self.height

    @property
    def threshold_level(self) -> int:
        """The threshold in 8-bit grey levels: differences below it are dropped."""
        return int(np.ceil(self.threshold * 255.0))


def _check_frames(frames: np.ndarray, params: MotiongramParams) -> None:
    if frames.dtype != np.uint8 or frames.shape[-2:] != (params.height, params.width):
        raise ValueError(
            f"frames: expected uint8 of shape (..., {params.height}, {params.width}), "
            f"got {frames.dtype} {frames.shape}")


def _features(diff: np.ndarray, params: MotiongramParams) -> np.ndarray:
    """Column and row means of thresholded differences, the last two axes (H, W)."""
    diff = np.where(diff >= params.threshold_level, diff, 0).astype(np.int32)
    cols = diff.sum(axis=-2, dtype=np.int32)   # one sum per column: over H rows
    rows = diff.sum(axis=-1, dtype=np.int32)   # one sum per row: over W columns
    out = np.concatenate([cols.astype(np.float32) / np.float32(params.height * 255),
                          rows.astype(np.float32) / np.float32(params.width * 255)],
                         axis=-1)
    return out


def motiongram(frames: np.ndarray, params: MotiongramParams = MotiongramParams()) -> np.ndarray:
    """Motion vectors for a whole take: uint8 (T, H, W) in, float32 (T, W + H) out."""
    _check_frames(frames, params)
    if frames.ndim != 3:
        raise ValueError(f"frames: expected 3 dimensions (T, H, W), got {frames.shape}")
    out = np.zeros((len(frames), params.features), np.float32)
    if len(frames) > 1:
        diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16))
        out[1:] = _features(diff, params)
    return out


class MotiongramStream:
    """The motiongram one frame at a time, for the live loop.

    Keeps only the previous frame. ``push`` allocates a little (numpy temporaries);
    it runs in the camera/model thread, never in the audio thread.
    """

    def __init__(self, params: MotiongramParams = MotiongramParams()):
        self.params = params
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame: the next frame gives zeros, as a first frame does."""
        self._previous = None

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Motion vector (float32, W + H) for ``frame`` against the previous one."""
        _check_frames(frame, self.params)
        current = frame.astype(np.int16)
        previous, self._previous = self._previous, current
        if previous is None:
            return np.zeros(self.params.features, np.float32)
        return _features(np.abs(current - previous), self.params)


def motion_amount(features: np.ndarray, params: MotiongramParams) -> np.ndarray:
    """How much moved in each frame: the mean of the column means (0 still, 1 all)."""
    return features[..., :params.width].mean(axis=-1)
