"""The control channel of a running box: one UNIX socket, one small protocol.

What the buttons do, a technician (``python -m device ctl``), and later other
front ends, ask for here; the performance carries out both through the same
actions. The protocol is versioned and specified in docs/control.md: one JSON
object per line each way, one request per connection.

    request:  {"v": 1, "cmd": "record"}        {"v": 1, "cmd": "volume", "value": 0.5}
    reply:    {"v": 1, "ok": true, "state": "recording", "model": "default",
               "status": "recording default (30 fps, compute 0.6 ms, 0 underruns)"}
    refusal:  {"v": 1, "ok": false, "error": "this box has no recorder set up"}

The socket lives in the service's runtime folder (``$RUNTIME_DIRECTORY``,
``/run/dancesampler``), mode 0660: the service's user and group only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from device.config import PROJECT_ROOT, AudioConfig, MotionConfig
from device.errors import DanceSamplerError

log = logging.getLogger(__name__)

PROTOCOL = 1
COMMANDS = ("record", "stop", "delete-last", "next-model", "voice-from-last-take", "status",
            "volume", "sensitivity", "dynamics", "strike", "voice", "delete-take", "add-model")
"""record: start a take (labelled ``value``, if given); stop: end it; delete-last:
delete the last take; next-model: crossfade to the next bundle;
voice-from-last-take: build a corpus voice from the newest take and crossfade to
it; status: what the box is doing; volume, sensitivity, dynamics, strike: set the
master volume, the motion sensitivity, how far the level swings with the dance
(the dynamics depth) or how loud a model's sound is struck where the dancer stops
to ``value``; voice: crossfade to the bundle named
``value`` in the models folder; delete-take: delete the take folder named
``value``; add-model: check the bundle file at the path ``value`` as
check-bundle does and copy it into the models folder (never over a file there)."""
VALUE_COMMANDS = ("volume", "sensitivity", "dynamics", "strike", "voice", "delete-take",
                  "add-model")
"""The commands that need a ``value``."""
OPTIONAL_VALUE_COMMANDS = ("record",)
"""The commands that may take a ``value``; the others take none."""
SOCKET_NAME = "control.sock"
BOX_RUNTIME_DIR = Path("/run/dancesampler")
"""The unit's ``RuntimeDirectory=dancesampler``."""
MAX_LINE = 4096
"""Longest request or reply line, in bytes."""
TIMEOUT_S = 5.0
"""How long either end waits for the other's line."""


class ControlError(DanceSamplerError, OSError):
    """The control channel could not be used; the message says why."""


def _bounds(section: type, name: str) -> tuple[float, float]:
    meta = {f.name: f.metadata for f in dataclasses.fields(section)}[name]
    return meta["min"], meta["max"]


_NUMBERS = {"volume": _bounds(AudioConfig, "volume"),
            "sensitivity": _bounds(MotionConfig, "sensitivity"),
            "dynamics": _bounds(MotionConfig, "dynamics_depth"),
            "strike": _bounds(MotionConfig, "strike")}
"""The numbers volume, sensitivity, dynamics and strike take: the bounds of
audio.volume, motion.sensitivity, motion.dynamics_depth and motion.strike in the
config."""
NUMBER_COMMANDS = tuple(_NUMBERS)
"""The commands whose value is a number."""


def check_value(command: str, value: object) -> float | str | None:
    """``value`` as ``command`` takes it (a float, a name, a path, or None), or a
    ControlError saying what it takes."""
    if command in OPTIONAL_VALUE_COMMANDS:
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise ControlError(f"{command} takes no value or a take's label (text), "
                               f"not {value!r}")
        return value
    if command == "delete-take":
        if not isinstance(value, str) or not value or "/" in value or value.startswith(".") \
                or len(value) > 200:
            raise ControlError(f"delete-take takes the name of a take's folder, not {value!r}")
        return value
    if command == "add-model":
        if not isinstance(value, str) or not value.startswith("/") \
                or not value.endswith(".dsb") or len(value) > 1000:
            raise ControlError(f"add-model takes the absolute path of a .dsb bundle file, "
                               f"not {value!r}")
        return value
    if command not in VALUE_COMMANDS:
        if value is not None:
            raise ControlError(f"{command} takes no value")
        return None
    if command == "voice":
        if not isinstance(value, str) or not value or "/" in value or value.startswith(".") \
                or len(value) > 200:
            raise ControlError(f"voice takes the name of a bundle in the models folder "
                               f"(its file name without .dsb), not {value!r}")
        return value
    low, high = _NUMBERS[command]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ControlError(f"{command} takes a number from {low:g} to {high:g}, "
                           f"not {value!r}")
    return float(value)


