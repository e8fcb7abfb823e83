"""Each frame's motion, handed by the sound service to the OSC service (``device.osc``),
the web page's service (``device.web``) and the MIDI service (``device.midi``).

The sound service has no network (``PrivateNetwork=yes``). When ``osc.send_to``
is set it sends, per frame, one datagram to a UNIX datagram socket that the OSC
service binds, when ``web.listen`` is set another to the one the web service
binds, and when ``midi.enabled`` another to the MIDI service's; it never waits
for any of them: a send that fails (nobody listens, the
listener is behind and its queue is full) drops that datagram, and the show goes
on. Nothing here may block the live loop or raise into it.

Datagrams, version 2 (docs/osc.md), little-endian:

- frame: ``b"DSF2"``, uint32 frame number, float32 motion gain, float32 level of
  the frame's sound (dBFS), uint16 width, uint16 height, uint16 latent size, then
  float32 × (width + height): the frame's motiongram as the camera gave it (column
  means, then row means), before the gain, and float32 × latent size: the model's
  latent for the window that frame ended (none where the voice has no latent);
- state: ``b"DSS1"`` and one JSON object: ``model``, ``voice``, ``recording``,
  ``take`` (the current or last take's folder name, or null). Sent when it
  changes, and every ``STATE_EVERY_S`` besides, so a listener that starts late
  learns it;
- picture (to the web service only): ``b"DSP1"``, uint32 frame number, uint16
  width, uint16 height, then width × height uint8: the camera's grey picture,
  row by row from the top. Sent with every ``picture_every``-th frame (about 10
  a second), and only while the last datagram reached a listener: nobody
  listening costs one failed send a frame, as for the frames.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.config import PROJECT_ROOT

log = logging.getLogger(__name__)

FRAME_MAGIC = b"DSF2"
STATE_MAGIC = b"DSS1"
PICTURE_MAGIC = b"DSP1"
FRAME_HEADER = struct.Struct("<4sIffHHH")
PICTURE_HEADER = struct.Struct("<4sIHH")
PICTURES_PER_S = 10
"""About how many pictures a second go to the web service."""
SOCKET_NAME = "frames.sock"
BOX_RUNTIME_DIR = Path("/run/dancesampler-osc")
"""The OSC unit's ``RuntimeDirectory=dancesampler-osc``."""
WEB_RUNTIME_DIR = Path("/run/dancesampler-web")
"""The web unit's ``RuntimeDirectory=dancesampler-web``."""
MIDI_RUNTIME_DIR = Path("/run/dancesampler-midi")
"""The MIDI unit's ``RuntimeDirectory=dancesampler-midi``."""
SERVICE_GROUP = "dancesampler"
"""The sound service's group (provisioning makes it): a frames socket is given to
it, so that the sound service, and only it, may send frames."""
STATE_EVERY_S = 2.0
SILENCE_DB = -120.0
"""The level given for a frame of digital silence."""
_NO_LATENT = np.zeros(0, np.float32)


def socket_path() -> Path:
    """Where the OSC service takes frames: under systemd (either unit) and on a box
    where that unit's folder exists, ``/run/dancesampler-osc/frames.sock``; else
    (``make run`` on a laptop) ``out/frames.sock`` in the checkout."""
    if os.environ.get("RUNTIME_DIRECTORY") or BOX_RUNTIME_DIR.is_dir():
        return BOX_RUNTIME_DIR / SOCKET_NAME
    return PROJECT_ROOT / "out" / SOCKET_NAME


def web_socket_path() -> Path:
    """Where the web service takes frames: as ``socket_path`` for the web unit's
    folder (``/run/dancesampler-web/frames.sock``), else ``out/web-frames.sock``."""
    if os.environ.get("RUNTIME_DIRECTORY") or WEB_RUNTIME_DIR.is_dir():
        return WEB_RUNTIME_DIR / SOCKET_NAME
    return PROJECT_ROOT / "out" / f"web-{SOCKET_NAME}"


def midi_socket_path() -> Path:
    """Where the MIDI service takes frames: as ``socket_path`` for the MIDI unit's
    folder (``/run/dancesampler-midi/frames.sock``), else ``out/midi-frames.sock``."""
    if os.environ.get("RUNTIME_DIRECTORY") or MIDI_RUNTIME_DIR.is_dir():
        return MIDI_RUNTIME_DIR / SOCKET_NAME
    return PROJECT_ROOT / "out" / f"midi-{SOCKET_NAME}"


