"""Recorded takes: the session format, written on the box and read on the host.

A take is one folder, ``<root>/<YYYYMMDDTHHMMSSZ>-<label>/``, holding
``session.yaml`` (what the take is), ``frames.u8`` (raw grey frames, appended),
``frames.t`` (one float64 capture time per frame) and ``audio.wav`` (16-bit mono,
appended). This module is the only definition of the format: the box's recorder
and the host's importers write takes with ``SessionWriter``; the dataset and the
``sessions`` command read them with ``read_session`` and ``session_info``. The
spec for people is docs/session.md.

The writer must never overwrite anything (each take gets a folder of its own,
made with an exclusive mkdir) and must never lose more than the last second of a
take: every ``flush_every_s`` of data the files are fsynced and the WAV header
patched, so a take cut off by a power failure reads back up to its last flush.
When the card fills up the take stops cleanly and the writer goes quiet; it never
raises from ``add_frame``/``add_audio`` for a full or failing disk, because the
performance has to go on.

Readers never modify a take. They tolerate what a crash leaves behind (a torn
last frame, a stale WAV header, one more frame than timestamps) and list it in
``SessionInfo.problems``; they raise ``SessionError`` only for a folder that
cannot be used at all.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import stat
import struct
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from device.audio import to_int16
from device.config import read_small_yaml
from device.errors import SessionError

log = logging.getLogger(__name__)

FORMAT = "dancesampler-session"
FORMAT_VERSION = 1
INFO_FILE = "session.yaml"
FRAMES_FILE = "frames.u8"
TIMES_FILE = "frames.t"
AUDIO_FILE = "audio.wav"
MAX_LABEL = 40
DEFAULT_LABEL = "take"

_TMP_INFO = ".session.yaml.tmp"
_TAKE_FILES = frozenset({INFO_FILE, FRAMES_FILE, TIMES_FILE, AUDIO_FILE, _TMP_INFO})
_TAKE_NAME = re.compile(r"(\d{8}T\d{6}Z)-([a-z0-9_-]+)")


def is_take_name(name: str) -> bool:
    """Whether a folder name has the form of a take (``20261121T143000Z-label``)."""
    return bool(_TAKE_NAME.fullmatch(name))
_WAV_HEADER_BYTES = 44
# RIFF sizes are 32-bit; a header can name at most this much audio. Past it the
# reader goes by the file size anyway (27 hours at 22050 Hz).
_WAV_MAX_DATA = 0xFFFFFFFF - 36
# How far audio and frames may end apart before a reader mentions it: a capture
# stream and a camera that stop within a second of each other are normal.
_LENGTH_SLACK_S = 1.0




@dataclass(frozen=True)
class SessionInfo:
    """What a take holds, from its ``session.yaml`` and the sizes of its files."""

    path: Path
    label: str
    fps: float
    """Nominal camera frames per second (the timestamps are the truth)."""
    width: int
    height: int
    sample_rate: int
    audio_source: str
    """Where the sound came from: ``alsa:hw:1``, ``track:music/song.wav``, ``import:…``."""
    started: str
    """UTC start time, ISO 8601 with milliseconds (``2026-11-21T14:30:00.000Z``)."""
    clean: bool
    """True when the writer stopped the take itself and left consistent files."""
    frames: int
    """Whole frames that have a timestamp (what a reader returns)."""
    audio_samples: int
    extra: dict = field(default_factory=dict)
    """Free-form source information (importers put theirs here)."""
    problems: tuple[str, ...] = ()
    """Everything a reader noticed and worked around, one phrase each."""

    @property
    def duration_s(self) -> float:
        """Length of the frames at the nominal frame rate, in seconds."""
        return self.frames / self.fps if self.fps > 0 else 0.0

    @property
    def audio_s(self) -> float:
        """Length of the audio, in seconds."""
        return self.audio_samples / self.sample_rate if self.sample_rate > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description, as ``sessions --json`` prints it."""
        return {"path": str(self.path), "label": self.label, "started": self.started,
                "duration_s": round(self.duration_s, 3), "frames": self.frames,
                "audio_s": round(self.audio_s, 3), "audio_samples": self.audio_samples,
                "clean": self.clean, "fps": self.fps, "width": self.width,
                "height": self.height, "sample_rate": self.sample_rate,
                "audio_source": self.audio_source, "extra": self.extra,
                "problems": list(self.problems)}


