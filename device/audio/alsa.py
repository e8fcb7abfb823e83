"""ALSA playback through pyalsaaudio (imported only here).

The device is opened for 16-bit mono at the stream's rate with the period size
and count from the config; a rate the device cannot run at exactly is refused
rather than played at the wrong pitch. Writes block until ALSA has taken the
block, which paces a loop that is faster than real time.
"""

from __future__ import annotations

import logging

import numpy as np

from device.audio import to_int16
from device.errors import AudioError

log = logging.getLogger(__name__)


class AlsaSink:
    """A playback PCM on the ALSA device named (``default``, ``hw:1,0``, …)."""

    def __init__(self, device: str = "default", *, sample_rate: int, period_size: int = 256,
                 periods: int = 4):
        import alsaaudio

        self._alsa = alsaaudio
        self.sample_rate = sample_rate
        self.name = f"ALSA device {device}"
        try:
            self._pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_PLAYBACK, mode=alsaaudio.PCM_NORMAL, device=device,
                channels=1, rate=sample_rate, format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=period_size, periods=periods)
        except alsaaudio.ALSAAudioError as exc:
            raise AudioError(f"ALSA device {device!r}: cannot open for playback ({exc})") from None
        info = self._pcm.info()
        if info["rate"] != sample_rate:
            self._pcm.close()
            raise AudioError(f"ALSA device {device!r}: runs at {info['rate']} Hz, not the "
                             f"model's {sample_rate} Hz (use a 'plughw:' device to resample)")
        self.period_size, self.periods = info["period_size"], info["periods"]
        log.info("audio: %s at %d Hz, %d periods of %d frames (%.1f ms buffer)", self.name,
                 sample_rate, self.periods, self.period_size,
                 1000.0 * self.period_size * self.periods / sample_rate)

    def write(self, block: np.ndarray) -> None:
        data = to_int16(block).tobytes()
        while data:
            try:
                frames = self._pcm.write(data)
            except self._alsa.ALSAAudioError as exc:
                raise AudioError(f"{self.name}: playback failed ({exc})") from None
            if frames < 0:
                raise AudioError(f"{self.name}: playback failed (error {frames})")
            data = data[2 * frames:]

    def close(self) -> None:
        if self._pcm is not None:
            try:
                self._pcm.drain()
            finally:
                self._pcm.close()
                self._pcm = None
