"""Audio out: where the generated stream goes.

Sinks take mono float32 blocks in [-1, 1] and turn them into 16-bit samples the
same way (``to_int16``), so a WAV file and the ALSA device receive identical
bytes. ``AlsaSink`` is the real sound card (pyalsaaudio, imported only there);
``WavSink`` is the stand-in where there is none, and logs a WARNING saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from device.errors import AudioError

log = logging.getLogger(__name__)


class Sink(Protocol):
    sample_rate: int
    name: str

    def write(self, block: np.ndarray) -> None:
        """Play or store one block of mono float32 samples in [-1, 1]."""

    def close(self) -> None:
        """Finish (drain the device, finalise the file); safe to call twice."""


def to_int16(block: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to little-endian int16, clipped, rounded to nearest."""
    return np.clip(np.rint(block * 32767.0), -32768, 32767).astype("<i2")


def sound_card_present() -> bool:
    """True where ALSA lists at least one sound card (and pyalsaaudio is installed)."""
    try:
        import alsaaudio
    except ImportError:
        return False
    try:
        return bool(alsaaudio.cards())
    except alsaaudio.ALSAAudioError:
        return False


def resolve_output(spec: str, *, default_wav: str | Path = "out/run.wav",
                   card_only: bool = False) -> str:
    """``spec`` with ``auto`` decided: ``alsa`` where a sound card is present, else
    ``wav:`` the default file (``fresh_path``: an earlier run's is never replaced);
    ``card_only`` (the box under systemd) makes it ``alsa`` whether a card is there
    yet or not. Decided once, at start: a card that goes away later is waited for,
    never swapped for a file."""
    if spec.partition(":")[0] != "auto":
        return spec
    return "alsa" if card_only or sound_card_present() else f"wav:{fresh_path(default_wav)}"


def fresh_path(path: str | Path) -> Path:
    """``path`` if nothing is there, else the first of ``NAME-2.EXT``, ``NAME-3.EXT``, …
    that is free: a run's default output never replaces an earlier run's."""
    path = Path(path)
    n = 2
    candidate = path
    while candidate.exists() or candidate.with_name(f".{candidate.name}.part").exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def open_sink(spec: str, *, sample_rate: int, period_size: int = 128, periods: int = 2,
              default_wav: str | Path = "out/run.wav") -> Sink:
    """Open the sink ``spec`` names: ``auto``, ``alsa``, ``alsa:DEVICE`` or ``wav:PATH``
    (``auto`` as ``resolve_output`` decides it)."""
    kind, _, arg = resolve_output(spec, default_wav=default_wav).partition(":")
    if kind == "alsa":
        from device.audio.alsa import AlsaSink

        return AlsaSink(arg or "default", sample_rate=sample_rate, period_size=period_size,
                        periods=periods)
    if kind == "wav" and arg:
        from device.audio.wav import WavSink

        log.warning("audio: writing to WAV file %s instead of a sound card", arg)
        # The default file's folder (the project's out/) is made; one named by
        # hand must exist.
        return WavSink(arg, sample_rate=sample_rate,
                       make_folder=Path(arg).parent == Path(default_wav).parent)
    raise AudioError(f"audio output {spec!r}: expected 'auto', 'alsa', 'alsa:DEVICE' or 'wav:PATH'")


def open_configured_sink(audio, *, sample_rate: int | None = None,
                         output: str | None = None) -> Sink:
    """The sink a device config's ``audio`` section names (its output, ALSA period
    size and count, default WAV path); ``sample_rate`` and ``output`` (e.g. the
    output ``resolve_output`` decided at start) override the config's."""
    from device.config import resolve_path

    return open_sink(output or audio.output, sample_rate=sample_rate or audio.sample_rate,
                     period_size=audio.period_size, periods=audio.periods,
                     default_wav=resolve_path(audio.wav_path))