def bind_listener(path: Path, *, who: str, error: type[Exception]) -> socket.socket:
    """A frames socket bound at ``path`` for ``who`` (the OSC service, the web
    service), mode 0660, given to the sound service's group where there is one;
    a stale one left by a listener that died is replaced, a live one refused
    with ``error``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()   # nobody bound to it
            else:
                sock.close()
                raise error(f"another {who} takes frames on {path}")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise error(f"cannot take frames on {path}: {exc.strerror or exc}") from None
    os.chmod(path, 0o660)
    try:
        os.chown(path, -1, grp.getgrnam(SERVICE_GROUP).gr_gid)
    except (KeyError, PermissionError):
        pass   # off the box (no such group), or not in it: the owner's group
    return sock


def take_frames(sock: socket.socket, stop, tally, handle) -> None:
    """A listener's loop: each datagram on ``sock`` (bound by ``bind_listener``, with
    a timeout) decoded and handed to ``handle``, until ``stop`` (a
    ``threading.Event``) is set or the socket is closed; a malformed one is counted
    on ``tally`` (``device.osc.Tally``), which also reports while it waits."""
    while not stop.is_set():
        tally.report()
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return   # closed
        try:
            item = decode(data)
        except ValueError as exc:
            tally.count("malformed frame datagrams", str(exc))
            continue
        handle(item)


def level_db(hop: np.ndarray) -> float:
    """RMS level of ``hop`` in dBFS (full scale 1.0)."""
    power = float(np.dot(hop, hop)) / max(1, len(hop))
    return max(SILENCE_DB, 10.0 * np.log10(power)) if power > 0 else SILENCE_DB


class FramePublisher:
    """The sound service's end: one datagram per frame to ``path``, never waiting;
    with ``picture_every``, also every that many frames the camera's picture."""

    def __init__(self, path: Path, *, picture_every: int = 0):
        self.path = str(path)
        self.picture_every = picture_every
        self.pictures = 0
        """Pictures sent."""
        self._listened = False   # whether the last send reached a listener
        self.sent = 0
        self.dropped = 0
        """Datagrams not delivered: nobody listening, or the listener behind."""
        self._frame = 0
        self._state: dict | None = None
        self._state_at = 0.0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def frame(self, motion: np.ndarray, width: int, gain: float, hop: np.ndarray,
              state: dict, picture: np.ndarray | None = None,
              latent: np.ndarray | None = None) -> None:
        """Publish one frame: ``motion`` (the raw motiongram vector, ``width`` column
        means first), the motion ``gain`` applied to it, the ``hop`` of sound it
        made, the box's ``state``, the camera's ``picture`` (uint8, height ×
        width), which goes out only every ``picture_every`` frames, and the model's
        ``latent`` where it gives one."""
        number = self._frame & 0xFFFFFFFF
        latent = _NO_LATENT if latent is None else latent
        header = FRAME_HEADER.pack(FRAME_MAGIC, number, gain, level_db(hop), width,
                                   len(motion) - width, len(latent))
        self._frame += 1
        self._send(header + motion.astype("<f4", copy=False).tobytes()
                   + latent.astype("<f4", copy=False).tobytes())
        if (picture is not None and self.picture_every and self._listened
                and number % self.picture_every == 0):
            height, across = picture.shape
            if self._send(PICTURE_HEADER.pack(PICTURE_MAGIC, number, across, height)
                          + np.ascontiguousarray(picture, np.uint8).tobytes()):
                self.pictures += 1
        now = time.monotonic()
        if state != self._state or now >= self._state_at:
            self._state, self._state_at = state, now + STATE_EVERY_S
            self._send(STATE_MAGIC + json.dumps(state, separators=(",", ":")).encode())

    def _send(self, data: bytes) -> bool:
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:   # ENOENT, ECONNREFUSED: nobody listens; EAGAIN: it is behind
            self.dropped += 1
            self._listened = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            return False
        self.sent += 1
        self._listened = True
        return True

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True)
class FrameData:
    """One frame as the OSC service reads it."""

    frame: int
    gain: float
    level_db: float
    width: int
    motion: np.ndarray
    """The raw motiongram vector: ``width`` column means, then the row means."""
    latent: np.ndarray = field(default_factory=lambda: _NO_LATENT)
    """The model's latent for this frame's window; empty where the voice has none."""


@dataclass(frozen=True)
class Picture:
    """The camera's picture as the web service reads it."""

    frame: int
    image: np.ndarray
    """uint8 (height, width), 0 black to 255 white."""


def decode(data: bytes) -> FrameData | Picture | dict:
    """A datagram from ``FramePublisher``: a ``FrameData``, a ``Picture`` or the
    state dict. Raises ValueError for anything else."""
    if data.startswith(PICTURE_MAGIC) and len(data) >= PICTURE_HEADER.size:
        _, frame, width, height = PICTURE_HEADER.unpack_from(data)
        if width < 1 or height < 1 or len(data) != PICTURE_HEADER.size + width * height:
            raise ValueError(f"a picture datagram of {len(data)} bytes for {width} x {height}")
        image = np.frombuffer(data, np.uint8, offset=PICTURE_HEADER.size)
        return Picture(frame, image.reshape(height, width).copy())
    if data.startswith(STATE_MAGIC):
        state = json.loads(data[len(STATE_MAGIC):])
        if not isinstance(state, dict):
            raise ValueError("a state datagram that is not a JSON object")
        return state
    if not data.startswith(FRAME_MAGIC) or len(data) < FRAME_HEADER.size:
        raise ValueError(f"not a frame datagram (starts {data[:4]!r}, {len(data)} bytes)")
    _, frame, gain, level, width, height, latent = FRAME_HEADER.unpack_from(data)
    values = np.frombuffer(data, "<f4", offset=FRAME_HEADER.size)
    if len(values) != width + height + latent or width < 1 or height < 1:
        raise ValueError(f"a frame datagram of {len(values)} values for {width} x {height} "
                         f"and a latent of {latent}")
    values = values.astype(np.float32)
    return FrameData(frame, gain, level, width, values[:width + height],
                     values[width + height:])
