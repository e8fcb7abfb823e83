"""The MIDI service: the box as a MIDI source on the ALSA sequencer (docs/midi.md).

``python -m device midi`` runs as its own small unit
(``systemd/dancesampler-midi.service``), so that the sound service never loads a
MIDI library nor waits for a MIDI reader. It takes the frame datagrams the sound
service sends (``device.publish``) and makes, per frame:

- **controllers** (``CONTROLLERS``): the quantity of motion, where across the
  picture it is and how high, as 14-bit controllers (the MSB controller, then its
  LSB partner 32 above), and the sound's level as a 7-bit one; each sent only when
  its value changes;
- **notes** (with ``midi.notes``): the notes voice's own choice of note
  (``device.notes.NotePicker``, its default settings), on the C major pentatonic
  scale, with the lower part struck with each; a note is released when the next
  one is struck or after ``HOLD_FRAMES`` frames.

The notes and controllers follow the dance whichever voice the box plays. The
messages go out through python-rtmidi on a virtual port of a sequencer client
named ``midi.port``: any program on the box, or beyond it through a MIDI
interface and ``aconnect``, subscribes to it. Nothing the MIDI side does can stop
the sound: the sound service never waits for this one.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device import control, publish
from device.config import MidiConfig
from device.engine import MotionWindow
from device.errors import DanceSamplerError
from device.notes import NotePicker, NotesParams
from device.osc import Tally, centroid

log = logging.getLogger(__name__)

SEQUENCER = Path("/dev/snd/seq")
WINDOW_FRAMES = 8
"""Frames of motion the notes are chosen from (the factory model's window)."""
HOLD_FRAMES = 18
"""A note is released after this many frames without a new one (0.6 s at 30 fps:
the notes voice's decay time)."""
REFERENCE = NotesParams.reference
"""The quantity of gained motion a typical move has (the motion gain's reference)."""
DOUBLINGS = 8
"""The quantity controller spans this many doublings of motion, up to four times
``REFERENCE`` (where the notes voice plays loudest)."""
LEVEL_FLOOR_DB = -60.0
"""The level controller's 0; 127 is 0 dBFS."""


@dataclass(frozen=True)
class Controller:
    name: str
    number: int
    """The controller number (the MSB's, for a 14-bit one)."""
    fine: bool
    """14 bits: the value's low 7 bits follow on controller ``number + 32``."""


CONTROLLERS = (Controller("quantity", 1, True),     # modulation wheel
               Controller("across", 16, True),      # general purpose 1
               Controller("height", 17, True),      # general purpose 2
               Controller("level", 11, False))      # expression
"""What each frame sets, in the order sent (docs/midi.md)."""
ALL_NOTES_OFF = 123


class MidiError(DanceSamplerError, OSError):
    """The MIDI service cannot start: no sequencer, a socket in use."""


def control_change(channel: int, number: int, value: int) -> bytes:
    """A control change on ``channel`` (1 to 16)."""
    return bytes((0xB0 | (channel - 1), number, value))


def note_on(channel: int, note: int, velocity: int) -> bytes:
    return bytes((0x90 | (channel - 1), note, velocity))


def note_off(channel: int, note: int) -> bytes:
    return bytes((0x80 | (channel - 1), note, 0))


def controller_values(frame: publish.FrameData, gained: np.ndarray) -> dict[str, float]:
    """Each controller's value of one frame, 0 to 1; ``gained``: its motion times its gain."""
    columns, rows = gained[:frame.width], gained[frame.width:]
    quantity = float(columns.mean())
    amount = 1.0 + np.log2(quantity / (4 * REFERENCE)) / DOUBLINGS if quantity > 0 else 0.0
    return {"quantity": amount, "across": centroid(columns), "height": 1.0 - centroid(rows),
            "level": (frame.level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB}


class MidiMapper:
    """Frames in, MIDI messages (bytes) out: the controllers that changed, the notes
    released and struck."""

    def __init__(self, channel: int = 1, *, notes: bool = True):
        self.channel, self.notes = channel, notes
        self._sent: dict[int, int] = {}   # controller number -> value last sent
        self._picker: NotePicker | None = None
        self._window: MotionWindow | None = None
        self._sounding: list[int] = []   # MIDI notes held
        self._held = 0                   # frames since they were struck

    def frame(self, frame: publish.FrameData) -> list[bytes]:
        gained = frame.motion * np.float32(frame.gain)   # as the voices hear it
        messages = self._controllers(controller_values(frame, gained))
        if self.notes:
            messages += self._notes(gained, frame.width)
        return messages

    def _controllers(self, values: dict[str, float]) -> list[bytes]:
        messages = []
        for c in CONTROLLERS:
            value = values[c.name]
            top = 16383 if c.fine else 127
            code = int(round(min(max(value, 0.0), 1.0) * top))
            if self._sent.get(c.number) == code:
                continue
            self._sent[c.number] = code
            if c.fine:
                messages += [control_change(self.channel, c.number, code >> 7),
                             control_change(self.channel, c.number + 32, code & 0x7F)]
            else:
                messages.append(control_change(self.channel, c.number, code))
        return messages

    def _notes(self, gained: np.ndarray, width: int) -> list[bytes]:
        height = len(gained) - width
        if self._picker is None or self._picker.shape != (width, height):
            self._picker = NotePicker(NotesParams(), width, height)
            self._window = MotionWindow(WINDOW_FRAMES, len(gained))
        note = self._picker.pick(self._window.push(gained))
        self._held += 1
        messages = []
        if self._sounding and (note is not None or self._held >= HOLD_FRAMES):
            messages += self.release()
        if note is not None:
            step, velocity, bass = note
            picked = [int(self._picker.pitches[step])]
            if bass is not None:
                picked.append(int(self._picker.bass[bass]))
            code = max(1, min(127, round(velocity * 127)))
            messages += [note_on(self.channel, n, code) for n in picked]
            self._sounding, self._held = picked, 0
        return messages

    def release(self) -> list[bytes]:
        """Note offs for the notes held."""
        messages = [note_off(self.channel, n) for n in self._sounding]
        self._sounding = []
        return messages

    def silence(self) -> list[bytes]:
        """What to send on the way out: the held notes released, and all notes off."""
        return self.release() + [control_change(self.channel, ALL_NOTES_OFF, 0)]


class SequencerOut:
    """A client of the ALSA sequencer with one port, both named ``name``, that
    others subscribe to (python-rtmidi)."""

    def __init__(self, name: str):
        import rtmidi   # first: a box without the library says so, sequencer or not

        if not SEQUENCER.exists():
            raise MidiError(f"midi: no ALSA sequencer: {SEQUENCER} is missing "
                            "(the kernel's snd-seq module is not loaded)")
        try:
            self._out = rtmidi.MidiOut(rtmidi.API_LINUX_ALSA, name=name)
            self._out.open_virtual_port(name)
        except rtmidi.RtMidiError as exc:
            raise MidiError(f"midi: cannot open the ALSA sequencer: {exc}") from None
        self.name = name

    def send(self, message: bytes) -> None:
        self._out.send_message(message)

    def close(self) -> None:
        self._out.close_port()
        del self._out


class MidiService:
    """Frames in (the socket at ``frames``), MIDI out through ``out`` (anything with
    ``send(bytes)``)."""

    def __init__(self, cfg: MidiConfig, *, frames: Path, out):
        self.cfg, self.frames_path, self.out = cfg, Path(frames), out
        self.mapper = MidiMapper(cfg.channel, notes=cfg.notes)
        self.tally = Tally(what="midi: ignored", logger=log)
        self.frames = 0
        """Frames received from the sound service."""
        self.sent = 0
        """MIDI messages sent."""
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MidiService:
        try:
            self._sock = publish.bind_listener(self.frames_path, who="MIDI service",
                                               error=MidiError)
        except MidiError as exc:
            raise MidiError(f"midi: {exc}") from None
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._receive, name="midi-frames", daemon=True)
        self._thread.start()
        log.info("midi: sending the dance on channel %d as %s%s", self.cfg.channel,
                 ", ".join(f"CC {c.number}{'/' + str(c.number + 32) if c.fine else ''} "
                           f"({c.name})" for c in CONTROLLERS),
                 " and notes" if self.cfg.notes else "")
        return self

    def close(self) -> None:
        """Stop taking frames, release the notes held, remove the frames socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._send(self.mapper.silence())
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            control.remove_socket(self.frames_path)
        self.tally.report(now=True)

    def _receive(self) -> None:
        publish.take_frames(self._sock, self._stop, self.tally, self._take_frame)

    def _take_frame(self, item) -> None:
        if isinstance(item, publish.FrameData):
            self.frames += 1
            self._send(self.mapper.frame(item))

    def _send(self, messages: list[bytes]) -> None:
        for message in messages:
            try:
                self.out.send(message)
            except Exception as exc:  # noqa: BLE001 - a library's error: count it, go on
                self.tally.count("messages that could not be sent", f"{message.hex()}: {exc}")
            else:
                self.sent += 1


def serve(cfg: MidiConfig, stop: threading.Event, *, frames: Path | None = None,
          out=None) -> int:
    """Run the MIDI service until ``stop`` is set; with MIDI off in the config, say
    so and return at once. ``out``: where the messages go (default: the sequencer)."""
    if not cfg.enabled:
        log.info("midi: off: midi.enabled is false in the config; nothing to do")
        return 0
    out = out if out is not None else SequencerOut(cfg.port)
    try:
        service = MidiService(cfg, frames=frames or publish.midi_socket_path(), out=out).start()
        try:
            stop.wait()
        finally:
            service.close()
    finally:
        if isinstance(out, SequencerOut):
            out.close()
    return 0
