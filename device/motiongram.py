"""The motiongram: the one motion feature that both the host and the device use.

Per frame: the absolute difference from the previous grey frame, a noise threshold
(values below it are set to zero, as the Musical Gestures Toolbox does), then the
mean of each column and the mean of each row. The result for one frame is a
vector of ``width + height`` values in [0, 1]: the column means first (where, left
to right, things moved) then the row means (where, top to bottom). The first frame
of a stream has no predecessor and gives all zeros.

With ``scale`` above 1 the frames are ``scale`` times finer in each direction than
the motiongram: the difference and the threshold are taken at that resolution,
and each ``scale`` x ``scale`` block of the thresholded difference is averaged
into one motiongram pixel. A dancer small in the frame moves a few fine pixels
past the threshold where the same motion, averaged into a coarse frame first,
stays under it. Frames finer still, by a whole factor, are area-averaged to the
frame size first (``fit_frames``), as the Pi camera's ISP does.

``motiongram`` (a whole take at once, for training) and ``MotiongramStream`` (one
frame at a time, for the live loop) do the same integer arithmetic and the same
final division, so they give bit-identical numbers.

A frame that only repeats the one before it because the source had no new
picture for that tick (``device.retime``) carries the previous frame's motion
on: re-timing a 25 fps video to 30 fps must not read every sixth frame as a
dancer frozen still.

``MotionGain`` then scales each frame's motion by the dancer's own recent level,
so that a small dancer far from the camera and a close one both reach the model
at the level it learned from; see its docstring.
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
    scale: int = field(default=1, metadata={"min": 1, "max": 4})
    """How many times finer than the motiongram, in each direction, the frames are:
    differences are taken at ``width * scale`` x ``height * scale`` pixels."""

    def check(self) -> list[str]:
        """Problems no single field shows: frames larger than a camera's lores stream."""
        if self.frame_width > 640 or self.frame_height > 480:
            return [f"scale: frames of {self.frame_width}x{self.frame_height} (width and "
                    f"height times scale {self.scale}); expected at most 640x480"]
        return []

    @property
    def frame_width(self) -> int:
        """Width in pixels of the frames the differences are taken on."""
        return self.width * self.scale

    @property
    def frame_height(self) -> int:
        """Height in pixels of the frames the differences are taken on."""
        return self.height * self.scale

    @property
    def features(self) -> int:
        """Length of one frame's motion vector: column means, then row means."""
        return self.width + self.height

    @property
    def threshold_level(self) -> int:
        """The threshold in 8-bit grey levels: differences below it are dropped."""
        return int(np.ceil(self.threshold * 255.0))


