"""Talking to a box over SSH: run a command on it, copy files from it with rsync.

A thin wrapper over the system's ``ssh`` and ``rsync`` (OpenSSH's client and
rsync 3), so keys, agents, ``~/.ssh/config`` and known hosts work as they do for
a person at a terminal. Every call is non-interactive (``BatchMode=yes``: never a
password or host-key prompt that would hang ``make``), gives up connecting after
``connect_timeout`` seconds, and notices a link that died mid-transfer.

Failures become one-line errors a person can act on: the box cannot be reached
(``HostUnreachable``), it would not let us in (``LoginRefused``), or a command on
it failed (``RemoteCommandFailed``, with the end of what it wrote to stderr).
Nothing here decides what to copy or run; ``pull`` and ``deploy`` do.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from device.errors import DanceSamplerError

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10
# A box that stops answering mid-transfer (unplugged, Wi-Fi gone) is given up
# after about a minute instead of hanging the pull for the kernel's TCP timeout.
_KEEPALIVE = ("ServerAliveInterval=15", "ServerAliveCountMax=4")
# Kept short: the control socket's path must fit in a Unix socket address.
_MUX_PERSIST_S = 60
_TAIL_CHARS = 300


class RemoteError(DanceSamplerError, OSError):
    """Something done on a box over SSH failed."""


class HostUnreachable(RemoteError):
    """The box cannot be reached: unknown name, no route, refused, or timed out."""


class LoginRefused(RemoteError):
    """The box answered but would not let us in (key refused, host key mismatch)."""


class RemoteCommandFailed(RemoteError):
    """A command on the box (or an rsync to or from it) exited with an error."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


# What ssh itself says when it cannot connect or log in (it then exits 255).
_UNREACHABLE = [
    (re.compile(r"Could not resolve hostname [^:]*: (.*)"), "unknown host name ({})"),
    (re.compile(r"connect to host .* port \d+: (Connection refused)"),
     "nothing accepts SSH there ({}): is the box on and sshd running?"),
    (re.compile(r"connect to host .* port \d+: (.*timed out)"), "no answer ({})"),
    (re.compile(r"connect to host .* port \d+: (.*)"), "{}"),
    (re.compile(r"(kex_exchange_identification: .*|Connection reset by .*|"
                r"Connection closed by .* port \d+)"), "the connection was dropped ({})"),
    (re.compile(r"(Connection to .* timed out.*|Timeout, server .* not responding.*|"
                r"client_loop: send disconnect: .*)"), "the link died ({})"),
]
_LOGIN = [
    (re.compile(r"(Permission denied \((?:publickey|password|keyboard|hostbased|gssapi)[^)]*\))"),
     "login refused: the box did not accept the key ({})"),
    (re.compile(r"(Host key verification failed)"),
     "login refused: the box's host key is unknown or has changed ({}); "
     "connect once with ssh to check and accept it"),
    (re.compile(r"(Too many authentication failures)"), "login refused ({}): pass the key "
                                                       "with --identity"),
]


