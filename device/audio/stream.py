"""Live playback decoupled from the model: a ring buffer and an audio thread.

The camera/model thread ``push``es one hop per frame; a dedicated thread named
"audio" pulls blocks of the sink's period size and writes them to the sink. The
two only share a preallocated float32 ring whose indices are guarded by one lock
held for a few microseconds, so neither can hold up the other:

- ``push`` never blocks and never waits for the sound card: when the ring is full
  the new hop is dropped and counted.
- The audio thread never waits for the model: when the ring runs dry it holds the
  last sample and fades it to zero, then plays silence until the ring is refilled,
  then fades back in. It must not allocate buffers per block (they are made once,
  here), take any lock but the ring's, or log per block (warnings are rate-limited).

Every block passes through a smoothed master volume and a limiter, so no model
output can exceed full scale or blast the room.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from device.audio import Sink
from device.errors import AudioError

log = logging.getLogger(__name__)

PREFILL_TIMEOUT_S = 0.5
"""How long the audio thread waits for the first audio before it starts the card anyway."""
LIMITER_ATTACK_S = 0.001
"""The limiter's gain falls to what a block needs over this long (the knee covers it)."""
LIMITER_RELEASE_S = 0.05
"""Time constant with which the limiter's gain recovers once the peaks are gone."""
VOLUME_SMOOTHING_S = 0.02
"""Time constant with which the master volume follows ``set_volume``."""
WARNING_INTERVAL_S = 10.0
"""The audio thread logs a starved ring at most this often."""


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of what the stream has done, for the log and the tests."""

    played_samples: int
    """Samples written to the sink, silence and fades included."""
    late_blocks: int
    """Blocks that had to be padded because the ring ran dry, and the silent blocks
    written while it refilled."""
    dropped_hops: int
    """Hops ``push`` refused because the ring was full."""
    underruns: int
    """Underruns the sink recovered from (0 where the sink does not count them)."""
    queued_samples: int
    """Samples in the ring now."""
    max_queued_samples: int
    """The most samples the ring has held."""


class AudioStream:
    """Plays hops pushed by one producer thread through ``sink`` from a thread of its own.

    ``capacity_hops`` bounds the ring, and with it the latency the stream can add;
    ``prefill_hops`` of audio are queued before playback starts or resumes after
    the ring ran dry, to absorb the jitter of the camera and the model. Blocks are
    ``sink.period_size`` samples where the sink has one, else one hop.

    ``margin_ms``: hops arrive whole, once a frame, while the sink takes its
    buffer's fill at once; so (re)starting on bare audio would run the ring dry
    just before the next hop, every frame. With a margin, each (re)start puts
    silence ahead of the first hop: the sink's buffer plus ``margin_ms``. Then a
    hop sounds (device buffer + margin) after it is pushed, and the ring never
    holds less than the margin when the next hop arrives: latency and jitter
    headroom are both set here, not by whole hops of prefill.

    ``pace``: a sink whose ``write`` returns at once (a WAV file, ALSA's null or
    file device) would let the audio thread spin out silence as fast as the CPU
    allows, so the thread then keeps to the sample clock itself. ``None`` paces
    every sink but a real sound card (``AlsaSink``), whose blocking ``write`` is
    the clock; pacing a card too would drift against its crystal over months.
    """

    def __init__(self, sink: Sink, *, hop_samples: int, capacity_hops: int = 8,
                 prefill_hops: int = 2, volume: float = 0.8, fade_ms: float = 30.0,
                 limiter_threshold: float = 0.9, pace: bool | None = None,
                 margin_ms: float | None = None, on_block: Callable[[], None] | None = None):
        if hop_samples < 1:
            raise ValueError(f"hop_samples must be at least 1, not {hop_samples}")
        if not 0 <= prefill_hops <= capacity_hops or capacity_hops < 1:
            raise ValueError(f"need 0 <= prefill_hops <= capacity_hops and capacity_hops >= 1, "
                             f"not {prefill_hops} and {capacity_hops}")
        if not fade_ms > 0:
            raise ValueError(f"fade_ms must be above 0, not {fade_ms}")
        if not 0 < limiter_threshold < 1:
            raise ValueError(f"limiter_threshold must be between 0 and 1, not {limiter_threshold}")
        self._check_volume(volume)
        self.sink = sink
        # Called from the audio thread after each block reaches the sink: it must
        # only note the time (the service's watchdog uses it), never block.
        self._on_block = on_block or (lambda: None)
        self.sample_rate = int(sink.sample_rate)
        self.hop_samples = hop_samples
        self.block_samples = int(getattr(sink, "period_size", None) or hop_samples)
        self.threshold = float(limiter_threshold)
        if pace is None:
            from device.audio.alsa import AlsaSink

            pace = not isinstance(sink, AlsaSink)
        self.pace = pace
        sr, block = self.sample_rate, self.block_samples

        self._capacity = capacity_hops * hop_samples
        self.lead_samples = 0 if margin_ms is None else \
            self.device_buffer_samples + round(margin_ms * sr / 1000.0)
        # Resuming with less than a block queued would starve again at once.
        self._resume_samples = self.lead_samples + max(prefill_hops * hop_samples,
                                                       min(block, self._capacity))
        if self._resume_samples > self._capacity:
            raise ValueError(f"a ring of {capacity_hops} hops ({self._capacity} samples) cannot "
                             f"hold the {self._resume_samples} samples needed to start")
        self._fade_samples = max(1, round(fade_ms * sr / 1000.0))

        # Ring state. The producer owns _written, the audio thread _read; both are
        # read and advanced under _lock, and the audio thread also copies out under
        # it (a few hundred samples), so a producer that fades queued audio after a
        # drop can never race the reader.
        self._ring = np.zeros(self._capacity, np.float32)
        self._written = 0
        self._read = 0
        self._lock = threading.Lock()
        self._data_ready = threading.Condition(self._lock)
        self._max_queued = 0
        self._dropped = 0
        self._resync = False

        # Audio-thread state and its buffers, made once.
        self._raw = np.zeros(block, np.float32)
        self._env = np.zeros(block, np.float32)
        self._gain = np.zeros(block, np.float32)
        self._tmp = np.zeros(block, np.float32)
        self._mask = np.zeros(block, bool)
        self._out = np.zeros(block, np.float32)
        self._fade_steps = (np.arange(1, block + 1) / self._fade_samples).astype(np.float32)
        self._block_ramp = (np.arange(1, block + 1) / block).astype(np.float32)
        attack = max(1, min(block, round(LIMITER_ATTACK_S * sr)))
        self._attack_ramp = (np.arange(1, attack + 1) / attack).astype(np.float32)
        self._release_alpha = 1.0 - math.exp(-block / (LIMITER_RELEASE_S * sr))
        self._volume_alpha = 1.0 - math.exp(-block / (VOLUME_SMOOTHING_S * sr))
        self._volume_target = float(volume)
        self._volume = float(volume)
        self._limiter_gain = 1.0
        self._env_level = 0.0   # 0: silent, 1: full; fades move it by 1/fade_samples a sample
        self._playing = False   # taking audio from the ring (else holding or silent)
        self._starved = False   # the ring ran dry and has not been refilled yet
        self._lead_due = True   # the next push starts (or restarts) the sound
        self._last = np.float32(0.0)
        self._played = 0
        self._late_blocks = 0
        self._starvations = 0
        self._last_warning = -WARNING_INTERVAL_S
        self._warned_starvations = 0

        self._thread: threading.Thread | None = None
        self._stopping = False    # the audio thread is to fade out and finish
        self._stop_called = False
        self._wake = threading.Event()
        self._error: AudioError | None = None
        self._error_reported = False
        self._sink_closed = False

    # The producer's side -------------------------------------------------------

    def push(self, hop: np.ndarray) -> bool:
        """Queue one hop (copied); False where it was dropped because the ring is full.

        Never blocks. Call it from one thread only. Raises the ``AudioError`` that
        stopped the audio thread, if one did.
        """
        if self._error is not None:
            self._error_reported = True
            raise self._error
        if self._stop_called:
            return False
        n = len(hop)
        if n > self._capacity:
            raise ValueError(f"a hop of {n} samples cannot fit a ring of {self._capacity}")
        with self._lock:
            if self._lead_due and self.lead_samples:
                self._queue_lead()
            free = self._capacity - (self._written - self._read)
            start = self._written
        if n > free:
            # A full ring means the audio thread is not taking audio (a stalled or
            # slow sink). Dropping the newest hop keeps the latency within
            # capacity_hops and leaves the reader's indices alone (overwriting the
            # oldest would move the reader's position from the producer's thread);
            # the first hop accepted afterwards is cross-faded, so the gap is
            # heard as a brief dip, not a click.
            self._dropped += 1
            self._resync = True
            return False
        # [start, start + n) is invisible to the reader until _written moves, so the
        # copy needs no lock.
        pos = start % self._capacity
        first = min(n, self._capacity - pos)
        self._ring[pos:pos + first] = hop[:first]
        if n > first:
            self._ring[:n - first] = hop[first:]
        with self._lock:
            if self._resync:
                self._crossfade_join(start, n)
                self._resync = False
            self._written = start + n
            queued = self._written - self._read
            self._max_queued = max(self._max_queued, queued)
            if queued >= self._resume_samples:
                self._data_ready.notify()
        return True

    @classmethod
    def from_config(cls, sink: Sink, audio, *, hop_samples: int, **kwargs) -> AudioStream:
        """The stream the device config's ``audio`` section describes: one hop of
        prefill plus ``margin_ms``, its ring, fades, limiter, volume and clock."""
        if kwargs.get("pace") is None:
            kwargs["pace"] = {"auto": None, "card": False, "system": True}[audio.clock]
        return cls(sink, hop_samples=hop_samples, capacity_hops=audio.queue_hops,
                   prefill_hops=1, margin_ms=audio.margin_ms, volume=audio.volume,
                   fade_ms=audio.fade_ms, limiter_threshold=audio.limiter_threshold, **kwargs)

    def _queue_lead(self) -> None:
        """Under the lock, with the stream idle: silence ahead of the next hop."""
        if self._written - self._read + self.lead_samples <= self._capacity:
            index = np.arange(self._written, self._written + self.lead_samples) % self._capacity
            self._ring[index] = 0.0
            self._written += self.lead_samples
        self._lead_due = False

    @property
    def device_buffer_samples(self) -> int:
        """Samples the sink holds ahead of the speaker: the ALSA buffer, or for a
        paced stand-in the two blocks ``_keep_time`` lets it run ahead."""
        if self.pace:
            return 2 * self.block_samples
        return int(getattr(self.sink, "period_size", 0) or 0) * \
            int(getattr(self.sink, "periods", 0) or 0)

    def _crossfade_join(self, start: int, n: int) -> None:
        """Fade out the audio queued before a drop and fade in the hop after it.

        Runs in the producer's thread, under the lock, only after a drop.
        """
        head = min(self._fade_samples, n)
        self._scale_ring(start, np.linspace(0.0, 1.0, head + 2, dtype=np.float32)[1:-1])
        tail = min(self._fade_samples, start - self._read)
        if tail > 0:
            self._scale_ring(start - tail,
                             np.linspace(1.0, 0.0, tail + 2, dtype=np.float32)[1:-1])

    def _scale_ring(self, start: int, ramp: np.ndarray) -> None:
        index = np.arange(start, start + len(ramp)) % self._capacity
        self._ring[index] *= ramp

    # Control -------------------------------------------------------------------

    def start(self) -> None:
        """Start the audio thread; it begins once ``prefill_hops`` are queued."""
        if self._thread is not None or self._stop_called:
            return
        log.info("audio: stream to %s, %d-sample blocks, ring of %.0f ms, prefill %.0f ms%s",
                 self.sink.name, self.block_samples, 1000.0 * self._capacity / self.sample_rate,
                 1000.0 * self._resume_samples / self.sample_rate,
                 ", paced by the system clock" if self.pace else "")
        self._thread = threading.Thread(target=self._run, name="audio", daemon=True)
        self._thread.start()

    def set_volume(self, volume: float) -> None:
        """Master volume in [0, 1]; the output glides there over about 20 ms."""
        self._check_volume(volume)
        self._volume_target = float(volume)

    @staticmethod
    def _check_volume(volume: float) -> None:
        if not 0.0 <= volume <= 1.0:
            raise ValueError(f"volume must be between 0 and 1, not {volume}")

    def stop(self, timeout: float = 2.0) -> None:
        """Fade out, stop the audio thread and close the sink; safe to call twice.

        Waits at most ``timeout`` seconds and logs a WARNING if the thread is stuck
        in the sink's ``write``; the thread then closes the sink itself once that
        returns, so the sink is never closed under a write. Raises the
        ``AudioError`` that stopped the audio thread, unless ``push`` already did.
        """
        if not self._stop_called:
            self._stop_called = True
            with self._lock:
                self._stopping = True
                self._data_ready.notify_all()
            self._wake.set()
            if self._thread is None:
                self._close_sink()
            else:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    log.warning("audio: the audio thread did not stop within %.1f s (%s is not "
                                "taking audio); it will close it if its write returns",
                                timeout, self.sink.name)
        if self._error is not None and not self._error_reported:
            self._error_reported = True
            raise self._error

    def __enter__(self) -> AudioStream:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def stats(self) -> StreamStats:
        with self._lock:
            queued, max_queued = self._written - self._read, self._max_queued
        return StreamStats(played_samples=self._played, late_blocks=self._late_blocks,
                           dropped_hops=self._dropped,
                           underruns=int(getattr(self.sink, "underruns", 0)),
                           queued_samples=queued, max_queued_samples=max_queued)

    @property
    def buffer_latency_s(self) -> float:
        """Seconds from ``push`` to the speaker, at most, for audio pushed now.

        The audio queued in the ring plus the sink's whole buffer
        (``period_size * periods``, where the sink says), which ALSA keeps nearly
        full while it plays. Camera and model time come on top.
        """
        with self._lock:
            queued = self._written - self._read
        period = getattr(self.sink, "period_size", None)
        periods = getattr(self.sink, "periods", None)
        device = period * periods if period and periods else 0
        return (queued + device) / self.sample_rate

    # The audio thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._lock:
                # The card is not started (so cannot underrun) until the first write;
                # give the model a moment to queue enough to start without a gap.
                self._data_ready.wait_for(
                    lambda: self._stopping or self._written - self._read >= self._resume_samples,
                    PREFILL_TIMEOUT_S)
            started = time.monotonic()
            while self._render():
                self.sink.write(self._out)
                self._played += self.block_samples
                self._on_block()
                if self.pace:
                    started = self._keep_time(started)
        except Exception as exc:   # noqa: BLE001 - it must reach push()/stop(), not vanish
            if isinstance(exc, AudioError):
                self._error = exc
            else:
                log.exception("audio: %s failed", self.sink.name)
                self._error = AudioError(f"{self.sink.name}: playback failed "
                                         f"({type(exc).__name__}: {exc})")
            log.error("audio: playback stopped: %s", self._error)
        finally:
            self._close_sink()

    def _close_sink(self) -> None:
        if self._sink_closed:
            return
        self._sink_closed = True
        try:
            self.sink.close()
        except Exception as exc:   # noqa: BLE001
            if self._error is None:
                self._error = exc if isinstance(exc, AudioError) else AudioError(
                    f"{self.sink.name}: could not close ({type(exc).__name__}: {exc})")
            else:
                log.warning("audio: closing %s after an error failed too: %s", self.sink.name, exc)

    def _keep_time(self, started: float) -> float:
        """Sleep while more than two blocks ahead of the clock; returns the clock's origin."""
        ahead = self._played / self.sample_rate - (time.monotonic() - started)
        lead = 2.0 * self.block_samples / self.sample_rate
        if ahead > lead:
            self._wake.wait(ahead - lead)
        elif ahead < -lead:
            # The sink held the thread up; carry on from now rather than rush to catch up.
            started -= ahead
        return started

    def _render(self) -> bool:
        """Fill ``self._out`` with the next block; False once the stop fade has finished."""
        block, raw, env, out, tmp = self.block_samples, self._raw, self._env, self._out, self._tmp
        with self._lock:
            if self._stopping and self._env_level <= 0.0:
                return False
            queued = self._written - self._read
            if (not self._playing and not self._stopping and self._env_level <= 0.0
                    and queued >= self._resume_samples):
                self._playing, self._starved = True, False
            n = 0
            if self._playing:
                n = min(queued, block)
                pos = self._read % self._capacity
                first = min(n, self._capacity - pos)
                raw[:first] = self._ring[pos:pos + first]
                if n > first:
                    raw[first:n] = self._ring[:n - first]
                self._read += n

        if n:
            # A model that emits NaN or infinity is silenced, not passed to the card.
            np.abs(raw[:n], out=tmp[:n])
            if not math.isfinite(float(tmp[:n].max())):
                np.nan_to_num(raw[:n], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            self._last = raw[n - 1]
        rising = 0
        if self._stopping:
            pass
        elif self._playing and n == block:
            rising = block
        elif self._playing:
            # The ring ran dry mid-block: play what there is, then fade the last
            # sample out (held, not repeated audio) and wait to refill.
            rising = n
            self._playing, self._starved = False, True
            self._lead_due = True
            self._late_blocks += 1
            self._starvations += 1
            self._warn_starved()
        elif self._starved:
            self._late_blocks += 1
        if n < block:
            raw[n:] = self._last

        level = self._ramp(env[:rising], self._env_level, 1.0)
        self._env_level = self._ramp(env[rising:], level, -1.0)
        np.multiply(raw, env, out=out)

        v0, target = self._volume, self._volume_target
        if v0 != target:
            v1 = v0 + (target - v0) * self._volume_alpha
            if abs(v1 - target) < 1e-4:
                v1 = target
            np.multiply(self._block_ramp, v1 - v0, out=self._gain)
            self._gain += v0
            out *= self._gain
            self._volume = v1
        elif v0 != 1.0:
            out *= np.float32(v0)

        self._limit(out)
        return True

    def _ramp(self, env: np.ndarray, level: float, direction: float) -> float:
        """Fill ``env`` with a fade from ``level`` in ``direction``; the level it ends at."""
        if len(env) == 0:
            return level
        if (direction > 0 and level >= 1.0) or (direction < 0 and level <= 0.0):
            env.fill(1.0 if direction > 0 else 0.0)
            return 1.0 if direction > 0 else 0.0
        np.multiply(self._fade_steps[:len(env)], direction, out=env)
        env += np.float32(level)
        np.clip(env, 0.0, 1.0, out=env)
        return float(env[-1])

    def _limit(self, out: np.ndarray) -> None:
        """Bring block peaks down to the threshold; never let a sample reach past ±1.

        The gain drops within ~1 ms to what this block needs (the block itself is
        the look-ahead), then recovers with a ~50 ms time constant. Whatever still
        exceeds the threshold (the attack ramp, a single wild sample) goes through a
        soft knee, ``thr + (1 - thr) * tanh((|x| - thr) / (1 - thr))``: continuous
        in value and slope at the threshold, and below 1 for any input.
        """
        thr, tmp, gain = self.threshold, self._tmp, self._gain
        np.abs(out, out=tmp)
        peak = float(tmp.max())
        needed = 1.0 if peak <= thr else thr / peak
        g0 = self._limiter_gain
        if needed < g0:
            attack = self._attack_ramp
            gain.fill(needed)
            np.multiply(attack, needed - g0, out=gain[:len(attack)])
            gain[:len(attack)] += np.float32(g0)
            out *= gain
            self._limiter_gain = needed
        elif g0 < 1.0:
            g1 = g0 + (needed - g0) * self._release_alpha
            if needed - g1 < 1e-4:
                g1 = needed
            np.multiply(self._block_ramp, g1 - g0, out=gain)
            gain += np.float32(g0)
            out *= gain
            self._limiter_gain = g1
        else:
            return
        np.abs(out, out=tmp)
        if float(tmp.max()) > thr:
            np.greater(tmp, thr, out=self._mask)
            tmp -= np.float32(thr)
            tmp /= np.float32(1.0 - thr)
            np.tanh(tmp, out=tmp)
            tmp *= np.float32(1.0 - thr)
            tmp += np.float32(thr)
            np.copysign(tmp, out, out=tmp)
            np.copyto(out, tmp, where=self._mask)

    def _warn_starved(self) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_S:
            log.warning("audio: the model fell behind and the sound faded out (%d times since "
                        "the last report, %d in all)",
                        self._starvations - self._warned_starvations, self._starvations)
            self._last_warning, self._warned_starvations = now, self._starvations
