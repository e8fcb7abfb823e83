"""The performance loop: frames in, one inference per frame, a hop of sound out.

Per camera frame: the motiongram of the frame joins a sliding window of the last
``window_frames`` motion vectors (the window moves by one frame, never by a whole
segment), the model turns the window into an audio segment, and overlap-add
emits exactly one hop (one frame's worth) of the stream. A run from a video file
into a WAV file therefore holds exactly ``frames * hop`` samples and is
repeatable to the sample.

The window starts full of zeros (no motion), so sound comes from the first frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from device.audio import Sink
from device.bundle import Bundle
from device.camera import Camera
from device.motiongram import MotiongramStream
from device.overlap_add import OverlapAdd
from device.runtime import Performer

log = logging.getLogger(__name__)


class MotionWindow:
    """The last ``frames`` motion vectors, oldest first, as one contiguous array.

    Each vector is written twice into a buffer of twice the window's length, so
    the current window is always a plain slice: no copy, no roll, per frame.
    """

    def __init__(self, frames: int, features: int):
        self.frames = frames
        self._buffer = np.zeros((2 * frames, features), np.float32)
        self._next = 0

    def push(self, vector: np.ndarray) -> np.ndarray:
        i = self._next
        self._buffer[i] = vector
        self._buffer[i + self.frames] = vector
        self._next = (i + 1) % self.frames
        return self._buffer[self._next:self._next + self.frames]


@dataclass
class RunStats:
    """What a run did, for the closing log line and the tests."""

    frames: int = 0
    samples: int = 0
    wall_s: float = 0.0
    compute_ms: list[float] = field(default_factory=list)
    """Per frame: motiongram, inference and overlap-add, in milliseconds."""

    def summary(self, sample_rate: int) -> str:
        ms = np.asarray(self.compute_ms or [0.0])
        return (f"{self.frames} frames, {self.samples / sample_rate:.2f} s of audio in "
                f"{self.wall_s:.2f} s; compute per frame {np.median(ms):.2f} ms median, "
                f"{np.percentile(ms, 99):.2f} ms 99th percentile")


class Engine:
    """Camera to sink through one bundle's model."""

    def __init__(self, bundle: Bundle, *, volume: float = 1.0, runtime: str = "auto",
                 threads: int = 1):
        m = bundle.manifest
        self.bundle = bundle
        self.volume = np.float32(volume)
        self.performer = Performer(bundle.performer, runtime=runtime, threads=threads,
                                   where=str(bundle.path))
        self.motiongram = MotiongramStream(m.motiongram)
        self.window = MotionWindow(m.window_frames, m.motiongram.features)
        self.overlap_add = OverlapAdd(m.audio.segment_samples, m.audio.hop_samples)
        self.hop = m.audio.hop_samples
        self._out = np.zeros(self.hop, np.float32)

    def step(self, image: np.ndarray) -> np.ndarray:
        """One camera frame in, one hop of audio out (a reused buffer)."""
        window = self.window.push(self.motiongram.push(image))
        hop = self.overlap_add.push(self.performer(window))
        np.multiply(hop, self.volume, out=self._out)
        # A hard ceiling so no model can drive the output past full scale.
        return np.clip(self._out, -1.0, 1.0, out=self._out)

    def run(self, camera: Camera, sink: Sink, *, max_frames: int | None = None) -> RunStats:
        """Play until the camera ends or ``max_frames`` frames have been played."""
        stats = RunStats()
        started = time.monotonic()
        while max_frames is None or stats.frames < max_frames:
            frame = camera.read()
            if frame is None:
                break
            t0 = time.perf_counter()
            hop = self.step(frame.image)
            stats.compute_ms.append((time.perf_counter() - t0) * 1000.0)
            sink.write(hop)
            stats.frames += 1
            stats.samples += len(hop)
        stats.wall_s = time.monotonic() - started
        return stats
