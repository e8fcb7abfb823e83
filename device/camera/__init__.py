"""Camera sources: where the 64x48 grey frames come from.

Each source yields ``Frame`` objects, one per camera frame, and returns ``None``
at the end of its stream (a video file that has run out, a dancer with a set
length). Real hardware (``PiCamera``) and stand-ins (``VideoFileCamera``,
``SyntheticDancer``) sit side by side behind the one small ``Camera`` protocol;
``open_camera`` chooses between them from a spec string and logs a WARNING
whenever a stand-in is in use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device.errors import CameraError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One grey camera frame."""

    image: np.ndarray
    """uint8 array of shape (height, width), 0 black to 255 white."""
    timestamp: float
    """Seconds since the source started, from the source's own clock."""
    repeat: bool = False
    """The same picture as the frame before, because the source had no new one
    for this tick (a video slower than the camera): not a moment of stillness."""


class Camera(Protocol):
    """What the live loop needs from any frame source."""

    fps: float
    """Frames per second the source delivers."""
    paced: bool
    """True when frames arrive in real time, False when read as fast as possible."""
    name: str
    """A short human description, for logs and the status line."""

    def read(self) -> Frame | None:
        """Return the next frame, or ``None`` when the stream has ended."""

    def close(self) -> None:
        """Release the device or file; safe to call twice."""


def open_camera(spec: str, *, fps: float, width: int, height: int,
                paced: bool | None = None, seed: int = 0) -> Camera:
    """Open the camera that ``spec`` names.

    ``spec`` is ``pi``, ``synthetic``, ``video:PATH`` or ``auto`` (the Pi camera
    where picamera2 and a camera are present, else the synthetic dancer).
    ``paced`` chooses real-time pacing for the stand-ins (default: not paced).
    """
    kind, _, arg = spec.partition(":")
    if kind == "auto":
        from device.camera.pi import pi_camera_available

        kind = "pi" if pi_camera_available() else "synthetic"
    if kind == "pi":
        from device.camera.pi import PiCamera

        return PiCamera(fps=fps, width=width, height=height)
    if kind == "synthetic":
        from device.camera.synthetic import SyntheticDancer

        log.warning("camera: using the synthetic dancer stand-in, not a real camera")
        return SyntheticDancer(fps=fps, width=width, height=height, seed=seed,
                               paced=bool(paced))
    if kind == "video" and arg:
        from device.camera.video import VideoFileCamera

        log.warning("camera: using video file %s as a stand-in for the camera", arg)
        return VideoFileCamera(arg, fps=fps, width=width, height=height,
                               paced=bool(paced))
    raise CameraError(f"camera {spec!r}: expected 'auto', 'pi', 'synthetic' or 'video:PATH'")
