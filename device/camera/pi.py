"""The Raspberry Pi camera through picamera2 (imported only here).

A lores YUV420 stream whose luma plane is the grey picture. The ISP is asked for
the frame size directly; where it cannot scale that far down (the size found
after ``configure()`` differs), it delivers a larger lores image that is
area-averaged down in numpy by a whole factor. Exposure and gain are fixed after
a short settling time so that lighting drift is not seen as motion. Captures are
not queued (``queue=False``, two buffers): each read is the newest frame, never a
stale one, and its timestamp is the sensor's own.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from device.camera import Frame
from device.errors import CameraError
from device.motiongram import block_mean

log = logging.getLogger(__name__)

# The ISP scales lores down from the main stream; this main size is small enough
# for a whole-factor reduction to 64x48 (10x) and large enough for a binned mode.
_MAIN_SIZE = (640, 480)
_SETTLE_S = 1.0


def pi_camera_available() -> bool:
    """True where picamera2 imports and libcamera lists at least one camera."""
    try:
        from picamera2 import Picamera2
    except Exception:  # ImportError, or libcamera failing to load off a Pi
        return False
    try:
        return bool(Picamera2.global_camera_info())
    except Exception:
        return False


class PiCamera:
    """Frames from the Pi camera's lores luma plane at ``fps``."""

    paced = True

    def __init__(self, *, fps: float, width: int = 64, height: int = 48,
                 fixed_exposure: bool = True):
        try:
            from picamera2 import Picamera2
        except Exception as exc:
            raise CameraError(f"Pi camera: picamera2 is not available ({exc}); install "
                              "python3-picamera2 and use a venv with --system-site-packages") from None
        self.fps, self.width, self.height = float(fps), width, height
        frame_us = int(round(1e6 / fps))
        try:
            self._camera = Picamera2()
            config = self._camera.create_video_configuration(
                main={"size": _MAIN_SIZE, "format": "YUV420"},
                lores={"size": (width, height), "format": "YUV420"},
                buffer_count=2, queue=False,
                controls={"FrameDurationLimits": (frame_us, frame_us)})
            self._camera.configure(config)
            lores = self._camera.camera_config["lores"]
            self._size = tuple(lores["size"])
            self._stride = int(lores.get("stride") or self._size[0])
            self._camera.start()
        except Exception as exc:
            raise CameraError(f"Pi camera: cannot start ({exc})") from None
        lw, lh = self._size
        if (lw, lh) != (width, height) and (lw % width or lh % height):
            self.close()
            raise CameraError(f"Pi camera: lores stream came out {lw}x{lh}, not a whole "
                              f"multiple of {width}x{height}")
        self._factor = (lh // height, lw // width)
        if self._factor != (1, 1):
            log.info("camera: ISP gives %dx%d; area-averaging to %dx%d", lw, lh, width, height)
        if fixed_exposure:
            self._fix_exposure()
        self.name = f"Pi camera ({lw}x{lh} lores at {self.fps:g} fps)"
        self._first_ns: int | None = None

    def _fix_exposure(self) -> None:
        """Let auto exposure settle, then hold exposure, gain and white balance."""
        time.sleep(_SETTLE_S)
        metadata = self._camera.capture_metadata()
        self._camera.set_controls({"AeEnable": False, "AwbEnable": False,
                                   "ExposureTime": metadata["ExposureTime"],
                                   "AnalogueGain": metadata["AnalogueGain"]})
        log.info("camera: exposure held at %d us, gain %.2f", metadata["ExposureTime"],
                 metadata["AnalogueGain"])

    def read(self) -> Frame | None:
        try:
            request = self._camera.capture_request()
        except Exception as exc:
            raise CameraError(f"Pi camera: capture failed ({exc})") from None
        try:
            buffer = request.make_buffer("lores")
            stamp_ns = int(request.get_metadata().get("SensorTimestamp", time.monotonic_ns()))
        finally:
            request.release()
        lw, lh = self._size
        luma = np.frombuffer(buffer, np.uint8, count=self._stride * lh).reshape(lh, self._stride)
        image = luma[:, :lw]
        fy, fx = self._factor
        if (fy, fx) != (1, 1):
            image = block_mean(image, self.height, self.width)
        else:
            image = image.copy()  # the buffer belongs to the camera
        if self._first_ns is None:
            self._first_ns = stamp_ns
        return Frame(image, (stamp_ns - self._first_ns) / 1e9)

    def close(self) -> None:
        camera, self._camera = getattr(self, "_camera", None), None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()
