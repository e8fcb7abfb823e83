"""A video file as a camera: any container PyAV can read, as 64x48 grey frames.

A stand-in for the Pi camera (testing, demos, rehearsing a piece from a recording)
and the picture half of importing dance videos. The whole picture is resized to
the frame size, aspect ratio not kept, so no part of a portrait or landscape
video falls out of view; swscale's area filter averages the pixels each output
pixel covers, which also keeps compression noise out of the motiongram.

Frames are re-timed to the requested frame rate by ``device.retime``: output
frame ``k`` shows the latest source frame at or before ``k / fps`` seconds, as a
camera sampling the scene at that rate would, and a source frame shown a second
time is marked as a repeat.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from device.camera import Frame
from device.errors import CameraError
from device.retime import retime

log = logging.getLogger(__name__)


class VideoFileCamera:
    """Frames from a video file, re-timed to ``fps`` and resized to grey."""

    def __init__(self, path: str | Path, *, fps: float | None = None, width: int = 64,
                 height: int = 48, paced: bool = False):
        import av  # PyAV; only this adapter needs it

        self.path = Path(path)
        self.width, self.height, self.paced = width, height, paced
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise CameraError(f"{self.path}: cannot open as a video ({_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise CameraError(f"{self.path}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate:
            self._container.close()
            raise CameraError(f"{self.path}: video stream has no frame rate")
        self.source_fps = float(rate)
        self.fps = float(fps) if fps else self.source_fps
        self.name = f"video file {self.path.name} ({self.source_fps:g} fps read at {self.fps:g})"
        self._frames = self._retimed()
        self._started: float | None = None

    def read(self) -> Frame | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        if self.paced:
            if self._started is None:
                self._started = time.monotonic()
            delay = self._started + frame.timestamp - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return frame

    def close(self) -> None:
        self._frames.close()
        self._container.close()

    def _decoded(self):
        """(seconds from the first frame, grey image) for every decodable frame."""
        import av

        first = None
        try:
            for frame in self._container.decode(self._stream):
                if frame.time is None:
                    continue
                first = frame.time if first is None else first
                image = frame.to_ndarray(format="gray", width=self.width,
                                         height=self.height, interpolation="AREA")
                yield frame.time - first, np.ascontiguousarray(image, dtype=np.uint8)
        except av.FFmpegError as exc:
            raise CameraError(f"{self.path}: cannot decode video ({_reason(exc)})") from None

    def _retimed(self):
        any_frame = False
        for k, image, repeat in retime(self._decoded(), fps=self.fps,
                                       source_fps=self.source_fps):
            any_frame = True
            yield Frame(image, k / self.fps, repeat)
        if not any_frame:
            raise CameraError(f"{self.path}: no decodable video frames")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_video_frames(path: str | Path, *, fps: float | None = None, width: int = 64,
                      height: int = 48) -> tuple[np.ndarray, float]:
    """Every frame of a video at once: uint8 (T, height, width) and the frame rate used."""
    camera = VideoFileCamera(path, fps=fps, width=width, height=height)
    try:
        frames = []
        while (frame := camera.read()) is not None:
            frames.append(frame.image)
        return np.stack(frames), camera.fps
    finally:
        camera.close()
