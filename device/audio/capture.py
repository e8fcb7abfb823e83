"""Audio in: the line input (or microphone) a take records, through pyalsaaudio.

``AlsaCapture`` opens an ALSA capture PCM (16-bit mono at the take's sample rate)
and runs a reader thread that reads one period at a time and hands each block to
a callback. The thread never touches the disk: the recorder's writer thread does
that, so an SD card stalling in an fsync cannot overrun the capture buffer. The
callback must only queue the block.

Timing. Sample ``n`` of the capture was taken at ``start_time + n / sample_rate``
seconds on ``time.monotonic()``. ``start_time`` is estimated from the reads
themselves: a read returns once its period has been captured, never before, so
``return time - samples so far / rate`` is the moment of sample 0 plus however
late the thread woke up. The lower envelope of that value over the last
``WINDOW_S`` seconds removes the wake-up delays (and the period's own length,
which is what the samples-so-far count already accounts for), and a window
rather than the minimum of the whole take follows the small drift between the
sound card's crystal and the system clock. What it cannot see is the converter's
own delay (an ADC or a USB interface's group delay, typically 1-3 ms).

An overrun (the thread fell a whole buffer behind) loses samples; the gap is
measured on the clock and filled with silence, so everything after it stays on
the same timeline. A PCM that no sound card backs (ALSA's ``null`` device, or a
``file`` device whose ``infile`` stands in for a line input in tests) returns
reads at once; such a stand-in is paced by the system clock, with a WARNING, as
``AudioStream`` paces a sink that does not block.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from device.errors import AudioError

log = logging.getLogger(__name__)

WINDOW_S = 2.0
"""Seconds of reads whose earliest return defines ``start_time``."""
OVERRUN_LOG_INTERVAL_S = 10.0
"""Overruns are logged at most this often; ``overruns`` counts them all."""
_MAX_GAP_S = 60.0
"""A gap longer than this after an overrun is not filled: the clock is not trusted."""


class LowerEnvelope:
    """The smallest value added over the last ``window_s`` seconds.

    For clocks read through delays that are never negative: the value at the
    least delayed read is the truth, and a window instead of the whole run's
    minimum follows a slow drift. ``reset_above``: a value that far above the
    envelope means the clock itself jumped (a camera that restarted its count),
    so the old values are forgotten.
    """

    def __init__(self, window_s: float = 2.0, *, reset_above: float | None = None):
        self.window_s = window_s
        self.reset_above = reset_above
        self._values: deque[tuple[float, float]] = deque()  # increasing values

    @property
    def value(self) -> float | None:
        return self._values[0][1] if self._values else None

    def add(self, now: float, value: float) -> float:
        """Add ``value`` seen at ``now``; the envelope's value after it."""
        values = self._values
        if self.reset_above is not None and values and value - values[0][1] > self.reset_above:
            values.clear()
        while values and values[-1][1] >= value:
            values.pop()
        values.append((now, value))
        while values[0][0] < now - self.window_s:
            values.popleft()
        return values[0][1]


