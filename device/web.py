"""The technician's page: what the box sees and plays, and its controls (docs/web.md).

``python -m device web`` runs as its own small unit
(``systemd/dancesampler-web.service``), so that the sound service keeps no
network at all. It serves one HTML page (inline JS polling JSON, no framework)
over HTTP on ``web.listen``, and speaks to the sound service only as the OSC
service does:

- frames in: the datagrams the sound service sends each frame
  (``device.publish``: the motiongram, motion gain, level, state, and about 10
  times a second the camera's 64x48 grey picture) are kept, the last few
  seconds of them, for the page to fetch;
- commands out: every button on the page is one control channel request
  (``device.control``), the one implementation of each action; uploading a bundle
  is ``add-model`` (the sound service checks it as check-bundle does and copies
  it into the models folder), deleting a take ``delete-take``;
- takes are listed and downloaded by reading the takes folder, read-only (the
  unit's group may read it; it cannot write anywhere there).

Nothing but the login page is served without the password set at provision,
kept as a salted PBKDF2-SHA256 hash (``hash_password``; under systemd passed in as
the credential ``web-password``). A wrong password is answered 401 and logged,
at most one line every ``REPORT_EVERY_S``; more than ``FAILURES_PER_MINUTE`` from
one address in a minute are answered 429 without being tried. Nothing a client
does may stop this service, and nothing it does can stop the sound.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tarfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from device import control, publish
from device.config import PROJECT_ROOT, DeviceConfig, host_port, resolve_path
from device.control import NUMBER_COMMANDS, ControlError, check_value
from device.errors import DanceSamplerError
from device.osc import Tally
from device.session import is_take_name, list_sessions

log = logging.getLogger(__name__)

CREDENTIAL = "web-password"
"""The credential's name (``LoadCredential=web-password:/etc/dancesampler/web-password``)."""
BOX_PASSWORD_FILE = Path("/etc/dancesampler") / CREDENTIAL
ITERATIONS = 200_000
"""PBKDF2 rounds: about 0.1 s on this project's x86-64 machine, a few tenths on a Pi."""
SESSION_S = 12 * 3600.0
"""How long a login lasts."""
MAX_SESSIONS = 32
FAILURES_PER_MINUTE = 5
"""Wrong passwords one address may try in a minute; past that, 429 untried."""
MAX_CLIENTS = 4096
"""Addresses whose wrong passwords are remembered; past that the quietest half go."""
REPORT_EVERY_S = 10.0
HISTORY = 300
"""Frames of motiongram kept for the page (10 s at 30 fps)."""
STATUS_EVERY_S = 1.0
"""How often the box's status is asked for over the control channel."""
COMMANDS = ("record", "stop", "delete-last", "next-model", "voice-from-last-take",
            "volume", "sensitivity", "dynamics", "strike", "voice", "delete-take")
"""What the page's buttons may ask the box (``add-model`` goes through the upload)."""
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.dsb")
_POLL_S = 0.5
_PAGE = Path(__file__).with_name("web_page.html")


class WebError(DanceSamplerError, OSError):
    """The web service cannot start: no password set, a port in use."""


# ---- the password ----------------------------------------------------------------

def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    """``pbkdf2-sha256$ROUNDS$SALT$HASH`` (hex) of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2-sha256${iterations}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (``hash_password``) was made from;
    the hashes are compared in constant time."""
    kind, rounds, salt, digest = stored.split("$")
    if kind != "pbkdf2-sha256":
        return False
    tried = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(tried, bytes.fromhex(digest))


def read_password_hash(path: Path) -> str:
    """The stored hash in ``path``; a WebError naming the file when there is none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise WebError(f"{path}: no password is set for the page (provision sets one; "
                       "python -m device web-password makes one)") from None
    except OSError as exc:
        raise WebError(f"{path}: cannot read the page's password ({exc.strerror})") from None
    if not re.fullmatch(r"pbkdf2-sha256\$[1-9][0-9]{3,7}\$[0-9a-f]{16,128}\$[0-9a-f]{64}", text):
        raise WebError(f"{path}: not a password hash (pbkdf2-sha256$ROUNDS$SALT$HASH)")
    return text


def password_path() -> Path:
    """Where the hash is: the credential systemd hands the web unit, else the
    box's file, else (a laptop) ``out/web-password`` in the checkout."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return Path(credentials) / CREDENTIAL
    if BOX_PASSWORD_FILE.exists():
        return BOX_PASSWORD_FILE
    return PROJECT_ROOT / "out" / CREDENTIAL