def block_mean(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frames (..., k*height, m*width) area-averaged to (..., height, width),
    rounded to the nearest grey level; frames already that size come back as they are."""
    fy, fx = frames.shape[-2] // height, frames.shape[-1] // width
    if (fy, fx) == (1, 1):
        return frames
    blocks = frames.reshape(*frames.shape[:-2], height, fy, width, fx)
    return np.rint(blocks.mean(axis=(-3, -1))).astype(np.uint8)


def fits_frames(width: int, height: int, params: MotiongramParams) -> bool:
    """Whether frames of ``width`` x ``height`` can be read with ``params``: the
    frame size, or a whole multiple of it."""
    return (width >= params.frame_width and height >= params.frame_height
            and not width % params.frame_width and not height % params.frame_height)


def fit_frames(frames: np.ndarray, params: MotiongramParams) -> np.ndarray:
    """Frames at the size ``params`` differences: as they are, or area-averaged from
    a whole multiple of it (a take recorded finer than the model needs)."""
    h, w = params.frame_height, params.frame_width
    if frames.dtype != np.uint8 or frames.ndim < 2 \
            or not fits_frames(frames.shape[-1], frames.shape[-2], params):
        raise ValueError(
            f"frames: expected uint8 of shape (..., {h}, {w}) or a whole multiple of it, "
            f"got {frames.dtype} {frames.shape}")
    return block_mean(frames, h, w)


def _features(diff: np.ndarray, params: MotiongramParams) -> np.ndarray:
    """Column and row means of thresholded differences, the last two axes (H, W),
    each ``scale`` x ``scale`` block of the difference counted as one pixel."""
    diff = np.where(diff >= params.threshold_level, diff, 0).astype(np.int32)
    cols = diff.sum(axis=-2, dtype=np.int32)   # one sum per fine column: over its rows
    rows = diff.sum(axis=-1, dtype=np.int32)   # one sum per fine row: over its columns
    s = params.scale
    if s > 1:                                  # the fine columns (rows) of each block
        cols = cols.reshape(*cols.shape[:-1], params.width, s).sum(axis=-1, dtype=np.int32)
        rows = rows.reshape(*rows.shape[:-1], params.height, s).sum(axis=-1, dtype=np.int32)
    out = np.concatenate([cols.astype(np.float32) / np.float32(params.height * s * s * 255),
                          rows.astype(np.float32) / np.float32(params.width * s * s * 255)],
                         axis=-1)
    return out


def motiongram(frames: np.ndarray, params: MotiongramParams = MotiongramParams()) -> np.ndarray:
    """Motion vectors for a whole take: uint8 (T, H, W) in, float32 (T, W + H) out.

    H and W are the frame size (``frame_height``, ``frame_width``) or a whole
    multiple of it."""
    frames = fit_frames(frames, params)
    if frames.ndim != 3:
        raise ValueError(f"frames: expected 3 dimensions (T, H, W), got {frames.shape}")
    out = np.zeros((len(frames), params.features), np.float32)
    if len(frames) > 1:
        diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16))
        out[1:] = _features(diff, params)
    return out


def ticks_motiongram(frames: np.ndarray, index: np.ndarray,
                     params: MotiongramParams = MotiongramParams(),
                     chunk: int = 1024) -> np.ndarray:
    """The motiongram a camera gives that shows ``frames[index[k]]`` at tick ``k``.

    Where an index repeats the one before it, the tick carries the previous
    tick's motion on (as ``MotiongramStream.push`` with ``repeat``), instead of
    the zero a difference of a frame with itself would give. Works ``chunk``
    distinct frames at a time: an hour of frames at once needs gigabytes.
    """
    index = np.asarray(index, np.intp)
    if not len(index):
        return np.zeros((0, params.features), np.float32)
    new = np.r_[True, index[1:] != index[:-1]]     # ticks that show a new frame
    distinct = index[new]
    motion = np.empty((len(distinct), params.features), np.float32)
    for start in range(0, len(distinct), chunk):
        stop = min(start + chunk, len(distinct))
        # Each chunk after the first starts one frame early, so its first difference
        # is against the frame before it, as in one call over the whole take.
        lead = 1 if start else 0
        motion[start:stop] = motiongram(np.asarray(frames[distinct[start - lead:stop]]),
                                        params)[lead:]
    # Each tick takes the motion of the newest distinct frame at or before it.
    return motion[np.cumsum(new) - 1]


class MotiongramStream:
    """The motiongram one frame at a time, for the live loop.

    Keeps only the previous frame. ``push`` allocates a little (numpy temporaries);
    it runs in the camera/model thread, never in the audio thread.
    """

    def __init__(self, params: MotiongramParams = MotiongramParams()):
        self.params = params
        self._previous: np.ndarray | None = None
        self._motion = np.zeros(params.features, np.float32)

    def reset(self) -> None:
        """Forget the previous frame: the next frame gives zeros, as a first frame does."""
        self._previous = None
        self._motion = np.zeros(self.params.features, np.float32)

    @property
    def last(self) -> np.ndarray:
        """The newest frame's motion vector (zeros before the second frame); read it,
        never write it."""
        return self._motion

    def push(self, frame: np.ndarray, repeat: bool = False) -> np.ndarray:
        """Motion vector (float32, W + H) for ``frame`` against the previous one.

        ``repeat``: the frame only repeats the previous one because the source
        had no new picture for this tick; the previous motion carries on.
        """
        frame = fit_frames(frame, self.params)
        if repeat and self._previous is not None:
            return self._motion.copy()
        current = frame.astype(np.int16)
        previous, self._previous = self._previous, current
        if previous is None:
            self._motion = np.zeros(self.params.features, np.float32)
        else:
            self._motion = _features(np.abs(current - previous), self.params)
        return self._motion     # a fresh array; only a repeat hands out a copy of it


def motion_amount(features: np.ndarray, params: MotiongramParams) -> np.ndarray:
    """How much moved in each frame: the mean of the column means (0 still, 1 all)."""
    return features[..., :params.width].mean(axis=-1)


def stop_between_moves(amount: np.ndarray, move: float = 0.0) -> bool:
    """Whether a window's quantity of motion (``motion_amount`` of each frame, oldest
    first), averaged over 3 frames, had a local minimum one average ago: a
    dancer's stop between moves, the kinetic beat that
    ``train_host.evaluate.motion_beats`` finds in a whole take, known two frames
    after the stillest frame (67 ms at 30 fps). With ``move``, only a stop after
    a move: the window's peak at least that much, so a flicker in a still room is
    none. The corpus voice takes a grain with an attack there, the notes voice
    strikes a note, and the engine strikes a model's sound
    (``device.engine.Strikes``)."""
    if len(amount) < 5:
        return False
    s = np.convolve(amount, np.full(3, 1 / 3, np.float32), mode="valid")
    return bool(s[-2] < s[-3] and s[-2] < s[-1]) and float(amount.max()) >= move


@dataclass(frozen=True)
class MotionGainParams:
    """How motion is scaled to the dancer's own recent level. Recorded in every bundle.

    The quantity of motion a camera reads depends on the room as much as on the
    dance: the same dance fills a frame from close by and moves a few pixels from
    the back of a gallery (the real videos this was tuned on differ 56-fold in
    their mean motion). The gain brings each dancer's typical motion to
    ``reference``, the level the model learned from, while keeping the dance's
    own ups and downs: it follows the level over ``time_s``, far slower than a
    beat.
    """

    reference: float = field(default=0.008, metadata={"min": 0.0, "max": 1.0})
    """Quantity of motion (mean of the column means) a dancer's typical motion is
    brought to; 0 turns the gain off (motion is used as measured)."""
    time_s: float = field(default=8.0, metadata={"min": 0.1, "max": 600.0})
    """Seconds over which the running level follows the motion; after stillness
    this long, the next motion starts the level afresh (a new dancer)."""
    max_gain: float = field(default=50.0, metadata={"min": 1.0, "max": 1000.0})
    """Most amplification (and, inverted, most attenuation) of the motion."""
    floor: float = field(default=0.0001, metadata={"min": 0.0, "max": 1.0})
    """Frames whose quantity of motion is under this (a few pixels flickering)
    do not move the level: an empty room is never turned up to a dancer's level."""

    @property
    def enabled(self) -> bool:
        return self.reference > 0


