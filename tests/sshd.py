"""A real OpenSSH server on loopback, for tests of everything that goes over SSH.

The ``sshd`` fixture starts Debian's ``/usr/sbin/sshd`` as a foreground daemon
(``sshd -D -e -f CONFIG -p PORT``) listening on 127.0.0.1 only, on a free
unprivileged port, with a host key and a user key made for the test session in a
temporary folder. Clients get a ``known_hosts`` file holding that host key and
check it strictly, so the tests go through the same key exchange, host key check
and public-key login as ``make pull-data`` and ``make deploy`` do against a box.

It logs in as the user running the tests (root on CI: the config allows root to
log in with a key, never a password). Nothing but loopback is used. When
openssh-server, openssh-client or rsync is missing, the tests that need them skip
and name the Debian package to install.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
# Compiled into Debian's sshd: when it runs as root it chroots its
# pre-authentication child here, and refuses to start without it.
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0

_PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client",
             "ssh-keygen": "openssh-client", "rsync": "rsync"}


def require(program: str) -> str:
    """The path of ``program``, or skip the test naming the Debian package it comes in."""
    if program == "sshd":    # sshd re-executes itself, so it must be named by absolute path
        path = str(SSHD) if SSHD.exists() else None
    else:
        path = shutil.which(program)
    if path is None:
        package = _PACKAGES.get(program, program)
        pytest.skip(f"{program} is not installed: the SSH tests need the Debian packages "
                    f"openssh-server, openssh-client and rsync "
                    f"(apt-get install {package}; `make system-packages` installs them)")
    return path


def make_key(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` and ``path.pub``."""
    subprocess.run([require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C",
                    f"dancesampler-test-{path.name}", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@dataclass(frozen=True)
class SshServer:
    """A running loopback sshd and what a client needs to log in to it."""

    host: str
    port: int
    user: str
    identity: Path
    """Private key that the server accepts."""
    known_hosts: Path
    """A known_hosts file holding the server's host key (and nothing else)."""
    log: Path
    """Everything sshd wrote (``-e``, LogLevel VERBOSE): read it when a test fails."""

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def client_options(self) -> tuple[str, ...]:
        """``-o`` options (``Key=Value``) that pin this server's host key, strictly."""
        return ("StrictHostKeyChecking=yes", f"UserKnownHostsFile={self.known_hosts}",
                "GlobalKnownHostsFile=/dev/null")

    def ssh_command(self, *command: str, identity: Path | None = None) -> list[str]:
        """The argv of a plain ``ssh`` to this server running ``command`` (for checks)."""
        argv = [require("ssh"), "-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-i", str(identity or self.identity), "-p", str(self.port)]
        for option in self.client_options:
            argv += ["-o", option]
        return [*argv, self.target, *command]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(folder: Path, host_key: Path, authorized: Path, user: str) -> str:
    return "\n".join([
        f"ListenAddress {HOST}",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        f"AllowUsers {user}",
        # The temporary files live in a world-writable /tmp tree, which the
        # default StrictModes would refuse.
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AuthenticationMethods publickey",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxStartups 50:30:100",
        "MaxSessions 50",
        "LogLevel VERBOSE",
        # bash runs ~/.bashrc for every command sshd starts when it is the first
        # shell level; this test user's .bashrc may be slow (pyenv init: 0.3 s a
        # command), where a box's returns at once for non-interactive shells.
        "SetEnv SHLVL=1",
        "",
    ])


def _start(folder: Path, config: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start sshd on a free port and wait until it listens; retry if the port was taken."""
    for _ in range(5):
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config), "-p", str(port)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if f"Server listening on {HOST} port {port}" in text:
                return proc, port
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        _stop(proc)
        text = log.read_text(errors="replace")
        if "Address already in use" not in text and "Cannot bind" not in text:
            break
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
    raise RuntimeError(f"sshd did not start (config {config}):\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SshServer:
    """A real sshd on 127.0.0.1 (free port) accepting a temporary key; see SshServer."""
    require("sshd")
    require("ssh")
    require("ssh-keygen")
    folder = tmp_path_factory.mktemp("sshd")
    user = getpass.getuser()
    host_key = make_key(folder / "host_ed25519")
    identity = make_key(folder / "user_ed25519")
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "user_ed25519.pub").read_text())
    config = folder / "sshd_config"
    config.write_text(_config(folder, host_key, authorized, user))
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        # What the openssh-server package's systemd unit creates at boot.
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    log = folder / "sshd.log"
    proc, port = _start(folder, config, log)

    known_hosts = folder / "known_hosts"
    key_type, key = (folder / "host_ed25519.pub").read_text().split()[:2]
    known_hosts.write_text(f"[{HOST}]:{port} {key_type} {key}\n")
    server = SshServer(host=HOST, port=port, user=user, identity=identity,
                       known_hosts=known_hosts, log=log)
    try:
        probe = subprocess.run(server.ssh_command("true"), capture_output=True, text=True,
                               timeout=30)
        if probe.returncode != 0:
            if "account is locked" in log.read_text(errors="replace"):
                pytest.skip(f"sshd refuses to log in {user}: the account is locked (its "
                            f"password field starts with '!'), which sshd honours when UsePAM "
                            f"is off")
            raise RuntimeError(f"cannot log in to the test sshd: {probe.stderr.strip()}\n"
                               f"{server.log_tail()}")
        yield server
    finally:
        _stop(proc)
