"""The OSC service: the box's motion out as OSC, OSC commands in (docs/osc.md).

``python -m device osc`` runs as its own small unit
(``systemd/dancesampler-osc.service``), so that the sound service keeps no
network at all. It speaks to the sound service only through two local sockets:

- frames in, OSC out: the datagram the sound service sends each frame
  (``device.publish``) becomes OSC over UDP to ``osc.send_to``: ``/wek/inputs``
  (``WEK_INPUTS``, a fixed list, so Wekinator learns from it with no set-up) and
  the box's own ``/dancesampler/…`` messages;
- OSC in, commands out: each OSC message taken on ``osc.listen`` from a sender in
  ``osc.allow`` becomes one control channel request (``device.control``), the
  one implementation of every action, sent by a worker thread so that a slow
  answer never holds up the socket.

Anything else that arrives (a sender not allowed, a malformed packet, an
unknown address, a value out of range) is counted and logged at most once every
``REPORT_EVERY_S``. Nothing a sender does may stop this service, and nothing
this service does can stop the sound: it never writes to the sound service but
through the control channel, which refuses what it does not understand.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path

import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from device import control, publish
from device.config import OscConfig, host_port, networks
from device.control import ControlError, check_value
from device.errors import DanceSamplerError
from device.motiongram import MotiongramParams, motion_amount

log = logging.getLogger(__name__)

PREFIX = "/dancesampler"
COLUMN_BANDS, ROW_BANDS = 8, 6
WEK_INPUTS = ("quantity", "centroid_x", "centroid_y",
              *(f"columns_{i}" for i in range(1, COLUMN_BANDS + 1)),
              *(f"rows_{i}" for i in range(1, ROW_BANDS + 1)))
"""The floats of ``/wek/inputs``, in order (docs/osc.md): the quantity of motion,
its centroid, and the motion in 8 vertical strips (left to right) and 6
horizontal ones (top to bottom), all scaled by the motion gain."""
TRIGGERS = {f"{PREFIX}/{command}": command for command in
            ("record", "stop", "delete-last", "next-model", "voice-from-last-take")}
"""Addresses that start an action; no argument, or one number (0 or false: ignored,
a button's release)."""
VALUES = {f"{PREFIX}/{command}": command for command in ("volume", "sensitivity", "dynamics",
                                                              "voice")}
"""Addresses that set something; one argument, as ``device ctl`` takes it."""
REPORT_EVERY_S = 10.0
"""Most often a line about ignored messages is logged."""
PENDING = 16
"""Commands that may wait for the box; past that, new ones are dropped and counted."""
_POLL_S = 0.5   # how often the threads look at the stop flag


class OscError(DanceSamplerError, OSError):
    """The OSC service cannot start: an address that does not resolve, a port in use."""


class Tally:
    """Counts what was ignored, by kind, and logs it at most once every ``every_s``:
    one line with each kind's count since the last line and one example of it."""

    def __init__(self, every_s: float = REPORT_EVERY_S, *, what: str = "osc: ignored",
                 logger: logging.Logger = log):
        self.every_s = every_s
        self.what, self.log = what, logger
        """How each line starts, and where it goes."""
        self.counts: collections.Counter[str] = collections.Counter()
        """Every kind's count since the start."""
        self._pending: collections.Counter[str] = collections.Counter()
        self._examples: dict[str, str] = {}
        self._next = 0.0
        self._lock = threading.Lock()

    def count(self, kind: str, example: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            self._pending[kind] += 1
            self._examples.setdefault(kind, example[:120])
        self.report()

    def report(self, *, now: bool = False) -> None:
        """Log what is pending, if the last line is ``every_s`` old (or ``now``: at the end)."""
        with self._lock:
            due = time.monotonic()
            if not self._pending or (due < self._next and not now):
                return
            what = "; ".join(f"{kind}: {n} (e.g. {self._examples[kind]})"
                             for kind, n in self._pending.items())
            self._pending.clear()
            self._examples.clear()
            self._next = due + self.every_s
        self.log.warning("%s: %s", self.what, what)


def centroid(values: np.ndarray) -> float:
    """Where along ``values`` the motion is, 0 (first) to 1 (last); 0.5 with none."""
    total = float(values.sum(dtype=np.float64))
    if total <= 0.0 or len(values) < 2:
        return 0.5
    return float(np.dot(np.arange(len(values)), values) / total / (len(values) - 1))


def wek_inputs(frame: publish.FrameData) -> list[float]:
    """The ``WEK_INPUTS`` of one frame."""
    gained = frame.motion * np.float32(frame.gain)
    columns, rows = gained[:frame.width], gained[frame.width:]
    return [float(columns.mean()), centroid(columns), centroid(rows),
            *(float(band.mean()) for band in np.array_split(columns, COLUMN_BANDS)),
            *(float(band.mean()) for band in np.array_split(rows, ROW_BANDS))]


class OscOut:
    """OSC messages over UDP to one ``HOST:PORT``; a send that fails is counted."""

    def __init__(self, target: str, tally: Tally):
        host, port = host_port(target)
        try:
            family, _, _, _, self.address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise OscError(f"osc.send_to: {target}: {exc.strerror}") from None
        self.target, self.tally = target, tally
        self.sent = 0
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, address: str, *args: float | int | str, types: str | None = None) -> None:
        """Send one message; ``types``: OSC type tags of ``args`` (default: guessed)."""
        builder = OscMessageBuilder(address)
        for i, arg in enumerate(args):
            builder.add_arg(arg, types[i] if types else None)
        try:
            self._sock.sendto(builder.build().dgram, self.address)
        except OSError as exc:   # no route, the far end's port closed: try the next one
            self.tally.count("messages that could not be sent",
                             f"{address} to {self.target}: {exc.strerror or exc}")
        else:
            self.sent += 1

    def close(self) -> None:
        self._sock.close()


class OscService:
    """Frames to OSC (with ``cfg.send_to``), OSC to commands (with ``cfg.listen``).

    ``frames``: the UNIX datagram socket this binds for the sound service's frames;
    ``control``: the sound service's control socket.
    """

    def __init__(self, cfg: OscConfig, *, frames: Path, control: Path):
        self.cfg, self.frames_path, self.control_path = cfg, Path(frames), Path(control)
        self.tally = Tally()
        self.frames = 0
        """Frames received from the sound service and sent on as OSC."""
        self.done: list[tuple[str, object, dict]] = []
        """(command, value, reply) of the most recent commands the box answered."""
        self.listening: tuple[str, int] | None = None
        """The address commands are taken on, once bound."""
        self._allow = [ipaddress.ip_network(word, strict=False) for word in networks(cfg.allow)]
        self._stop = threading.Event()
        self._pending: queue.Queue[tuple[str, object, str]] = queue.Queue(PENDING)
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._bound = False   # whether the frames socket on disk is this service's
        self._state: dict = {}
        self._take: str | None = None   # the take announced as started, not yet as stopped
        self.out = OscOut(cfg.send_to, self.tally) if cfg.send_to else None

    # ---- starting and stopping ---------------------------------------------------

    def start(self) -> OscService:
        try:
            if self.out is not None:
                frames = self._bind_frames()
                self._thread(self._receive_frames, frames, "osc-frames")
            if self.cfg.listen:
                commands = self._bind_commands()
                self._thread(self._receive_commands, commands, "osc-in")
                self._thread(self._carry_out, None, "osc-commands")
        except Exception:
            self.close()
            raise
        return self

    def _thread(self, target, sock: socket.socket | None, name: str) -> None:
        thread = threading.Thread(target=target, args=(sock,) if sock else (), name=name,
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads (each within ``_POLL_S``), close the sockets, remove the
        frames socket."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("osc: thread %s did not stop within %.0f s", thread.name, timeout)
        for sock in self._sockets:
            sock.close()
        if self.out is not None:
            self.out.close()
        if self._bound:
            self._bound = False
            control.remove_socket(self.frames_path)
        self.tally.report(now=True)

    def _bind_frames(self) -> socket.socket:
        """The frames socket (``publish.bind_listener``)."""
        try:
            sock = publish.bind_listener(self.frames_path, who="OSC service", error=OscError)
        except OscError as exc:
            raise OscError(f"osc: {exc}") from None
        self._sockets.append(sock)
        self._bound = True
        sock.settimeout(_POLL_S)
        log.info("osc: sending each frame's motion to %s (/wek/inputs: %d floats%s)",
                 self.cfg.send_to, len(WEK_INPUTS),
                 ", and the motiongram" if self.cfg.motiongram else "")
        return sock

    def _bind_commands(self) -> socket.socket:
        host, port = host_port(self.cfg.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OscError(f"osc.listen: cannot listen on {self.cfg.listen}: "
                           f"{exc.strerror or exc}") from None
        sock.settimeout(_POLL_S)
        self.listening = sock.getsockname()[:2]
        log.info("osc: taking commands on %s from %s", self.cfg.listen,
                 ", ".join(str(n) for n in self._allow) or "nobody (osc.allow is empty)")
        return sock

    # ---- frames in, OSC out --------------------------------------------------------

    def _receive_frames(self, sock: socket.socket) -> None:
        publish.take_frames(sock, self._stop, self.tally, self._take_frame)

    def _take_frame(self, item) -> None:
        if isinstance(item, dict):
            self._announce(item)
        elif isinstance(item, publish.FrameData):
            self._send_frame(item)

    def _send_frame(self, frame: publish.FrameData) -> None:
        out, width = self.out, frame.width
        out.send("/wek/inputs", *wek_inputs(frame), types="f" * len(WEK_INPUTS))
        params = MotiongramParams(width=width, height=len(frame.motion) - width)
        out.send(f"{PREFIX}/quantity", float(motion_amount(frame.motion, params)), types="f")
        out.send(f"{PREFIX}/centroid", centroid(frame.motion[:width]),
                 centroid(frame.motion[width:]), types="ff")
        out.send(f"{PREFIX}/gain", float(frame.gain), types="f")
        out.send(f"{PREFIX}/level", float(frame.level_db), types="f")
        if len(frame.latent):
            out.send(f"{PREFIX}/latent", *(float(v) for v in frame.latent),
                     types="f" * len(frame.latent))
        if self.cfg.motiongram:
            out.send(f"{PREFIX}/motiongram", *(float(v) for v in frame.motion),
                     types="f" * len(frame.motion))
        self.frames += 1

    def _announce(self, state: dict) -> None:
        """Model and take events: what changed since the last state (all of it, the
        first time)."""
        model = (str(state.get("model")), str(state.get("voice")))
        if model != (self._state.get("model"), self._state.get("voice")):
            self.out.send(f"{PREFIX}/model", *model, types="ss")
        take, recording = state.get("take"), bool(state.get("recording"))
        if recording and take and take != self._take:
            if self._take is not None:
                self.out.send(f"{PREFIX}/take", "stopped", self._take, types="ss")
            self._take = str(take)
            self.out.send(f"{PREFIX}/take", "started", self._take, types="ss")
        elif not recording and self._take is not None:
            self.out.send(f"{PREFIX}/take", "stopped", self._take, types="ss")
            self._take = None
        self._state = {"model": model[0], "voice": model[1]}

    # ---- OSC in, commands out ------------------------------------------------------

    def _receive_commands(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            self.tally.report()
            try:
                data, sender = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return   # closed
            host = sender[0]
            if not self._allowed(host):
                self.tally.count("messages from senders not allowed (osc.allow)", host)
                continue
            try:
                messages = [timed.message for timed in OscPacket(data).messages]
            except Exception:  # noqa: BLE001 - whatever a parser makes of bad bytes
                self.tally.count("malformed packets", f"{len(data)} bytes from {host}")
                continue
            for message in messages:
                self._take_message(message.address, list(message.params), host)

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped   # an IPv4 sender on a dual-stack socket
        return any(address in network for network in self._allow)

    def _take_message(self, address: str, params: list, host: str) -> None:
        command = TRIGGERS.get(address) or VALUES.get(address)
        if command is None:
            self.tally.count("messages to unknown addresses", address)
            return
        if address in TRIGGERS:
            if len(params) > 1 or (params and not isinstance(params[0], (bool, int, float))):
                self.tally.count("messages with bad arguments",
                                 f"{address} takes no argument or one number, not {params!r}")
                return
            if params and not params[0]:
                return   # 0 or false: a button's release
            value = None
        else:
            try:
                if len(params) != 1:
                    raise ControlError(f"{command} takes one argument, not {len(params)}")
                value = check_value(command, params[0])
            except ControlError as exc:
                self.tally.count("messages with bad arguments", f"{address}: {exc}")
                return
        try:
            self._pending.put_nowait((command, value, host))
        except queue.Full:
            self.tally.count("commands dropped (the box was still busy with earlier ones)",
                             address)

    def _carry_out(self) -> None:
        while not self._stop.is_set():
            try:
                command, value, host = self._pending.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            said = command if value is None else f"{command} {value}"
            try:
                reply = control.request(command, self.control_path, value=value)
            except ControlError as exc:
                self.tally.count("commands no box answered", f"{said}: {exc}")
                continue
            self.done = [*self.done[-(PENDING - 1):], (command, value, reply)]
            if reply.get("ok"):
                note = f" ({reply['note']})" if reply.get("note") else ""
                log.info("osc: %s from %s: %s%s", said, host,
                         reply.get("status") or reply.get("state"), note)
            else:
                self.tally.count("commands the box refused", f"{said}: {reply.get('error')}")


def control_path() -> Path:
    """The sound service's control socket as the OSC service finds it: under
    systemd the box's (``$RUNTIME_DIRECTORY`` is then the OSC unit's own folder),
    else where ``device ctl`` looks."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return control.BOX_RUNTIME_DIR / control.SOCKET_NAME
    return control.socket_path()


def serve(cfg: OscConfig, stop: threading.Event, *, frames: Path | None = None,
          control_socket: Path | None = None) -> int:
    """Run the OSC service until ``stop`` is set; with OSC off in the config, say
    so and return at once."""
    if not cfg.send_to and not cfg.listen:
        log.info("osc: off: osc.send_to and osc.listen are both empty in the config; "
                 "nothing to do")
        return 0
    service = OscService(cfg, frames=frames or publish.socket_path(),
                         control=control_socket or control_path()).start()
    try:
        stop.wait()
    finally:
        service.close()
    return 0