class Remote:
    """One box reached over SSH as ``target`` (``user@host`` or ``host``).

    ``options`` are extra ``ssh -o`` settings as ``"Key=Value"`` strings; they win
    over this class's defaults (ssh takes the first value it is given). Use
    ``with remote.connection():`` around a series of calls to log in once and
    share that connection.
    """

    def __init__(self, target: str, port: int | None = None,
                 identity: str | os.PathLike | None = None, options: Sequence[str] = (), *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S):
        if not target or target.startswith("-") or any(c.isspace() for c in target):
            raise RemoteError(f"{target!r} is not a host (expected user@host or host)")
        if port is not None and not 0 < int(port) < 65536:
            raise RemoteError(f"{target}: port {port} is out of range")
        self.target = target
        self.port = None if port is None else int(port)
        self.identity = None if identity is None else Path(identity).expanduser()
        if self.identity is not None and not self.identity.is_file():
            raise LoginRefused(f"{self.identity}: no such key file")
        self.options = tuple(options)
        for option in self.options:
            if "=" not in option:
                raise RemoteError(f"ssh option {option!r} must be written Key=Value")
        self.connect_timeout = connect_timeout
        self._control: str | None = None

    def __str__(self) -> str:
        return self.target if self.port is None else f"{self.target}:{self.port}"

    # -- commands --------------------------------------------------------------

    def ssh_options(self) -> list[str]:
        """The ``ssh`` program and its options, without the target (rsync's ``-e``)."""
        argv = [_program("ssh", "openssh-client")]
        for option in self.options:   # first: ssh keeps the first value of each
            argv += ["-o", option]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={round(self.connect_timeout)}",
                 # A new box is trusted on first contact; a changed key is refused.
                 "-o", "StrictHostKeyChecking=accept-new"]
        for option in _KEEPALIVE:
            argv += ["-o", option]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity is not None:
            argv += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self._control is not None:
            argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={self._control}"]
        return argv

    def ssh_command(self, command: str | Sequence[str]) -> list[str]:
        """The argv that runs ``command`` on the box.

        A string is a shell command line for the box's shell; a sequence is quoted
        so that each item arrives as one argument.
        """
        return [*self.ssh_options(), "--", self.target, _command_line(command)]

    def run(self, command: str | Sequence[str], *, input: str | bytes | None = None,
            check: bool = True, timeout: float | None = None, what: str | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` on the box and return what it printed.

        Raises ``HostUnreachable`` or ``LoginRefused`` when ssh cannot get in, and
        (with ``check``) ``RemoteCommandFailed`` when the command exits non-zero.
        ``what`` names the action in error messages (default: the command).
        """
        argv = self.ssh_command(command)
        log.debug("ssh: %s", shlex.join(argv))
        try:
            result = subprocess.run(argv, input=input, capture_output=True, text=text,
                                    timeout=timeout,
                                    stdin=subprocess.DEVNULL if input is None else None)
        except subprocess.TimeoutExpired:
            raise RemoteCommandFailed(f"{self}: {what or _short(command)} took longer than "
                                      f"{timeout:g} s; gave up") from None
        if result.returncode == 255:
            raise self._ssh_error(_text(result.stderr), what or _short(command))
        if check and result.returncode != 0:
            raise self._command_error(result.returncode, _text(result.stderr),
                                      what or _short(command))
        return result

    def rsync_command(self, source: str, dest: str | os.PathLike,
                      args: Sequence[str] = ()) -> list[str]:
        """The argv of an rsync copying ``source`` on the box to ``dest`` here."""
        return [_program("rsync", "rsync"), "-e", shlex.join(self.ssh_options()), *args,
                f"{self.target}:{source}", os.fspath(dest)]

    def rsync_from(self, source: str, dest: str | os.PathLike, args: Sequence[str] = (),
                   *, what: str | None = None) -> subprocess.CompletedProcess:
        """Copy ``source`` on the box to ``dest`` here with rsync and ``args``."""
        argv = self.rsync_command(source, dest, args)
        log.debug("rsync: %s", shlex.join(argv))
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            what = what or f"copying {source}"
            error = self._login_or_unreachable(result.stderr, what)
            if error is not None:
                raise error
            raise self._command_error(result.returncode, result.stderr, what, program="rsync")
        return result

    # -- one login for many calls ----------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Remote]:
        """Log in once; every call inside the block shares that connection.

        Starts an OpenSSH control master (``ssh -M``) whose socket lives in a
        private temporary folder, and closes it when the block ends. A master left
        behind by a killed process exits by itself after a minute unused.
        """
        if self._control is not None:   # already inside one
            yield self
            return
        folder = tempfile.mkdtemp(prefix="dsb-ssh-")
        control = os.path.join(folder, "mux")
        argv = [*self.ssh_options(), "-M", "-N", "-f", "-o", f"ControlPath={control}",
                "-o", f"ControlPersist={_MUX_PERSIST_S}", "--", self.target]
        log.debug("ssh master: %s", shlex.join(argv))
        try:
            # The master keeps running in the background with this file as its
            # stderr; a pipe there would keep subprocess waiting for it.
            with open(os.path.join(folder, "master.log"), "w+") as err:
                result = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        timeout=self.connect_timeout + 60)
                err.seek(0)
                stderr = err.read()
        except subprocess.TimeoutExpired:
            shutil.rmtree(folder, ignore_errors=True)
            raise HostUnreachable(f"{self}: logging in took longer than "
                                  f"{self.connect_timeout + 60:g} s; gave up") from None
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise self._ssh_error(stderr, "logging in")
        self._control = control
        try:
            yield self
        finally:
            self._control = None
            subprocess.run([*self.ssh_options(), "-o", f"ControlPath={control}", "-O", "exit",
                            "--", self.target], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
            shutil.rmtree(folder, ignore_errors=True)

    # -- errors ----------------------------------------------------------------

    def _login_or_unreachable(self, stderr: str, what: str) -> RemoteError | None:
        for patterns, kind in ((_LOGIN, LoginRefused), (_UNREACHABLE, HostUnreachable)):
            for pattern, message in patterns:
                found = pattern.search(stderr)
                if found:
                    return kind(f"{self}: {what}: {message.format(found[1].strip().rstrip('.'))}")
        return None

    def _ssh_error(self, stderr: str, what: str) -> RemoteError:
        error = self._login_or_unreachable(stderr, what)
        if error is not None:
            return error
        # 255 is also what a remote command returns for exit(-1); say both.
        return RemoteError(f"{self}: {what}: ssh failed (exit 255): "
                           f"{_tail(stderr) or 'no message'}")

    def _command_error(self, returncode: int, stderr: str, what: str,
                       program: str | None = None) -> RemoteCommandFailed:
        who = f"{program} " if program else ""
        if returncode == 127 or "command not found" in stderr:
            detail = f"a program is missing on the box: {_tail(stderr)}"
        else:
            detail = _tail(stderr) or "no message"
        return RemoteCommandFailed(f"{self}: {what} failed ({who}exit {returncode}): {detail}",
                                   returncode=returncode, stderr=stderr)


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RemoteError(f"{name} is not installed on this machine (Debian package {package})")
    return path


def _command_line(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _short(command: str | Sequence[str]) -> str:
    line = _command_line(command)
    return f"`{line if len(line) <= 60 else line[:57] + '...'}`"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _tail(stderr: str) -> str:
    """The last lines a program wrote to stderr, as one line of at most 300 characters."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " / ".join(lines[-3:])
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS + 3:]
