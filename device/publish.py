"""Each frame's motion, handed by the sound service to the OSC service (``device.osc``).

The sound service has no network (``PrivateNetwork=yes``). When ``osc.send_to``
is set it sends, per frame, one datagram to a UNIX datagram socket that the OSC
service binds, and never waits for it: a send that fails (nobody listens, the
listener is behind and its queue is full) drops that datagram, and the show goes
on. Nothing here may block the live loop or raise into it.

Datagrams, version 1 (docs/osc.md), little-endian:

- frame: ``b"DSF1"``, uint32 frame number, float32 motion gain, float32 level of
  the frame's sound (dBFS), uint16 width, uint16 height, then float32 × (width +
  height): the frame's motiongram as the camera gave it (column means, then row
  means), before the gain;
- state: ``b"DSS1"`` and one JSON object: ``model``, ``voice``, ``recording``,
  ``take`` (the current or last take's folder name, or null). Sent when it
  changes, and every ``STATE_EVERY_S`` besides, so a listener that starts late
  learns it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.config import PROJECT_ROOT

log = logging.getLogger(__name__)

FRAME_MAGIC = b"DSF1"
STATE_MAGIC = b"DSS1"
FRAME_HEADER = struct.Struct("<4sIffHH")
SOCKET_NAME = "frames.sock"
BOX_RUNTIME_DIR = Path("/run/dancesampler-osc")
"""The OSC unit's ``RuntimeDirectory=dancesampler-osc``."""
STATE_EVERY_S = 2.0
SILENCE_DB = -120.0
"""The level given for a frame of digital silence."""


def socket_path() -> Path:
    """Where the OSC service takes frames: under systemd (either unit) and on a box
    where that unit's folder exists, ``/run/dancesampler-osc/frames.sock``; else
    (``make run`` on a laptop) ``out/frames.sock`` in the checkout."""
    if os.environ.get("RUNTIME_DIRECTORY") or BOX_RUNTIME_DIR.is_dir():
        return BOX_RUNTIME_DIR / SOCKET_NAME
    return PROJECT_ROOT / "out" / SOCKET_NAME


def level_db(hop: np.ndarray) -> float:
    """RMS level of ``hop`` in dBFS (full scale 1.0)."""
    power = float(np.dot(hop, hop)) / max(1, len(hop))
    return max(SILENCE_DB, 10.0 * np.log10(power)) if power > 0 else SILENCE_DB


class FramePublisher:
    """The sound service's end: one datagram per frame to ``path``, never waiting."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sent = 0
        self.dropped = 0
        """Datagrams not delivered: nobody listening, or the listener behind."""
        self._frame = 0
        self._state: dict | None = None
        self._state_at = 0.0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def frame(self, motion: np.ndarray, width: int, gain: float, hop: np.ndarray,
              state: dict) -> None:
        """Publish one frame: ``motion`` (the raw motiongram vector, ``width`` column
        means first), the motion ``gain`` applied to it, the ``hop`` of sound it
        made, and the box's ``state``."""
        header = FRAME_HEADER.pack(FRAME_MAGIC, self._frame & 0xFFFFFFFF, gain,
                                   level_db(hop), width, len(motion) - width)
        self._frame += 1
        self._send(header + motion.astype("<f4", copy=False).tobytes())
        now = time.monotonic()
        if state != self._state or now >= self._state_at:
            self._state, self._state_at = state, now + STATE_EVERY_S
            self._send(STATE_MAGIC + json.dumps(state, separators=(",", ":")).encode())

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.path)
        except OSError:   # ENOENT, ECONNREFUSED: nobody listens; EAGAIN: it is behind
            self.dropped += 1
        else:
            self.sent += 1

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


def decode(data: bytes) -> FrameData | dict:
    """A datagram from ``FramePublisher``: a ``FrameData`` or the state dict.
    Raises ValueError for anything else."""
    if data.startswith(STATE_MAGIC):
        state = json.loads(data[len(STATE_MAGIC):])
        if not isinstance(state, dict):
            raise ValueError("a state datagram that is not a JSON object")
        return state
    if not data.startswith(FRAME_MAGIC) or len(data) < FRAME_HEADER.size:
        raise ValueError(f"not a frame datagram (starts {data[:4]!r}, {len(data)} bytes)")
    _, frame, gain, level, width, height = FRAME_HEADER.unpack_from(data)
    motion = np.frombuffer(data, "<f4", offset=FRAME_HEADER.size)
    if len(motion) != width + height or width < 1 or height < 1:
        raise ValueError(f"a frame datagram of {len(motion)} values for {width} x {height}")
    return FrameData(frame, gain, level, width, motion.astype(np.float32))
