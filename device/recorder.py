"""Recording takes: camera frames and the music danced to, on one timeline.

``TakeRecorder`` is what the record button drives during the performance (the
``Recorder`` protocol of device/performance.py) and what ``python -m device
record`` runs on its own (through ``record_from``); its settings are the
config's ``recorder`` section (``device.config.RecorderConfig``). Each take is written with ``device.session.SessionWriter``
by a writer thread of the take's own; the sound comes from ``audio_in``:

- ``alsa[:DEVICE]``: the line input, captured by ``AlsaCapture``. Each frame's
  moment on ``time.monotonic()`` (its camera time, mapped by the least delayed
  read) is put on the capture's timeline (sample 0 = the moment capture started).
- ``wav:PATH``: a WAV file stands in for the line input (rehearsal, tests): one
  hop of it per frame as frames arrive, so frame ``i`` is at ``i / fps`` and the
  sound is sample-aligned by construction.
- ``track:PATH``: the box plays the track (a WAV, looked up in ``music_dir`` when
  the path does not exist as given) while the camera records; the take's sound is
  the track itself, and each frame is stamped with the track position being heard
  when it arrived, from the playback clock of the ``AudioStream``.

docs/session.md ("How live takes are aligned") gives the arithmetic and its
uncertainty for each.

Threads. ``frame``, ``playback``, ``start`` and ``stop`` are called from the
model thread and must never block it: frames go to the writer through a bounded
queue (a full queue drops the frame and counts it), and opening the take, the
disk and the capture device all happen in the writer thread. A take stopped by
the disk filling up (or a failing write, or the track's end) ends by itself,
cleanly, with ``stopped_reason`` saying why; nothing is raised into the show.

The playback hook. In track mode the performance asks the recorder what to play,
once per frame, just before it pushes the frame's hop::

    hop = recorder.playback(hop)

``playback`` returns the generated hop untouched when no take is recording or
the take is not a track take; otherwise the next part of the track (one hop,
more to start with or to refill the output's queue, or nothing while that
queue is full, so the track is never cut or skipped). Once the whole track has
been handed over it returns the generated hops again, and the take stops itself
when the track's last sample is heard. The recorder reads the stream's clock
through the ``stream`` callable it was given (``lambda: performance.stream``);
with no stream (a run written straight to a WAV file) the frame count is the
clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.audio.capture import LowerEnvelope
from device.errors import AudioError, ConfigError, DanceSamplerError, SessionError
from device.session import DEFAULT_LABEL, SessionInfo, SessionWriter, delete_session

if TYPE_CHECKING:
    from device.audio.capture import AlsaCapture
    from device.audio.stream import AudioStream
    from device.camera import Camera, Frame

log = logging.getLogger(__name__)

_POLL_S = 0.05
"""How often the writer thread looks for work when nothing wakes it."""
_CAPTURE_START_S = 2.0
"""A capture that has delivered nothing this long after the take started has failed."""
_REANCHOR_FRAMES = 3
"""Frames to wait after the playback ran dry before reading its clock again (the
restart's silence lead must have been played by then)."""
_JOIN_S = 5.0
"""Longest a caller waits for a take's writer thread to finish."""
_FRAME_CLOCK_WINDOW_S = 2.0
"""Seconds of frames over which the least delayed read maps camera time to the clock."""
_FRAME_CLOCK_JUMP_S = 0.5
"""A frame read this much later than its camera time says is a camera clock that
jumped (or a stall): the mapping starts again from it."""

def parse_audio_in(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of an ``--audio-in`` spec; ConfigError if it is none of them."""
    kind, _, arg = str(spec).partition(":")
    if kind == "alsa":
        return kind, arg or "default"
    if kind in ("wav", "track") and arg:
        return kind, arg
    raise ConfigError(f"audio input {spec!r}: expected 'alsa', 'alsa:DEVICE', 'wav:PATH' "
                      f"or 'track:PATH'")


def _load_wav(path: Path, sample_rate: int, what: str) -> np.ndarray:
    """The ``what``'s samples at ``sample_rate``, mono: a 16-bit mono WAV at that rate
    as it is; any other audio file PyAV reads (WAV of another kind, FLAC, MP3, Ogg …)
    decoded, mixed to mono and resampled, with one line saying so."""
    from device.audio.wav import read_wav

    try:
        samples, rate = read_wav(path)
    except AudioError:
        if not path.is_file():
            raise
        samples, rate = _decode(path, sample_rate, what), sample_rate
    if rate != sample_rate:
        samples, rate = _decode(path, sample_rate, what), sample_rate
    if not len(samples):
        raise AudioError(f"{path}: the {what} holds no samples")
    return samples


MAX_TRACK_S = 1800.0
"""The longest track decoded (half an hour)."""


def _decode(path: Path, sample_rate: int, what: str) -> np.ndarray:
    import av  # PyAV, as the video camera uses

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: the {what} has no sound")
            stream = container.streams.audio[0]
            source = (f"{stream.codec_context.name}, {stream.rate} Hz, "
                      f"{stream.channels} channel{'' if stream.channels == 1 else 's'}")
            # Planar, every channel resampled as it is, then their mean: a mono mix
            # that never clips (swresample's own mix adds the channels at -3 dB).
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name,
                                          rate=sample_rate)
            pieces, count = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().mean(axis=0))
                    count += len(pieces[-1])
                if count > MAX_TRACK_S * sample_rate:
                    raise AudioError(f"{path}: the {what} is longer than "
                                     f"{MAX_TRACK_S / 60:g} minutes")
            pieces.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    except av.FFmpegError as exc:
        raise AudioError(f"{path}: the {what} cannot be read as audio ({exc})") from None
    log.info("record: %s %s is %s: mixed to mono and resampled to %d Hz", what, path, source,
             sample_rate)
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


class TakeRecorder:
    """Records takes from the frames it is handed and the sound ``audio_in`` names.

    Implements the performance's ``Recorder`` protocol, plus ``playback`` for
    track takes. ``stream``: a callable giving the ``AudioStream`` that plays now
    (or None), read in track mode only. ``capture_pace``: pace the ALSA capture
    by the system clock (None: only a device no sound card backs).
    """

    def __init__(self, root: str | Path, *, audio_in: str, label: str = DEFAULT_LABEL,
                 fps: float, sample_rate: int, width: int = 64, height: int = 48,
                 music_dir: str | Path | None = None, period_size: int = 128,
                 capture_periods: int = 16, capture_pace: bool | None = None,
                 min_free_bytes: int = 200_000_000, queue_frames: int = 120,
                 camera_delay_s: float = 0.0, track_cushion_s: float = 0.1,
                 ring_samples: int | None = None,
                 stream: Callable[[], AudioStream | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, flush_every_s: float = 1.0):
        self.root = Path(root)
        self.kind, arg = parse_audio_in(audio_in)
        self.label = label or DEFAULT_LABEL
        self.fps, self.sample_rate = float(fps), int(sample_rate)
        self.width, self.height = int(width), int(height)
        if self.sample_rate % round(self.fps) or self.fps != round(self.fps):
            raise ConfigError(f"sample rate {self.sample_rate} is not a whole multiple of "
                              f"{self.fps:g} fps")
        self.hop = self.sample_rate // round(self.fps)
        self.period_size, self.capture_periods = int(period_size), int(capture_periods)
        self.capture_pace = capture_pace
        self.min_free_bytes, self.queue_frames = int(min_free_bytes), int(queue_frames)
        self.camera_delay_s = float(camera_delay_s)
        self.ring_samples = ring_samples
        self.stream_source = stream
        self.clock = clock
        self.flush_every_s = flush_every_s
        self.audio: np.ndarray | None = None
        """The wav or track mode's samples (float32), loaded once."""
        self.device: str | None = None
        if self.kind == "alsa":
            self.device = arg
            self.audio_source = f"alsa:{arg}"
        elif self.kind == "wav":
            self.audio = _load_wav(Path(arg), self.sample_rate, "audio input")
            self.audio_source = f"wav:{arg}"
        else:
            self.audio = _load_wav(_find_track(arg, music_dir), self.sample_rate, "track")
            self.audio_source = f"track:{arg}"
        cushion = round(track_cushion_s * self.sample_rate)
        if ring_samples:
            # The first push (cushion + one hop, behind the stream's silence lead)
            # must fit the output's ring with a hop to spare.
            cushion = max(0, min(cushion, ring_samples - 3 * self.hop))
        self.cushion = cushion
        self._take: _Take | None = None
        self._deletable: _Take | None = None
        # Camera time to monotonic time, kept across takes: the camera runs on.
        self._frame_clock = LowerEnvelope(_FRAME_CLOCK_WINDOW_S, reset_above=_FRAME_CLOCK_JUMP_S)

    @classmethod
    def from_config(cls, cfg, *, audio_in: str | None = None, label: str | None = None,
                    root: str | Path | None = None,
                    stream: Callable[[], AudioStream | None] | None = None,
                    **kwargs) -> TakeRecorder:
        """A recorder set up from a ``DeviceConfig`` (its ``recorder`` section and
        camera, audio and motiongram settings); arguments given override it."""
        from device.config import resolve_path

        rc = cfg.recorder
        hop = cfg.audio.sample_rate // cfg.camera.fps
        settings = dict(
            audio_in=audio_in or rc.audio_in, label=label or DEFAULT_LABEL,
            fps=cfg.camera.fps, sample_rate=cfg.audio.sample_rate,
            width=cfg.motiongram.frame_width, height=cfg.motiongram.frame_height,
            music_dir=resolve_path(rc.music_dir), period_size=cfg.audio.period_size,
            capture_periods=rc.capture_periods, min_free_bytes=rc.min_free_mb * 1_000_000,
            queue_frames=rc.queue_frames, camera_delay_s=rc.camera_delay_ms / 1000.0,
            track_cushion_s=rc.track_cushion_ms / 1000.0,
            ring_samples=cfg.audio.queue_hops * hop, stream=stream)
        settings.update(kwargs)
        return cls(root if root is not None else resolve_path(rc.sessions_dir), **settings)

    # ---- the Recorder protocol ---------------------------------------------------

    @property
    def recording(self) -> bool:
        """True from ``start`` until the take is stopped or ends by itself."""
        take = self._take
        return take is not None and take.active

    @property
    def take_path(self) -> Path | None:
        """Folder of the current (or last) take, once the writer has made it."""
        take = self._take
        return take.path if take is not None else None

    @property
    def stopped_reason(self) -> str | None:
        """Why the current or last take ended by itself ("disk full", "track ended",
        "audio input failed: …"); None while recording or after ``stop``."""
        take = self._take
        return take.reason if take is not None else None

    @property
    def dropped_frames(self) -> int:
        """Frames of the current or last take dropped because the writer was behind."""
        take = self._take
        return take.dropped if take is not None else 0

    @property
    def capture(self) -> AlsaCapture | None:
        """The current take's ALSA capture (alsa mode, once it is open)."""
        take = self._take
        return take.capture if take is not None else None

    def start(self, *, wait: bool = False) -> bool:
        """Begin a take. Returns at once; the writer thread opens the take folder
        (and the capture device) so the model thread never waits on the card.

        ``wait``: block until the take is recording, raising the error that kept
        it from starting (a full card, a missing capture device). Without it a
        failure is logged, ``recording`` goes back to False and start returns True.
        """
        if self.recording:
            return True
        previous = self._take
        if previous is not None and self.kind == "alsa" and previous.thread.is_alive():
            # The capture device is still held by the take that is closing.
            previous.thread.join(_JOIN_S)
        take = _Take(self)
        self._take = take
        take.thread.start()
        if wait:
            take.ready.wait()
            if take.error is not None:
                raise take.error
        return take.active

    def stop(self, *, wait: bool = False, timeout: float = 30.0) -> SessionInfo | None:
        """End the take; the writer thread writes what is queued and closes it.

        Returns at once, or with ``wait`` once the take is closed: its
        ``SessionInfo`` (None if it never started).
        """
        take = self._take
        if take is None:
            return None
        take.end(None)
        if not wait:
            return take.info
        take.thread.join(timeout)
        if take.thread.is_alive():
            log.warning("record: take %s is still being written after %.0f s",
                        take.path, timeout)
        return take.info

    def wait(self, timeout: float = 30.0) -> SessionInfo | None:
        """Wait for the current take to be closed (after it ended); its SessionInfo."""
        take = self._take
        if take is None:
            return None
        take.thread.join(timeout)
        return take.info

    def close(self, timeout: float = 2.0) -> None:
        """End any take and wait (at most ``timeout``) until it is closed: for the
        show's shutdown, so a take is not left unclean by the process exiting."""
        take = self._take
        if take is None:
            return
        take.end(None)
        take.thread.join(timeout)
        if take.thread.is_alive():
            log.warning("record: take %s was still being written at shutdown; it is "
                        "readable but not marked clean", take.path)

    def delete_last(self) -> bool:
        """Delete the take this recorder made last; refused (False) while recording.

        Only a take this recorder made, and only the very last one: a second long
        press deletes nothing more, and takes from earlier runs (or imported ones)
        are never touched by a button. The take is gone when this returns True.
        """
        if self.recording:
            log.warning("record: a take is being recorded; stop it before deleting")
            return False
        take = self._deletable
        if take is None:
            log.info("record: no take to delete")
            return False
        take.thread.join(_JOIN_S)
        if take.thread.is_alive():
            log.error("record: take %s is still being written; not deleting it", take.path)
            return False
        self._deletable = None
        if take.path is None:
            return False
        try:
            delete_session(take.path)
        except SessionError as exc:
            log.error("record: %s", exc)
            return False
        log.info("record: deleted the last take %s", take.path.name)
        return True

    def delete_take(self, name: str) -> str | None:
        """Delete the take folder ``name`` under this recorder's root, as
        ``delete_last`` deletes (``session.delete_session``: only a take's own
        files); None when done, else why not (the take being recorded or still
        written, no such take, not a take)."""
        path = self.root / name
        if "/" in name or name.startswith(".") or not path.is_dir() or path.is_symlink():
            return f"no take {name!r} in {self.root}"
        take = self._take
        if take is not None and take.path is not None and take.path.name == name:
            if take.active:
                return f"{name} is being recorded; stop it first"
            take.thread.join(_JOIN_S)
            if take.thread.is_alive():
                return f"{name} is still being written"
        if self._deletable is not None and self._deletable.path is not None \
                and self._deletable.path.name == name:
            self._deletable = None   # a long press later must not find it gone
        try:
            delete_session(path)
        except SessionError as exc:
            log.error("record: %s", exc)
            return str(exc)
        log.info("record: deleted the take %s", name)
        return None

    def frame(self, frame: Frame) -> None:
        """Hand one camera frame to the take, right after it was read. Never blocks;
        call from one thread. While recording is enough; every frame is better (the
        camera's clock is then followed between takes too)."""
        now = self.clock()
        # The moment the frame was taken, on the monotonic clock: its camera time
        # plus the smallest read delay seen lately (a frame read late, behind a
        # busy thread, keeps its camera time), minus the camera's own delay.
        offset = self._frame_clock.add(now, now - frame.timestamp)
        captured_at = frame.timestamp + offset - self.camera_delay_s
        take = self._take
        if take is not None and take.active:
            take.on_frame(frame, now, captured_at)

    def playback(self, generated_hop: np.ndarray) -> np.ndarray:
        """What the sound output plays for this frame (see the module docstring)."""
        take = self._take
        if take is None or self.kind != "track" or not take.active:
            return generated_hop
        return take.playback(generated_hop)


def _find_track(name: str, music_dir: str | Path | None) -> Path:
    given = Path(name).expanduser()
    if given.is_file() or given.is_absolute() or music_dir is None:
        return given
    in_music = Path(music_dir) / given
    if in_music.is_file():
        return in_music
    raise AudioError(f"track {name!r}: no such file (looked in the working folder and "
                     f"in {music_dir})")


class _Take:
    """One take: its writer thread, its queues, and (track mode) the playback position.

    The model thread owns ``on_frame``, ``playback`` and the track state; the
    writer thread owns the SessionWriter; they share the bounded frame queue, the
    audio deque, a few counters (single writers, read by the other side) and the
    ``active`` flag.
    """

    def __init__(self, rec: TakeRecorder):
        self.rec = rec
        self.kind = rec.kind
        self.active = True
        self.reason: str | None = None
        self.error: DanceSamplerError | None = None
        self.path: Path | None = None
        self.info: SessionInfo | None = None
        self.writer: SessionWriter | None = None
        self.capture: AlsaCapture | None = None
        self.ready = threading.Event()
        self.wake = threading.Event()
        self.frames: queue.Queue = queue.Queue(maxsize=rec.queue_frames)
        self.captured: deque[np.ndarray] = deque()
        self.arrived = 0          # wav mode: frames counted onto the timeline
        self.dropped = 0          # frames the full queue refused
        self.skipped = 0          # track mode: before the track began, or in a playback gap
        self.written_audio = 0    # wav/track: samples of rec.audio written (writer thread)
        # Track playback (model thread only).
        self.first = True
        self.stream: AudioStream | None = None
        self.origin: int | None = None   # played-sample count at which track sample 0 plays
        self.pos = 0                      # track samples handed to the output
        self.delivered = 0                # the most ever handed (what the take's audio holds)
        self.last_n = 0
        self.track_done = False
        self.dropped_seen = 0
        self.late_seen = 0
        self.reanchor_in = 0
        self.gaps = 0
        self.last_written: float | None = None    # writer thread: the latest frame time
        self.not_kept = 0                         # frames before time 0 or not after the last
        self.last_stamp: float | None = None      # alsa: the latest frame's read time
        self.thread = threading.Thread(target=self._run, name="take-writer", daemon=True)

    def end(self, reason: str | None) -> None:
        """Stop taking frames; the writer thread finishes the take. Any thread."""
        if self.active:
            self.reason = reason
            self.active = False
            if reason:
                log.info("record: take ending: %s", reason)
        self.wake.set()

    # ---- the model thread ------------------------------------------------------

    def on_frame(self, frame: Frame, now: float, captured_at: float) -> None:
        rec = self.rec
        if self.kind == "alsa":
            stamp = captured_at                      # mapped onto the capture in the writer
            self.last_stamp = stamp
        elif self.kind == "wav":
            index = self.arrived
            if index * rec.hop >= len(rec.audio):
                self.end("audio input ended")
                return
            self.arrived = index + 1
            stamp = index / rec.fps
        else:
            stamp = self._track_time(now - captured_at)
            if stamp is None:
                self.skipped += 1
                return
        try:
            self.frames.put_nowait((np.array(frame.image, np.uint8, copy=True), stamp))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("record: the writer is behind; %d frame(s) dropped", self.dropped)
        self.wake.set()

    def _track_time(self, age: float) -> float | None:
        """Seconds into the track that was being heard when the frame was taken
        (``age`` seconds ago); None when no frame should be kept."""
        if self.origin is None:
            return None            # the track has not reached the output yet
        stream, rec = self.stream, self.rec
        if stream is None:
            heard = self.pos       # no stream: written straight out, one hop per frame
        else:
            if self._stream_changed():
                return None
            stats = stream.stats
            self._observe(stats)
            if self.origin is None:
                return None
            if self.reanchor_in:
                self.reanchor_in -= 1
                if self.reanchor_in:
                    return None
                # The ring's next sample is track sample (pos - queued); it is the
                # next one the card is given, at played-count played_samples.
                self.origin = stats.played_samples - (self.pos - stats.queued_samples)
                log.info("record: playback clock re-anchored after a gap")
                return None
            heard = stats.played_samples - stream.device_buffer_samples - self.origin
        if heard >= len(rec.audio):
            self.end("track ended")
            return None
        return heard / rec.sample_rate - age

    def _stream_changed(self) -> bool:
        source = self.rec.stream_source
        if (source() if source is not None else None) is not self.stream:
            self.end("sound output lost")
            return True
        return False

    def _observe(self, stats) -> None:
        """Follow the stream's drops and gaps since the last look."""
        if stats.dropped_hops > self.dropped_seen:
            # The output refused the block handed over last: hand it over again, so
            # the track is delayed, never skipped.
            self.dropped_seen = stats.dropped_hops
            self.pos -= self.last_n
            self.last_n = 0
            self.track_done = False
            if self.pos <= 0:
                self.pos, self.first, self.origin = 0, True, None
        if stats.late_blocks > self.late_seen:
            # The output ran dry and played silence: the track is now late by an
            # amount the stream does not report. Skip frames until it plays again,
            # then read the clock afresh.
            self.late_seen = stats.late_blocks
            if not self.reanchor_in:
                self.gaps += 1
                log.warning("record: the track's playback ran dry (gap %d); frames are "
                            "skipped until it plays again", self.gaps)
            self.reanchor_in = _REANCHOR_FRAMES

    def playback(self, generated: np.ndarray) -> np.ndarray:
        rec = self.rec
        stats = None
        if not self.first:
            if self.stream is not None:
                if self._stream_changed():
                    return generated
                stats = self.stream.stats
                self._observe(stats)
        if self.track_done:
            return generated
        hop = len(generated)
        if self.first:
            source = rec.stream_source
            self.stream = source() if source is not None else None
            self.first = False
            n = hop
            if self.stream is None:
                self.origin = 0
            else:
                stats = self.stream.stats
                self.dropped_seen, self.late_seen = stats.dropped_hops, stats.late_blocks
                # Track sample 0 plays after what is queued now, and after the
                # silence lead a stream puts ahead of sound when it (re)starts.
                lead = self.stream.lead_samples if stats.queued_samples == 0 else 0
                self.origin = stats.played_samples + stats.queued_samples + lead
                n += rec.cushion
        else:
            n = hop
            if stats is not None:
                queued = stats.queued_samples
                if queued < rec.cushion // 2:
                    n += hop       # the camera ran slow: top the cushion up
                elif rec.ring_samples and queued + n > rec.ring_samples:
                    n = 0          # would be refused: the output has plenty queued
        block = rec.audio[self.pos:self.pos + n]
        self.pos += len(block)
        self.last_n = len(block)
        self.delivered = max(self.delivered, self.pos)
        if self.pos >= len(rec.audio):
            self.track_done = True
        return block

    # ---- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        rec = self.rec
        pending: deque = deque()
        try:
            self.writer = SessionWriter(
                rec.root, label=rec.label, fps=rec.fps, width=rec.width, height=rec.height,
                sample_rate=rec.sample_rate, audio_source=rec.audio_source,
                extra={"recorder": {"audio_in": rec.audio_source, "alignment": _ALIGNMENT[
                    self.kind]}},
                flush_every_s=rec.flush_every_s, min_free_bytes=rec.min_free_bytes)
            self.path = self.writer.path
            if self.kind == "alsa":
                self._open_capture()
        except DanceSamplerError as exc:
            self.error = exc
            self.active = False
            log.error("record: cannot start a take: %s", exc)
            self.ready.set()
            return
        rec._deletable = self
        self.ready.set()
        started = rec.clock()
        try:
            while True:
                self.wake.wait(_POLL_S)
                self.wake.clear()
                stopping = not self.active
                self._write_audio()
                self._write_frames(pending)
                if not self.writer.recording:
                    self.end(self.writer.stopped_reason or "the take stopped writing")
                    break
                capture = self.capture
                if capture is not None:
                    if capture.error is not None:
                        self.end(f"audio input failed: {capture.error}")
                    elif capture.start_time is None and \
                            rec.clock() - started > _CAPTURE_START_S:
                        self.end(f"audio input failed: {capture.name} delivered no sound "
                                 f"in {_CAPTURE_START_S:.0f} s")
                if stopping:
                    break
        except Exception as exc:  # noqa: BLE001 - the take must still be closed
            log.exception("record: writing take %s failed", self.path)
            self.end(f"recorder failed: {type(exc).__name__}: {exc}")
        finally:
            self._finish(pending)

    def _open_capture(self) -> None:
        from device.audio.capture import AlsaCapture

        rec = self.rec
        try:
            self.capture = AlsaCapture(rec.device, sample_rate=rec.sample_rate,
                                       period_size=rec.period_size,
                                       periods=rec.capture_periods, on_audio=self._on_audio,
                                       pace=rec.capture_pace, clock=rec.clock)
        except DanceSamplerError:
            # Nothing was recorded: leave no empty take behind.
            self.writer.abort()
            try:
                delete_session(self.writer.path)
            except SessionError as exc:
                log.warning("record: %s", exc)
            self.path = None
            raise
        self.capture.start()

    def _capture_past_last_frame(self, limit_s: float = 1.0) -> None:
        """Keep capturing until the sound reaches one frame past the last frame, so
        the take's audio covers every frame (the reader may be a period or so behind)."""
        capture, rec = self.capture, self.rec
        deadline = rec.clock() + limit_s
        while capture.running and self.last_stamp is not None and rec.clock() < deadline:
            start = capture.start_time
            if start is not None and \
                    capture.samples / rec.sample_rate >= self.last_stamp - start + 1 / rec.fps:
                return
            time.sleep(0.005)

    def _on_audio(self, block: np.ndarray) -> None:
        # The capture thread: queue only (deque.append is atomic), never write.
        self.captured.append(block)
        self.wake.set()

    def _write_audio(self) -> None:
        writer, rec = self.writer, self.rec
        if self.kind == "alsa":
            blocks = []
            while self.captured:
                blocks.append(self.captured.popleft())
            if blocks:
                writer.add_audio(np.concatenate(blocks))
            return
        end = self.delivered if self.kind == "track" else \
            min(self.arrived * rec.hop, len(rec.audio))
        if end > self.written_audio:
            writer.add_audio(rec.audio[self.written_audio:end])
            self.written_audio = end

    def _write_frames(self, pending: deque) -> None:
        """Write queued frames, one taken from the queue at a time, so the queue's
        bound holds; ``pending`` keeps the one frame waiting for the capture's clock."""
        capture = self.capture
        while self.writer.recording:
            if not pending:
                try:
                    pending.append(self.frames.get_nowait())
                except queue.Empty:
                    return
            image, stamp = pending[0]
            if capture is not None:
                if capture.start_time is None:
                    return                      # wait for the capture's clock
                stamp = stamp - capture.start_time
            pending.popleft()
            if stamp < 0 or (self.last_written is not None and stamp <= self.last_written):
                # Before the take's sound begins (the track not heard yet, the capture
                # not started), or not after the frame before (the music stalled, or
                # the clock mapping settled): a take's frames start at its sound's
                # sample 0 and only move forward.
                self.not_kept += 1
                continue
            self.last_written = stamp
            self.writer.add_frame(image, stamp)

    def _finish(self, pending: deque) -> None:
        self.active = False
        writer = self.writer
        if self.capture is not None:
            self._capture_past_last_frame()
            self.capture.stop()
        if writer is None:
            return
        try:
            if writer.recording:
                self._write_audio()
                self._write_frames(pending)
            unstamped = len(pending) + self.frames.qsize()
            stats = {"dropped_frames": self.dropped + unstamped,
                     "skipped_frames": self.skipped + self.not_kept}
            if self.kind == "track":
                stats["playback_gaps"] = self.gaps
            if self.capture is not None:
                stats.update(capture_overruns=self.capture.overruns,
                             capture_padded_samples=self.capture.padded_samples)
            if self.rec.camera_delay_s and self.kind != "wav":
                stats["camera_delay_ms"] = round(self.rec.camera_delay_s * 1000.0, 3)
            if self.reason and writer.stopped_reason is None:
                stats["ended"] = self.reason
            writer.extra["recorder"].update(stats)
            self.info = writer.close()
        except Exception:  # noqa: BLE001 - leave the take as written, marked not clean
            log.exception("record: closing take %s failed", self.path)
            writer.abort()
        finally:
            self.ready.set()
        if self.info is not None:
            log.info("record: take %s: %d frames (%d dropped), %.1f s of audio%s",
                     self.info.path.name, self.info.frames, self.dropped, self.info.audio_s,
                     f" ({self.reason})" if self.reason else "")


_ALIGNMENT = {
    "alsa": "capture clock: the frame's moment minus the capture's start, on time.monotonic()",
    "wav": "frame count: frame i at i / fps, one hop of the file per frame",
    "track": "playback clock: the track position heard at the frame's moment",
}


# ---- the record command ---------------------------------------------------------

def record_from(camera: Camera, recorder: TakeRecorder, *, stop: threading.Event,
                max_frames: int | None = None,
                stream: AudioStream | None = None) -> SessionInfo | None:
    """Feed a started take from ``camera`` until ``stop``, ``max_frames``, the camera's
    end or the take's own end; in track mode push what ``playback`` gives to
    ``stream`` (started on the first push, so the track starts on a silent stream).
    Stops the take and returns its SessionInfo."""
    silence = np.zeros(recorder.hop, np.float32)
    frames = 0
    try:
        while recorder.recording and not stop.is_set() and \
                (max_frames is None or frames < max_frames):
            frame = camera.read()
            if frame is None:
                break
            recorder.frame(frame)
            if stream is not None:
                hop = recorder.playback(silence)
                stream.push(hop)
                if frames == 0:
                    stream.start()
            frames += 1
    finally:
        info = recorder.stop(wait=True)
    return info


class PeriodSink:
    """A sink with no periods (a WAV file) taking the card's period size, so that a
    stream pacing it renders period-sized blocks and its playback clock, which
    frames are stamped from, ticks every period rather than once a frame."""

    def __init__(self, sink, period_size: int):
        self._sink = sink
        self.period_size = int(period_size)
        self.sample_rate, self.name = sink.sample_rate, sink.name

    def write(self, block: np.ndarray) -> None:
        self._sink.write(block)

    def close(self) -> None:
        self._sink.close()
