"""A WAV file as the sound card: 16-bit mono, written as the stream arrives."""

from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import numpy as np

from device.audio import to_int16
from device.errors import AudioError

log = logging.getLogger(__name__)


class WavSink:
    """Writes the stream to a 16-bit mono WAV file; ``close`` finalises the header.

    The samples go to a hidden file beside ``path``, renamed over it by ``close``
    once anything was written: a run that fails before its first sound leaves the
    previous file as it was. The folder must exist, unless ``make_folder`` (the
    project's own default output folder).
    """

    def __init__(self, path: str | Path, *, sample_rate: int, make_folder: bool = False):
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.name = f"WAV file {self.path}"
        self.samples = 0
        self._file = None
        self._part = self.path.with_name(f".{self.path.name}.part")
        if self.path.is_dir():
            raise AudioError(f"{self.path}: is a folder; expected a WAV file's path")
        if make_folder:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.parent.is_dir():
            raise AudioError(f"{self.path}: the folder {self.path.parent} does not exist")
        try:
            self._file = wave.open(str(self._part), "wb")
        except OSError as exc:
            raise AudioError(f"{self.path}: cannot write a WAV file ({exc.strerror})") from None
        self._file.setnchannels(1)
        self._file.setsampwidth(2)
        self._file.setframerate(sample_rate)

    def write(self, block: np.ndarray) -> None:
        try:
            self._file.writeframesraw(to_int16(block).tobytes())
        except OSError as exc:
            raise AudioError(f"{self.path}: write failed ({exc.strerror})") from None
        self.samples += len(block)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
            if self.samples:
                if self.path.exists():
                    log.warning("audio: %s replaces the earlier file of that name", self.path)
                os.replace(self._part, self.path)
            else:
                self._part.unlink()
                log.info("audio: nothing was played; %s left as it was", self.path)
        except OSError as exc:
            raise AudioError(f"{self.path}: cannot finish the WAV file ({exc.strerror})") from None
        finally:
            self._file = None


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV file as float32 samples in [-1, 1], and its sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise AudioError(f"{path}: expected 16-bit mono WAV, got "
                                 f"{8 * w.getsampwidth()}-bit with {w.getnchannels()} channels")
            data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
            return data.astype(np.float32) / 32767.0, w.getframerate()
    except (OSError, wave.Error, EOFError) as exc:
        raise AudioError(f"{path}: not a readable WAV file ({exc})") from None