@dataclass(frozen=True)
class Session:
    """A take read back: frames, their capture times, and the audio."""

    info: SessionInfo
    frames: np.ndarray
    """uint8 (T, height, width), read-only (a memory map of frames.u8 when T > 0)."""
    timestamps: np.ndarray
    """float64 (T,): seconds on the audio's timeline when each frame was captured."""
    audio: np.ndarray
    """float32 (N,) mono samples in [-1, 1]; sample 0 is time 0."""


def sanitize_label(label: str | None) -> str:
    """A label reduced to lowercase ``[a-z0-9_-]``, at most 40 characters, else "take"."""
    text = unicodedata.normalize("NFKD", str(label or "")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9_-]+", "_", text.strip().lower())
    return text.strip("_-")[:MAX_LABEL].strip("_-") or DEFAULT_LABEL


# ---- writing ---------------------------------------------------------------------

class SessionWriter:
    """Records one take: frames with their capture times, and audio, appended.

    ``add_frame`` and ``add_audio`` return True while the take is recording and
    False once it has stopped (closed, aborted, or stopped by a full or failing
    disk: see ``stopped_reason``). They may block for an fsync about once per
    ``flush_every_s``, so call them from a recorder thread, not the audio callback.
    They are safe to call from two threads (camera and audio capture).
    """

    def __init__(self, root: str | os.PathLike, *, label: str = DEFAULT_LABEL, fps: float,
                 width: int = 64, height: int = 48, sample_rate: int, audio_source: str,
                 started: datetime | None = None, extra: dict | None = None,
                 flush_every_s: float = 1.0, min_free_bytes: int = 200_000_000):
        root = Path(root)
        _check_params(root, fps=fps, width=width, height=height, sample_rate=sample_rate,
                      audio_source=audio_source, flush_every_s=flush_every_s)
        self.label = sanitize_label(label)
        self.fps = float(fps)
        self.width, self.height, self.sample_rate = int(width), int(height), int(sample_rate)
        self.audio_source = audio_source
        self.extra = dict(extra or {})
        try:
            yaml.safe_dump(self.extra)
        except yaml.YAMLError as exc:
            raise SessionError(f"{root}: extra must hold plain YAML values ({exc})") from None
        start = _utc(started or datetime.now(timezone.utc))
        self.started = _iso(start)
        self.flush_every_s = float(flush_every_s)
        self.min_free_bytes = int(min_free_bytes)

        self.frames = 0
        self.audio_samples = 0
        self.stopped_reason: str | None = None
        """Why the take stopped by itself ("disk full", "write failed: …"), else None."""
        self._closed = False
        self._data_s = 0.0       # the latest moment of the take that has been written
        self._flushed_s = 0.0    # ... and of it, what is safely on the card
        self._last_t: float | None = None
        self._warned_order = False
        self._lock = threading.Lock()

        try:
            root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(root).free
        except OSError as exc:
            raise SessionError(f"{root}: cannot make a folder for takes ({exc.strerror})") from None
        if free < self.min_free_bytes:
            raise SessionError(f"{root}: only {free / 1e6:.0f} MB free, a take needs at least "
                               f"{self.min_free_bytes / 1e6:.0f} MB")
        self.path = _make_take_folder(root, start.strftime("%Y%m%dT%H%M%SZ"), self.label)
        self._files: list = []
        try:
            # Exclusive creation: a take never writes over anything, even a stray file.
            self._frames = self._open(FRAMES_FILE)
            self._times = self._open(TIMES_FILE)
            self._audio = self._open(AUDIO_FILE)
            _write_all(self._audio, _wav_header(self.sample_rate, 0))
            for f in self._files:
                os.fsync(f.fileno())
            # session.yaml last: a folder that has one always has its three files.
            self._write_info(clean=False)
        except OSError as exc:
            self._discard_empty_take()
            raise SessionError(f"{self.path}: cannot start the take "
                               f"({exc.strerror or exc})") from None
        log.info("take %s: recording (%s)", self.path.name, self.audio_source)

    @property
    def recording(self) -> bool:
        return not self._closed

    def add_frame(self, image: np.ndarray, timestamp: float) -> bool:
        """Append one uint8 (height, width) frame captured at ``timestamp`` seconds."""
        image = np.asarray(image)
        if image.shape != (self.height, self.width) or image.dtype != np.uint8:
            raise SessionError(f"{self.path}: frame is {image.dtype} {image.shape}, expected "
                               f"uint8 ({self.height}, {self.width})")
        t = float(timestamp)
        if not math.isfinite(t):
            raise SessionError(f"{self.path}: frame timestamp {timestamp!r} is not a number")
        with self._lock:
            if self._closed:
                return False
            if self._last_t is not None and t <= self._last_t and not self._warned_order:
                self._warned_order = True
                log.warning("take %s: frame timestamp %.4f s is not after %.4f s",
                            self.path.name, t, self._last_t)
            try:
                _write_all(self._frames, np.ascontiguousarray(image).tobytes())
                _write_all(self._times, struct.pack("<d", t))
            except OSError as exc:
                self._stop_on_error(exc)
                return False
            self.frames += 1
            self._last_t = t
            self._data_s = max(self._data_s, t)
            return self._maybe_flush()

    def add_audio(self, samples: np.ndarray) -> bool:
        """Append mono audio: float samples in [-1, 1] (or int16, written as they are)."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise SessionError(f"{self.path}: audio block has shape {samples.shape}, "
                               f"expected mono (N,)")
        if samples.dtype == np.int16:
            data = samples.astype("<i2", copy=False)
        elif np.issubdtype(samples.dtype, np.floating):
            data = to_int16(samples)
        else:
            raise SessionError(f"{self.path}: audio block is {samples.dtype}, "
                               f"expected float or int16")
        with self._lock:
            if self._closed:
                return False
            if not len(data):
                return True
            try:
                _write_all(self._audio, data.tobytes())
            except OSError as exc:
                self._stop_on_error(exc)
                return False
            self.audio_samples += len(data)
            self._data_s = max(self._data_s, self.audio_samples / self.sample_rate)
            return self._maybe_flush()

    def flush(self) -> bool:
        """Put everything written so far safely on the card now; False if the take stopped."""
        with self._lock:
            return not self._closed and self._flush()

    def close(self) -> SessionInfo:
        """Stop the take and mark it clean; safe to call again (after ``abort`` too)."""
        with self._lock:
            if not self._closed:
                self._finish(clean=True)
                log.info("take %s: stopped, %d frames, %.1f s of audio", self.path.name,
                         self.frames, self.audio_samples / self.sample_rate)
        return session_info(self.path)

    def abort(self, *, discarded: bool = False) -> None:
        """Stop without marking the take clean; everything written is kept (unless
        the caller says it will discard the folder, when nothing is said of it)."""
        with self._lock:
            if not self._closed:
                self._finish(clean=False)
                if not discarded:
                    log.warning("take %s: aborted, kept %d frames and %.1f s of audio "
                                "unmarked", self.path.name, self.frames,
                                self.audio_samples / self.sample_rate)

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # -- inside the lock --------------------------------------------------------------

    def _maybe_flush(self) -> bool:
        if self._data_s - self._flushed_s >= self.flush_every_s:
            return self._flush()
        return True

    def _flush(self) -> bool:
        try:
            free = shutil.disk_usage(self.path).free
            if free < self.min_free_bytes:
                log.error("take %s: only %.0f MB left on the card; stopping the take",
                          self.path.name, free / 1e6)
                self._stop("disk full")
                return False
            for f in self._files:
                os.fsync(f.fileno())
            # The header names only audio that is already on the card, so it is
            # never ahead of the data, even after a power cut.
            self._patch_wav_header(self.audio_samples * 2)
        except OSError as exc:
            self._stop_on_error(exc)
            return False
        self._flushed_s = self._data_s
        return True

    def _stop_on_error(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "disk full"
        else:
            reason = f"write failed: {exc.strerror or exc}"
        log.error("take %s: %s (%s); stopping the take", self.path.name, reason, exc)
        self._stop(reason)

    def _stop(self, reason: str) -> None:
        self.stopped_reason = reason
        self._finish(clean=True)

    def _finish(self, *, clean: bool) -> None:
        """Settle, sync and close the files; rewrite session.yaml when ``clean``."""
        self._closed = True
        try:
            self._settle()
        except OSError as exc:
            # Files left as they are still read back; only the promise of
            # consistency is withdrawn.
            log.error("take %s: could not settle its files (%s); left marked not clean",
                      self.path.name, exc)
            clean = False
        for f in self._files:
            try:
                f.close()
            except OSError as exc:
                log.error("take %s: closing %s failed (%s)", self.path.name, f.name, exc)
        if clean:
            try:
                self._write_info(clean=True)
            except OSError as exc:
                log.error("take %s: could not mark it clean (%s)", self.path.name, exc)

    def _settle(self) -> None:
        """Cut the files to what they wholly hold, so a clean take has no torn tail.

        After a failed write the counters may be ahead of or behind the files; the
        file sizes are the truth.
        """
        frame_bytes = self.width * self.height
        frames_size = os.fstat(self._frames.fileno()).st_size
        times_size = os.fstat(self._times.fileno()).st_size
        n = min(frames_size // frame_bytes, times_size // 8)
        if frames_size != n * frame_bytes:
            self._frames.truncate(n * frame_bytes)
        if times_size != n * 8:
            self._times.truncate(n * 8)
        audio_size = os.fstat(self._audio.fileno()).st_size
        data = max(0, audio_size - _WAV_HEADER_BYTES) // 2 * 2
        if audio_size != _WAV_HEADER_BYTES + data:
            self._audio.truncate(_WAV_HEADER_BYTES + data)
        self._patch_wav_header(data)
        for f in self._files:
            os.fsync(f.fileno())
        self.frames, self.audio_samples = n, data // 2

    def _patch_wav_header(self, data_bytes: int) -> None:
        # pwrite leaves the append position alone.
        header = _wav_header(self.sample_rate, data_bytes)
        if os.pwrite(self._audio.fileno(), header, 0) != len(header):
            raise OSError(errno.EIO, "short write of the WAV header")

    def _write_info(self, *, clean: bool) -> None:
        data: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "label": self.label,
            "fps": self.fps, "width": self.width, "height": self.height,
            "sample_rate": self.sample_rate, "audio_source": self.audio_source,
            "started": self.started, "clean": clean}
        if clean:
            data["frames"] = self.frames
            data["audio_samples"] = self.audio_samples
        if self.stopped_reason:
            data["stopped"] = self.stopped_reason
        if self.extra:
            data["extra"] = self.extra
        text = ("# A dancesampler take; the format is described in docs/session.md.\n"
                + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        tmp = self.path / _TMP_INFO
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path / INFO_FILE)
        fsync_dir(self.path)

    def _open(self, name: str):
        # Unbuffered: each add_* is one write() into the page cache, so a killed
        # process loses nothing it was handed; fsync is what survives a power cut.
        f = open(self.path / name, "xb", buffering=0)
        self._files.append(f)
        return f

    def _discard_empty_take(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        try:
            for name in _TAKE_FILES:
                (self.path / name).unlink(missing_ok=True)
            self.path.rmdir()
        except OSError as exc:
            log.warning("take %s: could not remove the failed take folder (%s)", self.path, exc)


def _check_params(root: Path, **values: Any) -> None:
    problems = []
    fps = values["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
        problems.append(f"fps must be a positive number, got {fps!r}")
    for key in ("width", "height", "sample_rate"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            problems.append(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(values["audio_source"], str) or not values["audio_source"]:
        problems.append(f"audio_source must be a non-empty string, got {values['audio_source']!r}")
    if not values["flush_every_s"] > 0:
        problems.append(f"flush_every_s must be positive, got {values['flush_every_s']!r}")
    if problems:
        raise SessionError(f"{root}: cannot start a take: {'; '.join(problems)}")


def _make_take_folder(root: Path, stamp: str, label: str) -> Path:
    """A new, empty folder ``<stamp>-<label>``, or ``…-2``, ``…-3`` if that exists."""
    base = f"{stamp}-{label}"
    n = 1
    while True:
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise SessionError(f"{path}: cannot create the take folder ({exc.strerror})") from None


def _write_all(f, data: bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = f.write(view)
        if not written:
            raise OSError(errno.ENOSPC, "no bytes written")
        view = view[written:]


def _wav_header(sample_rate: int, data_bytes: int) -> bytes:
    data_bytes = min(data_bytes, _WAV_MAX_DATA)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16,
                       1, 1, sample_rate, sample_rate * 2, 2, 16, b"data", data_bytes)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new, renamed or removed file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(when: datetime) -> datetime:
    # A naive time is taken as UTC: the box's clock runs in UTC.
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# ---- reading ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Meta:
    label: str
    fps: float
    width: int
    height: int
    sample_rate: int
    audio_source: str
    started: str
    clean: bool
    frames: int | None
    audio_samples: int | None
    stopped: str | None
    extra: dict


def session_info(path: str | os.PathLike) -> SessionInfo:
    """What a take holds, from session.yaml and file sizes; reads no frames or audio."""
    path = Path(path)
    meta = _read_meta(path)
    problems = []
    if not meta.clean:
        problems.append("not cleanly stopped")
    if meta.stopped:
        problems.append(f"stopped: {meta.stopped}")

    frame_bytes = meta.width * meta.height
    whole_frames, torn = divmod(_size(path, FRAMES_FILE), frame_bytes)
    if torn:
        problems.append("last frame incomplete")
    whole_times, torn = divmod(_size(path, TIMES_FILE), 8)
    if torn:
        problems.append("last timestamp incomplete")
    frames = min(whole_frames, whole_times)
    if whole_frames != whole_times:
        problems.append(f"{whole_frames} frames but {whole_times} timestamps; using {frames}")

    offset, header_bytes, file_bytes = _wav_layout(path, meta.sample_rate)
    data_bytes = file_bytes - offset
    if data_bytes % 2:
        problems.append("last audio sample incomplete")
    samples = data_bytes // 2
    if header_bytes != min(samples * 2, _WAV_MAX_DATA):
        problems.append(f"audio header stale (it says {header_bytes // 2} samples, "
                        f"the file holds {samples})")

    if meta.clean and meta.frames is not None and meta.frames != frames:
        problems.append(f"session.yaml says {meta.frames} frames but the files hold {frames}")
    if meta.clean and meta.audio_samples is not None and meta.audio_samples != samples:
        problems.append(f"session.yaml says {meta.audio_samples} audio samples but the "
                        f"file holds {samples}")
    if frames and samples:
        frames_end = _timestamp_at(path, frames - 1) + 1 / meta.fps
        audio_end = samples / meta.sample_rate
        if math.isfinite(frames_end) and abs(frames_end - audio_end) > _LENGTH_SLACK_S:
            problems.append(f"frames end at {frames_end:.1f} s but audio at {audio_end:.1f} s")

    return SessionInfo(path=path, label=meta.label, fps=meta.fps, width=meta.width,
                       height=meta.height, sample_rate=meta.sample_rate,
                       audio_source=meta.audio_source, started=meta.started, clean=meta.clean,
                       frames=frames, audio_samples=samples, extra=meta.extra,
                       problems=tuple(problems))


def read_session(path: str | os.PathLike) -> Session:
    """Read a take: frames (memory-mapped, read-only), timestamps and audio.

    A take cut off mid-write reads up to its last whole frame and sample; what was
    worked around is listed in ``info.problems``. Nothing on disk is changed.
    """
    info = session_info(path)
    path = info.path
    n, shape = info.frames, (info.frames, info.height, info.width)
    try:
        frames = (np.memmap(path / FRAMES_FILE, dtype=np.uint8, mode="r", shape=shape)
                  if n else np.zeros(shape, np.uint8))
        timestamps = np.fromfile(path / TIMES_FILE, dtype="<f8", count=n).astype(np.float64)
        offset, _, _ = _wav_layout(path, info.sample_rate)
        with open(path / AUDIO_FILE, "rb") as f:
            f.seek(offset)
            raw = f.read(info.audio_samples * 2)
    except OSError as exc:
        raise SessionError(f"{path}: cannot read the take ({exc.strerror or exc})") from None
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32767.0   # as read_wav does

    problems = list(info.problems)
    if not np.all(np.isfinite(timestamps)):
        problems.append("timestamps not finite")
    elif np.any(np.diff(timestamps) <= 0):
        problems.append("timestamps not increasing")
    return Session(replace(info, problems=tuple(problems)), frames, timestamps, audio)


def list_sessions(root: str | os.PathLike) -> list[SessionInfo]:
    """Every take under ``root``, oldest first; a broken take is listed with its problem.

    A sub-folder counts as a take when it has a session.yaml or is named like one;
    anything else, and hidden folders (an importer's staging), are left out.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    infos = []
    for child in root.iterdir():
        if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
            continue
        if not ((child / INFO_FILE).exists() or is_take_name(child.name)):
            continue
        try:
            infos.append(session_info(child))
        except SessionError as exc:
            infos.append(_broken_info(child, str(exc)))
    return sorted(infos, key=lambda info: (info.started, info.path.name))


def is_headless(path: Path) -> bool:
    """A folder named like a take with no session.yaml: a take killed in its first
    milliseconds, before its header was written. It holds nothing worth keeping."""
    return is_take_name(path.name) and not (path / INFO_FILE).exists()


def remove_headless(root: str | os.PathLike, *, older_than_s: float = 60.0) -> list[Path]:
    """Delete the headless take folders under ``root`` that have not changed for
    ``older_than_s`` (a take being started now is left alone); the folders removed.
    Only a take's own files are ever removed (``delete_session``)."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    now = time.time()
    for child in sorted(root.iterdir()):
        if child.is_symlink() or not child.is_dir() or not is_headless(child):
            continue
        try:
            if now - child.stat().st_mtime < older_than_s:
                continue
            delete_session(child)
        except (OSError, SessionError) as exc:
            log.warning("take %s: headless (no %s) but not removed: %s", child.name,
                        INFO_FILE, exc)
            continue
        log.warning("take %s: removed; it was cut off before its %s was written",
                    child.name, INFO_FILE)
        removed.append(child)
    return removed


def last_session(root: str | os.PathLike) -> Path | None:
    """The folder of the most recently started take under ``root``, or None."""
    infos = list_sessions(root)
    return infos[-1].path if infos else None


def delete_session(path: str | os.PathLike) -> None:
    """Remove a take completely; refuse anything that is not a take folder.

    Only the take's own files are removed (never a whole tree), so a folder that
    holds anything else is refused before anything is deleted.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise SessionError(f"{path}: not a take folder (no such folder)")
    is_take = is_take_name(path.name)
    if not is_take:
        try:
            is_take = load_info(path / INFO_FILE).get("format") == FORMAT
        except (OSError, ValueError, yaml.YAMLError, AttributeError, RecursionError):
            is_take = False
    if not is_take:
        raise SessionError(f"{path}: not a take folder (no {INFO_FILE} of format {FORMAT} "
                           f"and not named like a take); not deleting")
    strangers = sorted(entry.name for entry in path.iterdir() if entry.name not in _TAKE_FILES)
    if strangers:
        raise SessionError(f"{path}: holds files that are not part of a take "
                           f"({', '.join(strangers)}); not deleting")
    try:
        # session.yaml first: if the power fails half way, what is left is a
        # plainly broken take that a second delete still removes.
        for name in (INFO_FILE, _TMP_INFO, FRAMES_FILE, TIMES_FILE, AUDIO_FILE):
            (path / name).unlink(missing_ok=True)
        path.rmdir()
        fsync_dir(path.parent)
    except OSError as exc:
        raise SessionError(f"{path}: could not delete the take ({exc.strerror or exc})") from None
    log.info("take %s: deleted", path.name)


def _read_meta(path: Path) -> _Meta:
    if not path.is_dir():
        raise SessionError(f"{path}: no such take folder")
    info_path = path / INFO_FILE
    try:
        raw = load_info(info_path)
    except FileNotFoundError:
        raise SessionError(f"{path}: no {INFO_FILE} (not a take, or its start was "
                           f"cut off)") from None
    except OSError as exc:
        raise SessionError(f"{path}: cannot read {INFO_FILE} ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SessionError(f"{path}: {INFO_FILE} is not valid YAML ({first})") from None
    except ValueError as exc:
        raise SessionError(f"{path}: {INFO_FILE}: {exc}") from None
    if not isinstance(raw, dict):
        raise SessionError(f"{path}: {INFO_FILE} is not a mapping of keys to values")
    if raw.get("format") != FORMAT:
        raise SessionError(f"{path}: not a dancesampler take (format {raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise SessionError(f"{path}: session format version {raw.get('format_version')!r} is not "
                           f"supported (this reads version {FORMAT_VERSION})")

    if isinstance(raw.get("started"), datetime):   # hand-edited, unquoted: YAML made it a date
        raw["started"] = _iso(_utc(raw["started"]))
    problems, meta = [], {}
    for key, (kind, required) in _KEYS.items():
        if key not in raw:
            if required:
                problems.append(f"{key} is missing")
            meta[key] = None
        elif not _KINDS[kind](raw[key]):
            problems.append(f"{key} must be a {kind}, got {raw[key]!r:.40}")
        elif key in _RANGES and not _RANGES[key][0] <= raw[key] <= _RANGES[key][1]:
            problems.append(f"{key} must be from {_RANGES[key][0]} to {_RANGES[key][1]}, "
                            f"got {raw[key]!r:.40}")
        else:
            meta[key] = raw[key]
    if problems:
        raise SessionError(f"{path}: {INFO_FILE}: {'; '.join(problems)}")
    meta["fps"] = float(meta["fps"])
    meta["extra"] = meta["extra"] or {}
    return _Meta(**meta)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS = {
    "positive number": lambda v: (_whole(v) or isinstance(v, float)) and 0 < v < math.inf,
    "positive integer": lambda v: _whole(v) and v > 0,
    "count": lambda v: _whole(v) and v >= 0,
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "mapping": lambda v: isinstance(v, dict),
}
# session.yaml's keys besides format and format_version: (kind, required).
_KEYS = {
    "label": ("string", True), "fps": ("positive number", True),
    "width": ("positive integer", True), "height": ("positive integer", True),
    "sample_rate": ("positive integer", True), "audio_source": ("string", True),
    "started": ("string", True), "clean": ("boolean", True),
    "frames": ("count", False), "audio_samples": ("count", False),
    "stopped": ("string", False), "extra": ("mapping", False),
}


# Bounds a take from anywhere must keep, so that reading it never asks for more
# memory than its files hold (a camera from 1 to 240 fps and 8x8 to 4096x4096,
# audio from 8 to 192 kHz).
_RANGES = {"fps": (1, 240), "width": (8, 4096), "height": (8, 4096),
           "sample_rate": (8000, 192000)}
MAX_INFO_BYTES = 1 << 20
"""The largest session.yaml read."""


def load_info(info_path: Path) -> Any:
    """A session.yaml parsed: a regular file of at most ``MAX_INFO_BYTES`` with no
    YAML aliases (``device.config.read_small_yaml``)."""
    return read_small_yaml(info_path, MAX_INFO_BYTES)


def _size(path: Path, name: str) -> int:
    """A take file's size, refusing anything but a regular file (a FIFO or a
    device among a take's files would block or never end when read)."""
    try:
        info = (path / name).stat()
        if not stat.S_ISREG(info.st_mode):
            raise SessionError(f"{path}: {name} is not a regular file")
        return info.st_size
    except FileNotFoundError:
        raise SessionError(f"{path}: {name} is missing") from None
    except OSError as exc:
        raise SessionError(f"{path}: cannot read {name} ({exc.strerror})") from None


def _wav_layout(path: Path, sample_rate: int) -> tuple[int, int, int]:
    """(offset of the sample data, data size the header claims, file size)."""
    file_bytes = _size(path, AUDIO_FILE)
    try:
        with open(path / AUDIO_FILE, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise SessionError(f"{path}: cannot read {AUDIO_FILE} ({exc.strerror})") from None
    where = f"{path}: {AUDIO_FILE}"
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise SessionError(f"{where} is not a WAV file")
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk, size = struct.unpack_from("<4sI", head, pos)
        pos += 8
        if chunk == b"fmt " and pos + 16 <= len(head):
            fmt = struct.unpack_from("<HHIIHH", head, pos)
        elif chunk == b"data":
            if fmt is None:
                raise SessionError(f"{where} has no fmt chunk before its data")
            tag, channels, rate, _, _, bits = fmt
            if (tag, channels, bits) != (1, 1, 16):
                raise SessionError(f"{where} is not 16-bit mono PCM (format {tag}, "
                                   f"{channels} channels, {bits} bits)")
            if rate != sample_rate:
                raise SessionError(f"{where} is at {rate} Hz but {INFO_FILE} says {sample_rate} Hz")
            return pos, size, file_bytes
        pos += size + (size & 1)   # RIFF chunks are padded to even sizes
    raise SessionError(f"{where} has no data chunk in its header")


def _timestamp_at(path: Path, index: int) -> float:
    try:
        with open(path / TIMES_FILE, "rb") as f:
            f.seek(index * 8)
            return struct.unpack("<d", f.read(8))[0]
    except (OSError, struct.error):
        return math.nan


def _broken_info(path: Path, message: str) -> SessionInfo:
    """A listing entry for a take that cannot be read, named from its folder."""
    name = _TAKE_NAME.fullmatch(path.name)
    started = ""
    if name:
        try:
            started = _iso(_utc(datetime.strptime(name[1], "%Y%m%dT%H%M%SZ")))
        except ValueError:
            pass
    reason = message.removeprefix(f"{path}: ")
    return SessionInfo(path=path, label=name[2] if name else path.name, fps=0.0, width=0,
                       height=0, sample_rate=0, audio_source="", started=started, clean=False,
                       frames=0, audio_samples=0, extra={}, problems=(f"unreadable: {reason}",))


# ---- the sessions command ------------------------------------------------------------

def sessions_command(root: str | os.PathLike, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    """List the takes under ``root``: a table for people, or JSON for programs."""
    infos = list_sessions(root)
    if as_json:
        json.dump([info.to_json() for info in infos], out, indent=2, default=str)
        out.write("\n")
        return 0
    if not infos:
        print(f"no takes in {root}", file=out)
        return 0
    rows = [("started (UTC)", "label", "length", "frames", "audio", "clean", "problems")]
    for info in infos:
        rows.append((info.started[:19].replace("T", " "), info.label, _minutes(info.duration_s),
                     str(info.frames), _minutes(info.audio_s), "yes" if info.clean else "NO",
                     "; ".join(info.problems) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.rjust(w) if i in (2, 3, 4) else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]), file=out)
    unclean = sum(not info.clean for info in infos)
    total = sum(info.duration_s for info in infos)
    print(f"{len(infos)} take(s) in {root}, {_minutes(total)} of dance"
          + (f", {unclean} not cleanly stopped" if unclean else ""), file=out)
    return 0


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds, 1), 60)
    return f"{int(minutes)}:{rest:04.1f}"
