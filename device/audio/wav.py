"""A WAV file as the sound card: 16-bit mono, written as the stream arrives."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from device.audio import to_int16
from device.errors import AudioError

log = logging.getLogger(__name__)


class WavSink:
    """Writes the stream to a 16-bit mono WAV file; ``close`` finalises the header."""

    def __init__(self, path: str | Path, *, sample_rate: int):
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.name = f"WAV file {self.path}"
        self.samples = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = wave.open(str(self.path), "wb")
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
        if self._file is not None:
            self._file.close()
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
