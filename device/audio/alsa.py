"""ALSA playback through pyalsaaudio (imported only here).

The device is opened for 16-bit mono at the stream's rate with the period size
and count from the config; a rate the device cannot run at exactly is refused
rather than played at the wrong pitch. Writes block until ALSA has taken the
block, which paces a loop that is faster than real time.

An underrun (the card played everything it had: an xrun) is recovered from,
counted in ``underruns`` and logged at most every few seconds, never per block:
on a box that runs for months one late frame must not end the performance.
An error that keeps coming back (``FAILING_ERRORS`` within ``FAILING_WINDOW_S``)
is a device that is failing, not one that was late: that ends playback with an
``AudioError``, so the performance reopens the card and says it has no sound.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import time
from collections import deque

import numpy as np

from device.audio import to_int16
from device.errors import AudioError

log = logging.getLogger(__name__)

XRUN_LOG_INTERVAL_S = 10.0
"""Underruns are logged at most this often; the count says how many there were."""
FAILING_ERRORS = 4
FAILING_WINDOW_S = 1.0
"""This many errors within this many seconds: the device is failing, not late."""


_ErrorHandler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p)


@contextlib.contextmanager
def alsa_lib_quiet():
    """Keep libasound's own error lines (``ALSA lib confmisc.c:855: …``, eight of
    them for a missing card) off stderr while a device is opened: the one line
    that ``AudioError`` gives says what went wrong. Where its error handler cannot
    be set (no libasound.so.2, no callback), they are printed as before."""
    try:
        lib = ctypes.CDLL("libasound.so.2")
        handler = _ErrorHandler(lambda *_: None)
        lib.snd_lib_error_set_handler(handler)
    except (OSError, AttributeError, MemoryError):
        yield
        return
    try:
        yield
    finally:
        lib.snd_lib_error_set_handler(None)


class AlsaSink:
    """A playback PCM on the ALSA device named (``default``, ``hw:1,0``, …).

    ``period_size`` and ``periods`` are what the device granted, not what was
    asked for; ``underruns`` counts the interruptions recovered from.
    """

    def __init__(self, device: str = "default", *, sample_rate: int, period_size: int = 128,
                 periods: int = 2):
        import alsaaudio

        self._alsa = alsaaudio
        self.sample_rate = sample_rate
        self.name = f"ALSA device {device}"
        self.underruns = 0
        self._logged_underruns = 0
        self._last_xrun_log = -XRUN_LOG_INTERVAL_S
        self._errors: deque[float] = deque(maxlen=FAILING_ERRORS)
        try:
            with alsa_lib_quiet():
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
        """Play one block; recover from one underrun or suspend on the way, not two."""
        if self._pcm is None:
            raise AudioError(f"{self.name}: written to after close")
        data = memoryview(to_int16(block)).cast("B")
        recovered = False
        while data:
            try:
                frames = self._pcm.write(data)
            except self._alsa.ALSAAudioError as exc:
                # Anything but an underrun arrives as an exception: a suspended
                # card (ESTRPIPE), a PCM in a bad state, or a device that has gone.
                # drop() returns the PCM to SETUP, and pyalsaaudio prepares it again
                # on the next write; a device that has gone fails that retry too.
                if recovered or self._failing():
                    raise AudioError(f"{self.name}: playback failed ({exc})") from None
                recovered = True
                try:
                    self._pcm.drop()
                except self._alsa.ALSAAudioError:
                    raise AudioError(f"{self.name}: playback failed ({exc})") from None
                self._count_underrun(str(exc))
                continue
            if frames == -errno.EPIPE:
                # pyalsaaudio 0.11 has already called snd_pcm_prepare(); the data
                # was not written, so write it again, once.
                if recovered:
                    raise AudioError(f"{self.name}: underran twice in one write; the card "
                                     "is not being fed fast enough to recover")
                recovered = True
                self._count_underrun("underrun")
                continue
            if frames < 0:
                raise AudioError(f"{self.name}: playback failed (error {frames})")
            data = data[2 * frames:]

    def _failing(self) -> bool:
        """Note one error; True once they come back too often to be late writes."""
        now = time.monotonic()
        self._errors.append(now)
        return len(self._errors) == FAILING_ERRORS and now - self._errors[0] < FAILING_WINDOW_S

    def _count_underrun(self, what: str) -> None:
        self.underruns += 1
        now = time.monotonic()
        if now - self._last_xrun_log >= XRUN_LOG_INTERVAL_S:
            log.warning("audio: %s on %s, recovered (%d since the last report, %d in all)",
                        what, self.name, self.underruns - self._logged_underruns, self.underruns)
            self._last_xrun_log, self._logged_underruns = now, self.underruns

    def close(self) -> None:
        if self._pcm is not None:
            pcm, self._pcm = self._pcm, None
            try:
                pcm.drain()
            except self._alsa.ALSAAudioError as exc:
                raise AudioError(f"{self.name}: could not finish playback ({exc})") from None
            finally:
                pcm.close()