def socket_path() -> Path:
    """Where the running box listens: the runtime folder systemd gives the service;
    for a command run beside it, the box's runtime folder if it is there; else
    (``make run`` on a laptop) ``out/`` in the checkout."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / SOCKET_NAME
    box = BOX_RUNTIME_DIR / SOCKET_NAME
    if box.exists():
        return box
    return PROJECT_ROOT / "out" / SOCKET_NAME


def remove_socket(path: Path) -> None:
    """Remove the socket file at ``path`` a server of ours bound; anything else found
    there (or nothing) is left as it is."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


class ControlServer:
    """Listens on ``path`` in a thread; ``act(command, value)`` carries out a
    command (``value``: from ``check_value``) and returns the reply's fields (``ok``
    and ``error`` or the box's state); a ControlError it raises is the refusal."""

    def __init__(self, path: Path, act: Callable[[str, float | str | None], dict]):
        self.path, self.act = Path(path), act
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            raise ControlError(f"control: cannot listen on {self.path}: {exc.strerror or exc}"
                               ) from None
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control: listening on %s", self.path)
        return self

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        remove_socket(self.path)

    def _remove_stale(self) -> None:
        """A socket file left by a box that died; refuse to take over a live one."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"control: {self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()
            return
        finally:
            probe.close()
        raise ControlError(f"control: another box is listening on {self.path}")

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return   # closed
            threading.Thread(target=self._answer, args=(conn,), name="control-client",
                             daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT_S)
            try:
                reply = self._reply(_read_line(conn))
            except ControlError as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(_encode({"v": PROTOCOL, **reply}))
            except OSError:
                pass   # the client went away

    def _reply(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            raise ControlError("the request is not one JSON object on one line") from None
        if not isinstance(request, dict):
            raise ControlError("the request is not a JSON object")
        if request.get("v") != PROTOCOL:
            raise ControlError(f"protocol version {request.get('v')!r} is not spoken here "
                               f"(this box speaks {PROTOCOL})")
        command = request.get("cmd")
        if command not in COMMANDS:
            raise ControlError(f"unknown command {command!r} (expected one of "
                               f"{', '.join(COMMANDS)})")
        value = check_value(command, request.get("value"))
        try:
            return self.act(command, value)
        except ControlError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad request must never stop the show
            log.exception("control: %s failed", command)
            return {"ok": False, "error": f"{command} failed: {exc}"}


def request(command: str, path: Path | None = None, *, value: float | str | None = None,
            timeout: float = TIMEOUT_S + 5) -> dict:
    """Send ``command`` (with ``value``, for those that take one) to the box
    listening on ``path`` (default: ``socket_path()``) and return its reply;
    raises ``ControlError`` naming the socket when none answers."""
    path = Path(path) if path is not None else socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no box is running here: {path} does not exist") from None
        except ConnectionRefusedError:
            raise ControlError(f"no box is running here: nothing listens on {path}") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root or as a member of "
                               "the service's group)") from None
        sock.sendall(_encode({"v": PROTOCOL, "cmd": command,
                              **({} if value is None else {"value": value})}))
        reply = json.loads(_read_line(sock))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ControlError):
            raise
        raise ControlError(f"{path}: no answer from the box ({exc})") from None
    finally:
        sock.close()
    if not isinstance(reply, dict) or reply.get("v") != PROTOCOL:
        raise ControlError(f"{path}: the box answered in another protocol: {reply!r}")
    return reply


def _encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        try:
            chunk = sock.recv(MAX_LINE)
        except TimeoutError:
            raise ControlError(f"no whole line within {TIMEOUT_S:g} s") from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ControlError(f"a line longer than {MAX_LINE} bytes")
    line = data.split(b"\n", 1)[0]
    if not line:
        raise ControlError("an empty request")
    return line