class MotionGain:
    """Scales motion vectors to the dancer's recent level, one frame at a time.

    Per frame with motion above ``floor``, the running level (a geometric mean,
    so one wild frame does not swamp it) moves toward the frame's quantity of
    motion: as the plain mean of all moving frames for the first ``time_s``,
    then as an exponential average with that time constant. The gain is
    ``sensitivity * reference / level``, within ``max_gain`` either way; a frame
    with no motion stays zero, so stillness stays quiet. Before any motion, and
    with ``reference`` 0, the gain is ``sensitivity`` alone.

    ``push`` (live) and ``apply`` (a whole take) do the same arithmetic, so they
    give bit-identical numbers. Runs in the camera/model thread.
    """

    def __init__(self, params: MotionGainParams, motiongram: MotiongramParams, *,
                 fps: float, sensitivity: float = 1.0):
        self.width, self.fps = motiongram.width, fps
        self.sensitivity = float(sensitivity)
        self.retune(params)
        self.reset()

    def retune(self, params: MotionGainParams) -> None:
        """Take other settings (another model's), keeping the level reached so far."""
        self.params = params
        self._alpha = 1.0 - np.exp(-1.0 / (self.fps * params.time_s))
        self._fresh_after = max(1, round(self.fps * params.time_s))   # still frames

    def set_sensitivity(self, sensitivity: float) -> None:
        """Take another ``sensitivity`` from this frame on, keeping the level reached."""
        self.gain = np.float32(self.gain * (sensitivity / self.sensitivity))
        self.sensitivity = float(sensitivity)

    def reset(self) -> None:
        """Forget the level: the next motion starts it afresh."""
        self._log_level = 0.0
        self._moving = 0       # moving frames since the level started
        self.still_frames = 0
        """Frames since the last one whose motion passed ``floor`` (counted with the
        gain off as well): how long the room has been still."""
        self.gain = np.float32(self.sensitivity)

    def _update(self, amount: float) -> np.float32:
        p = self.params
        if amount <= p.floor:
            self.still_frames += 1
            return self.gain if p.enabled else np.float32(self.sensitivity)
        fresh = self.still_frames >= self._fresh_after
        self.still_frames = 0
        if not p.enabled:
            return np.float32(self.sensitivity)
        if fresh:
            self._moving = 0
        self._moving += 1
        weight = max(1.0 / self._moving, self._alpha)
        self._log_level += (np.log(amount) - self._log_level) * weight
        gain = p.reference / np.exp(self._log_level)
        self.gain = np.float32(self.sensitivity * min(max(gain, 1.0 / p.max_gain), p.max_gain))
        return self.gain

    def push(self, vector: np.ndarray) -> np.ndarray:
        """The frame's motion vector scaled by the gain (a new float32 array)."""
        gain = self._update(float(vector[:self.width].mean(dtype=np.float64)))
        return vector * gain

    def apply(self, motion: np.ndarray) -> np.ndarray:
        """A whole take's motion (T, features), from a fresh level, as ``push`` would."""
        self.reset()
        amounts = motion[:, :self.width].mean(axis=1, dtype=np.float64)
        gains = np.array([self._update(float(a)) for a in amounts], np.float32)
        return motion * gains[:, None]