class AlsaCapture:
    """A capture PCM on the ALSA device named (``default``, ``hw:1,0``, …).

    ``on_audio`` receives each block as float32 mono in [-1, 1] (silence for the
    samples an overrun lost), from the reader thread; it must not block.
    ``period_size`` and ``periods`` are what the device granted.
    """

    def __init__(self, device: str = "default", *, sample_rate: int, period_size: int = 128,
                 periods: int = 16, on_audio: Callable[[np.ndarray], None],
                 pace: bool | None = None, clock: Callable[[], float] = time.monotonic):
        import alsaaudio

        self._alsa = alsaaudio
        self.device = device
        self.sample_rate = int(sample_rate)
        self.name = f"ALSA capture device {device}"
        self._on_audio = on_audio
        self._clock = clock
        try:
            self._pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL, device=device,
                channels=1, rate=self.sample_rate, format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=period_size, periods=periods)
        except alsaaudio.ALSAAudioError as exc:
            raise AudioError(f"ALSA device {device!r}: cannot open for capture ({exc})") from None
        info = self._pcm.info()
        if info["rate"] != self.sample_rate or info["channels"] != 1:
            self._pcm.close()
            raise AudioError(f"ALSA device {device!r}: captures {info['channels']} channel(s) at "
                             f"{info['rate']} Hz, not mono at {self.sample_rate} Hz (use a "
                             f"'plughw:' device to convert)")
        self.period_size, self.periods = info["period_size"], info["periods"]
        if pace is None:
            pace = info.get("card_no", 0) < 0
            if pace:
                log.warning("audio in: %s is backed by no sound card; pacing it by the system "
                            "clock (a stand-in, not a line input)", device)
        self.pace = bool(pace)

        self.samples = 0
        """Samples handed to ``on_audio`` so far, silence for overruns included."""
        self.overruns = 0
        self.padded_samples = 0
        """Silence put in for samples that overruns lost."""
        self.start_time: float | None = None
        """Monotonic time of sample 0 (None until the first block has been read)."""
        self.paced_origin: float | None = None
        """For a paced stand-in, the moment its sample 0 stands for: the stand-in's
        own 'hardware' time (tests compare the estimate with it). None otherwise."""
        self.error: AudioError | None = None
        """What stopped the reader thread, if anything did."""
        self._start = LowerEnvelope(WINDOW_S)
        self._resync = False
        self._logged_overruns = 0
        self._last_overrun_log = -OVERRUN_LOG_INTERVAL_S
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        log.info("audio in: %s at %d Hz, %d periods of %d frames (%.0f ms buffer)", self.name,
                 self.sample_rate, self.periods, self.period_size,
                 1000.0 * self.period_size * self.periods / self.sample_rate)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the reader thread; capture (sample 0) begins with its first read."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audio-in", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop reading and close the device; safe to call twice.

        The thread finishes the read it is in (at most a period) and closes the
        PCM itself, so the device is never closed under a read.
        """
        self._stopping.set()
        thread = self._thread
        if thread is None:
            self._close()
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("audio in: the reader did not stop within %.1f s (%s is not "
                        "returning reads); it closes the device when its read returns",
                        timeout, self.name)

    def time_of(self, seconds_on_clock: float) -> float | None:
        """Where a moment on ``time.monotonic()`` falls on the capture's timeline, in s."""
        start = self.start_time
        return None if start is None else seconds_on_clock - start

    # ---- the reader thread -----------------------------------------------------

    def _run(self) -> None:
        failed_once = False
        try:
            while not self._stopping.is_set():
                try:
                    n, data = self._pcm.read()
                except self._alsa.ALSAAudioError as exc:
                    # A suspended card (ESTRPIPE) or a PCM in a bad state: drop()
                    # returns it to SETUP and the next read prepares it again. A
                    # device that has gone fails that retry too.
                    if failed_once:
                        raise AudioError(f"{self.name}: capture failed ({exc})") from None
                    failed_once = True
                    try:
                        self._pcm.drop()
                    except self._alsa.ALSAAudioError:
                        raise AudioError(f"{self.name}: capture failed ({exc})") from None
                    self._count_overrun(str(exc))
                    continue
                if n == -errno.EPIPE:
                    self._count_overrun("overrun")   # pyalsaaudio prepares it on the next read
                    continue
                if n <= 0:
                    continue
                failed_once = False
                block = np.frombuffer(data, "<i2", count=n).astype(np.float32) / 32767.0
                self._deliver(block)
        except AudioError as exc:
            self.error = exc
            log.error("audio in: %s", exc)
        except Exception as exc:  # noqa: BLE001 - it must reach the recorder, not vanish
            log.exception("audio in: %s failed", self.name)
            self.error = AudioError(f"{self.name}: capture failed ({type(exc).__name__}: {exc})")
        finally:
            self._close()

    def _deliver(self, block: np.ndarray) -> None:
        n = len(block)
        if self.pace:
            if self.paced_origin is None:
                self.paced_origin = self._clock()
            delay = self.paced_origin + (self.samples + n) / self.sample_rate - self._clock()
            if delay > 0 and self._stopping.wait(delay):
                return      # stopped before this block was 'captured': it never was
        now = self._clock()
        if self._resync and self.start_time is not None:
            # Samples were lost: put silence where they were, as long as the clock
            # says, so what follows keeps its place on the timeline.
            lost = round((now - self.start_time) * self.sample_rate) - (self.samples + n)
            if 0 < lost <= _MAX_GAP_S * self.sample_rate:
                self._on_audio(np.zeros(lost, np.float32))
                self.samples += lost
                self.padded_samples += lost
        self._resync = False
        self._on_audio(block)
        self.samples += n
        self.start_time = self._start.add(now, now - self.samples / self.sample_rate)

    def _count_overrun(self, what: str) -> None:
        self.overruns += 1
        self._resync = True
        now = self._clock()
        if now - self._last_overrun_log >= OVERRUN_LOG_INTERVAL_S:
            log.warning("audio in: %s on %s, recovered (%d since the last report, %d in all); "
                        "the lost samples are filled with silence", what, self.name,
                        self.overruns - self._logged_overruns, self.overruns)
            self._last_overrun_log, self._logged_overruns = now, self.overruns

    def _close(self) -> None:
        pcm, self._pcm = getattr(self, "_pcm", None), None
        if pcm is not None:
            try:
                pcm.close()
            except self._alsa.ALSAAudioError as exc:
                log.warning("audio in: closing %s failed: %s", self.name, exc)