# ---- what the sound service publishes --------------------------------------------

class Live:
    """The latest frames, picture and state from the sound service, and the box's
    status, for the page; updated by this service's threads, read by requests."""

    def __init__(self):
        self.lock = threading.Lock()
        self.frames: collections.deque = collections.deque(maxlen=HISTORY)
        """(number, gain, level dBFS, motion as uint8 0-255 for the display)."""
        self.count = 0
        """Frames received since the start: what ``since`` counts."""
        self.arrivals: collections.deque = collections.deque(maxlen=120)
        self.picture: publish.Picture | None = None
        self.state: dict = {}
        self.status: dict = {"ok": False, "error": "not asked yet"}

    def add(self, item) -> None:
        with self.lock:
            if isinstance(item, dict):
                self.state = item
            elif isinstance(item, publish.Picture):
                self.picture = item
            else:
                gained = np.clip(item.motion * np.float32(item.gain) / 0.2, 0.0, 1.0)
                self.frames.append((item.frame, item.gain, item.level_db,
                                    (np.sqrt(gained) * 255).astype(np.uint8).tobytes(),
                                    float(np.mean(item.motion[:item.width])) * item.gain))
                self.count += 1
                self.arrivals.append(time.monotonic())

    def snapshot(self, since: int) -> dict:
        """What the page polls: frames after the ``since``-th, the picture, meters,
        the state and the status."""
        with self.lock:
            if since > self.count:   # a page from before this service restarted
                since = 0
            new = min(max(0, self.count - since), len(self.frames))
            frames = list(self.frames)[len(self.frames) - new:] if new else []
            now = time.monotonic()
            recent = [t for t in self.arrivals if now - t <= 2.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
            last = self.frames[-1] if self.frames else None
            picture = self.picture
            return {
                "count": self.count,
                "motiongram": [base64.b64encode(f[3]).decode() for f in frames],
                "picture": None if picture is None else {
                    "frame": picture.frame, "width": picture.image.shape[1],
                    "height": picture.image.shape[0],
                    "grey": base64.b64encode(picture.image.tobytes()).decode()},
                "gain": last[1] if last else None,
                "level_db": last[2] if last else None,
                "motion": last[4] if last else None,
                "fps": round(fps, 1),
                "fresh": bool(recent) and now - recent[-1] < 1.0,
                "state": self.state, "status": self.status}


# ---- the service -----------------------------------------------------------------

class WebService:
    """The page on ``cfg.web.listen``; frames from ``frames``, commands to ``control``.

    ``password_hash``: from ``hash_password``; ``uploads``: a folder of this
    service's where an uploaded bundle waits while the box checks it (the sound
    service must be able to read it: under systemd, the unit's runtime folder)."""

    def __init__(self, cfg: DeviceConfig, *, frames: Path, control: Path, password_hash: str,
                 uploads: Path):
        self.cfg = cfg
        self.frames_path, self.control_path = Path(frames), Path(control)
        self.password_hash = password_hash
        self.uploads = Path(uploads)
        self.sessions_dir = resolve_path(cfg.recorder.sessions_dir)
        self.models_dir = resolve_path(cfg.model.models_dir)
        self.live = Live()
        self.tally = Tally(REPORT_EVERY_S, what="web: refused", logger=log)
        self.address: tuple[str, int] | None = None
        """Where the page is served, once bound."""
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._frames_sock: socket.socket | None = None
        self._http: ThreadingHTTPServer | None = None

    # ---- starting and stopping ---------------------------------------------------

    def start(self) -> WebService:
        try:
            self._frames_sock = publish.bind_listener(self.frames_path, who="web service",
                                                      error=WebError)
            self._frames_sock.settimeout(_POLL_S)
            self._http = self._bind_http()
            for target, name in ((self._receive_frames, "web-frames"),
                                 (self._poll_status, "web-status"),
                                 (self._http.serve_forever, "web-http")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                self._threads.append(thread)
                thread.start()
        except Exception:
            self.close()
            raise
        log.info("web: serving the page on http://%s:%d/ (frames from %s)",
                 *self.address, self.frames_path)
        return self

    def _bind_http(self) -> ThreadingHTTPServer:
        host, port = host_port(self.cfg.web.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        service = self

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            web = service

            def server_bind(self):
                if family == socket.AF_INET6:
                    self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                super().server_bind()

        try:
            server = Server((host, port), Handler)
        except OSError as exc:
            raise WebError(f"web.listen: cannot listen on {self.cfg.web.listen}: "
                           f"{exc.strerror or exc}") from None
        self.address = server.server_address[:2]
        return server

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._http is not None:
            if any(t.name == "web-http" for t in self._threads):
                self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("web: thread %s did not stop within %.0f s", thread.name, timeout)
        if self._frames_sock is not None:
            self._frames_sock.close()
            self._frames_sock = None
            control.remove_socket(self.frames_path)
        self.tally.report(now=True)

    # ---- frames in, status polled ----------------------------------------------------

    def _receive_frames(self) -> None:
        publish.take_frames(self._frames_sock, self._stop, self.tally, self.live.add)

    def _poll_status(self) -> None:
        while not self._stop.is_set():
            try:
                status = control.request("status", self.control_path, timeout=3.0)
            except ControlError as exc:
                status = {"ok": False, "error": str(exc)}
            with self.live.lock:
                self.live.status = status
            self._stop.wait(STATUS_EVERY_S)

    # ---- logging in --------------------------------------------------------------

    def login(self, password: str, client: str) -> tuple[HTTPStatus, str | None]:
        """(200 and a new session's token) for the right password; 401 for a wrong
        one, 429 for an address past ``FAILURES_PER_MINUTE``."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.setdefault(client, collections.deque())
            while failures and now - failures[0] > 60.0:
                failures.popleft()
            if len(failures) >= FAILURES_PER_MINUTE:
                self.tally.count("logins refused untried (too many wrong passwords)", client)
                return HTTPStatus.TOO_MANY_REQUESTS, None
        if not check_password(password, self.password_hash):
            with self._lock:
                failures.append(now)
                if len(self._failures) > MAX_CLIENTS:   # bounded: forget the quietest
                    for key in sorted(self._failures, key=lambda k: self._failures[k][-1]
                                      if self._failures[k] else 0.0)[:MAX_CLIENTS // 2]:
                        del self._failures[key]
            self.tally.count("wrong passwords", client)
            return HTTPStatus.UNAUTHORIZED, None
        token = secrets.token_urlsafe(32)
        with self._lock:
            failures.clear()
            self._sessions = {t: end for t, end in self._sessions.items() if end > now}
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=self._sessions.get)]
            self._sessions[token] = now + SESSION_S
        log.info("web: %s logged in", client)
        return HTTPStatus.OK, token

    def session_valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            known = [t for t in self._sessions if hmac.compare_digest(t, token)]
            return bool(known) and self._sessions[known[0]] > time.monotonic()

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    # ---- what the page asks for ------------------------------------------------------

    def command(self, cmd: object, value: object) -> dict:
        """One control channel request from a button of the page."""
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        if cmd in NUMBER_COMMANDS and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass   # check_value names what it takes
        try:
            value = check_value(cmd, value if value != "" else None)
            reply = control.request(cmd, self.control_path, value=value)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        said = cmd if value is None else f"{cmd} {value}"
        if reply.get("ok"):
            log.info("web: %s: %s", said, reply.get("status") or reply.get("state"))
        else:
            log.warning("web: %s refused: %s", said, reply.get("error"))
        return reply

    def takes(self) -> list[dict]:
        """The takes folder, newest first."""
        return [{"name": info.path.name, "label": info.label, "started": info.started,
                 "duration_s": round(info.duration_s, 1), "frames": info.frames,
                 "clean": info.clean, "problems": list(info.problems)}
                for info in reversed(list_sessions(self.sessions_dir))]

    def voices(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.models_dir.glob("*.dsb") if p.is_file())
        except OSError:
            return []

    def take_folder(self, name: str) -> Path | None:
        """The take folder ``name`` (named like a take, no link), or None."""
        path = self.sessions_dir / name
        if not is_take_name(name) or path.is_symlink() or not path.is_dir():
            return None
        return path

    def add_bundle(self, name: str, body, length: int) -> dict:
        """Take ``length`` bytes of ``body`` as the bundle ``name`` and ask the box
        to check it and add it to its models folder (``add-model``)."""
        most = self.cfg.web.upload_max_mb << 20
        if length > most:   # not read: the connection is closed under it
            return {"ok": False, "error": f"{length} bytes; web.upload_max_mb allows "
                                          f"{self.cfg.web.upload_max_mb} MB"}
        if not BUNDLE_NAME.fullmatch(name):
            # Read to its end, so that the sender, still sending, hears the answer.
            while length > 0 and (chunk := body.read(min(length, 1 << 16))):
                length -= len(chunk)
            return {"ok": False, "error": f"{name!r} is not a bundle's file name (letters, "
                                          "digits, '.', '_', '-', ending .dsb)"}
        self.uploads.mkdir(parents=True, exist_ok=True)
        folder = self.uploads / f"upload-{secrets.token_hex(8)}"
        folder.mkdir(mode=0o700)
        path = folder / name
        try:
            with open(path, "xb") as out:
                left = length
                while left:
                    chunk = body.read(min(left, 1 << 16))
                    if not chunk:
                        return {"ok": False, "error": f"the upload ended after "
                                                      f"{length - left} of {length} bytes"}
                    out.write(chunk)
                    left -= len(chunk)
            _share_with_box(path, 0o640)
            _share_with_box(folder, 0o710)
            reply = control.request("add-model", self.control_path, value=str(path),
                                    timeout=120.0)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if reply.get("ok"):
            log.info("web: bundle %s uploaded and added (%d bytes)", name, length)
        else:
            log.warning("web: bundle %s refused: %s", name, reply.get("error"))
        return reply


def _share_with_box(path: Path, mode: int) -> None:
    """``path`` readable by the sound service's group (an upload it must check)."""
    import grp

    try:
        os.chown(path, -1, grp.getgrnam(publish.SERVICE_GROUP).gr_gid)
    except (KeyError, PermissionError):
        mode |= 0o004 if path.is_file() else 0o001   # off the box: no such group
    os.chmod(path, mode)


# ---- HTTP ------------------------------------------------------------------------

_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
COOKIE = "dancesampler"


class Handler(BaseHTTPRequestHandler):
    """One request. Everything but ``/login`` needs a logged-in session; a POST
    to ``/api/`` also needs the header ``X-Dancesampler: 1``, which no form of
    another site can send."""

    server_version = "dancesampler"
    sys_version = ""
    timeout = 30   # a client that stops sending is dropped

    @property
    def web(self) -> WebService:
        return self.server.web

    def log_message(self, format, *args):   # noqa: A002 - the base class's name
        log.debug("web: %s %s", self.client_address[0], format % args)

    # ---- answers ----

    def _send(self, status: HTTPStatus, body: bytes, kind: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data, separators=(",", ":")).encode(),
                   "application/json")

    def _login_page(self, status: HTTPStatus, note: str = "") -> None:
        said = f'<p class="bad">{html.escape(note)}</p>' if note else ""
        body = _LOGIN.replace("{note}", said).encode()
        self._send(status, body, "text/html; charset=utf-8")

    def _token(self) -> str | None:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == COOKIE:
                return value
        return None

    def _client(self) -> str:
        host = self.client_address[0]
        try:
            address = ipaddress.ip_address(host.split("%")[0])
            if address.version == 6 and address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
        except ValueError:
            pass
        return host

    # ---- routes ----

    def do_GET(self) -> None:   # noqa: N802 - the base class's name
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/login":
            return self._login_page(HTTPStatus.OK)
        if not self.web.session_valid(self._token()):
            if url.path == "/":
                return self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/login")
            return self._json({"error": "log in first"}, HTTPStatus.UNAUTHORIZED)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/":
            return self._send(HTTPStatus.OK, _PAGE.read_bytes(), "text/html; charset=utf-8")
        if url.path == "/api/live":
            try:
                since = int(query.get("since", ["0"])[0])
            except ValueError:
                since = 0
            return self._json(self.web.live.snapshot(since))
        if url.path == "/api/takes":
            return self._json(self.web.takes())
        if url.path == "/api/voices":
            return self._json(self.web.voices())
        match = re.fullmatch(r"/takes/([^/]+)\.tar", url.path)
        if match:
            return self._download(urllib.parse.unquote(match[1]))
        return self._json({"error": f"no such page {url.path}"}, HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:   # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:   # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        length = self._length()
        if length is None:
            return
        if url.path == "/login":
            if length > 4096:
                return self._login_page(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too long")
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            status, token = self.web.login(form.get("password", [""])[0], self._client())
            if token:
                return self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", Location="/",
                                  Set_Cookie=f"{COOKIE}={token}; HttpOnly; SameSite=Strict; "
                                             f"Path=/; Max-Age={int(SESSION_S)}")
            note = ("wrong password" if status == HTTPStatus.UNAUTHORIZED
                    else "too many wrong passwords: wait a minute")
            return self._login_page(status, note)
        if not self.web.session_valid(self._token()):
            return self._json({"error": "log in first"}, HTTPStatus.UNAUTHORIZED)
        if self.headers.get("X-Dancesampler") != "1":
            return self._json({"error": "the header X-Dancesampler: 1 is missing"},
                              HTTPStatus.FORBIDDEN)
        if url.path == "/logout":
            self.web.logout(self._token())
            return self._json({"ok": True})
        if url.path == "/api/ctl":
            if length > 4096:
                return self._json({"error": "too long"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            try:
                request = json.loads(self.rfile.read(length))
                cmd, value = request["cmd"], request.get("value")
            except (ValueError, KeyError, TypeError):
                return self._json({"ok": False, "error": 'expected {"cmd": …, "value": …}'},
                                  HTTPStatus.BAD_REQUEST)
            return self._json(self.web.command(cmd, value))
        if url.path == "/api/upload":
            name = urllib.parse.parse_qs(url.query).get("name", [""])[0]
            reply = self.web.add_bundle(name, self.rfile, length)
            self.close_connection = True   # a body too large to take is left unread
            return self._json(reply)
        return self._json({"error": f"no such page {url.path}"}, HTTPStatus.NOT_FOUND)

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self._json({"error": "Content-Length is needed"}, HTTPStatus.LENGTH_REQUIRED)
            return None
        return length

    def _download(self, name: str) -> None:
        """The take folder ``name`` as an uncompressed tar, streamed."""
        folder = self.web.take_folder(name)
        if folder is None:
            return self._json({"error": f"no take {name!r}"}, HTTPStatus.NOT_FOUND)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Disposition", f'attachment; filename="{folder.name}.tar"')
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.close_connection = True   # no Content-Length: the end of the tar is the close
        try:
            with tarfile.open(fileobj=self.wfile, mode="w|") as tar:
                for path in sorted(folder.iterdir()):
                    # A dot file is the recorder's temporary, renamed away at any moment.
                    if path.name.startswith(".") or path.is_symlink() or not path.is_file():
                        continue
                    try:
                        tar.add(path, arcname=f"{folder.name}/{path.name}")
                    except FileNotFoundError:
                        continue   # gone between the listing and the read
        except (OSError, tarfile.TarError) as exc:
            log.warning("web: download of %s cut off: %s", name, exc)


def serve(cfg: DeviceConfig, stop: threading.Event, *, frames: Path | None = None,
          control_socket: Path | None = None, password_file: Path | None = None) -> int:
    """Run the web service until ``stop`` is set; with the page off in the config,
    say so and return at once."""
    if not cfg.web.listen:
        log.info("web: off: web.listen is empty in the config; nothing to do")
        return 0
    password = read_password_hash(password_file or password_path())
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    uploads = Path(runtime) if runtime else PROJECT_ROOT / "out" / "web-uploads"
    service = WebService(cfg, frames=frames or publish.web_socket_path(),
                         control=control_socket or _control_path(), password_hash=password,
                         uploads=uploads).start()
    try:
        stop.wait()
    finally:
        service.close()
    return 0


def _control_path() -> Path:
    """The sound service's control socket as the OSC service finds it."""
    from device.osc import control_path

    return control_path()


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dancesampler: log in</title>
<style>body{font:16px system-ui,sans-serif;background:#111;color:#eee;display:flex;
justify-content:center;padding-top:15vh;margin:0}form{display:flex;flex-direction:column;
gap:.8em;width:16em}input,button{font:inherit;padding:.6em;border-radius:6px;border:1px solid
#555;background:#222;color:#eee}button{background:#2a6;border:0;color:#fff}.bad{color:#f66}
</style></head><body><form method="post" action="/login">
<h1 style="font-size:1.3em;margin:0">dancesampler</h1>{note}
<input type="password" name="password" placeholder="password" autocomplete="current-password"
 autofocus required aria-label="password"><button type="submit">Log in</button></form>
</body></html>
"""
