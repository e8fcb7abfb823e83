"""Debian bookworm roots for the box's platform tests, built once and cached.

``build_root(name)`` makes (with debootstrap, from Debian's own mirror) one of
the minimal bookworm roots of ``ROOTS`` under ``out/``, once. ``run_in`` runs a
command inside a root with systemd-nspawn; a foreign architecture's programs run
under qemu-user through the kernel's binfmt_misc (Debian's qemu-user-static
registers it with the F flag, so the root needs no copy of qemu).

The roots are built before the tests (``python -m tests.platform.prepare``, at
install time, from Debian's mirror); a test finds its root with
``prepared_root``, which skips saying what this machine lacks.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_tools.provision import APT_PACKAGES, PI_PACKAGES
from tests.conftest import ROOT

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What provisioning installs on a box, less what only Raspberry Pi OS's own
# archive has (picamera2, lgpio: the tests' camera is the synthetic dancer, and
# there are no GPIO pins).
PACKAGES = ("python3", *(p for p in APT_PACKAGES if p not in PI_PACKAGES))
BINFMT = {"arm64": "/proc/sys/fs/binfmt_misc/qemu-aarch64"}
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}


ROOTS = {
    # name: (architecture, packages)
    "box": ("amd64", ("systemd", "systemd-sysv", "dbus", "openssh-server", *PACKAGES)),
    # Debian's python3-gpiozero is 1.6.2 (and pulls in RPi.GPIO); Raspberry Pi
    # OS's is 2.0.1: the arm64 test puts that one in the release's venv instead.
    "arm64": ("arm64", tuple(p for p in PACKAGES if p != "python3-gpiozero")),
}
"""The roots the platform tests use: the box booted with systemd on this machine's
architecture, and the release on the Pi's."""


def cannot_build(arch: str) -> str | None:
    """Why this machine cannot build and enter an ``arch`` root, or None."""
    if os.geteuid() != 0:
        return "building and entering a Debian root needs root"
    for program, package in (("debootstrap", "debootstrap"),
                             ("systemd-nspawn", "systemd-container")):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian package {package})"
    if NATIVE.get(platform.machine()) != arch:
        binfmt = Path(BINFMT[arch])
        text = binfmt.read_text() if binfmt.exists() else ""
        if "enabled" not in text:
            return (f"this kernel cannot run {arch} programs ({binfmt} is not registered: "
                    "Debian package qemu-user-static, binfmt_misc mounted)")
        flags = text.split("flags: ", 1)[1].split()[0] if "flags: " in text else ""
        if "F" not in flags:
            return f"{binfmt} lacks the F flag: qemu would have to be inside the root"
    return None


def root_path(name: str) -> Path:
    arch, packages = ROOTS[name]
    key = hashlib.sha256(" ".join((SUITE, arch, *packages)).encode()).hexdigest()[:10]
    return ROOT / "out" / f"rootfs-{SUITE}-{arch}-{key}"


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first (``/proc/self/mounts``)."""
    inside = os.path.realpath(folder)
    with open("/proc/self/mounts") as table:
        # Spaces and the like are written octal-escaped (\040).
        points = [line.split()[1].encode().decode("unicode_escape") for line in table]
    found = [p for p in points if p == inside or p.startswith(inside + os.sep)]
    return sorted(set(found), key=len, reverse=True)


def unmount_under(folder: Path) -> None:
    """Detach what an interrupted debootstrap left mounted in ``folder`` (its /proc,
    /sys), so that removing the folder never reaches into the host's."""
    for point in mounts_under(folder):
        result = subprocess.run(["umount", "--lazy", point], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{point} is still mounted from an interrupted build and cannot be "
                             f"unmounted ({result.stderr.strip()}); unmount it, then run again")


def build_root(name: str) -> Path:
    """Build the root ``name`` of ``ROOTS`` with debootstrap, once (it is built in a
    temporary folder and renamed into place only when complete)."""
    arch, packages = ROOTS[name]
    root = root_path(name)
    if (root / "usr" / "bin" / "python3").exists():
        return root
    building = root.with_name(root.name + ".building")
    unmount_under(building)
    shutil.rmtree(building, ignore_errors=True)
    result = subprocess.run(
        ["debootstrap", f"--arch={arch}", "--variant=minbase",
         f"--include={','.join(packages)}", SUITE, str(building), MIRROR],
        capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        tail = " / ".join(result.stdout.strip().splitlines()[-3:] +
                          result.stderr.strip().splitlines()[-3:])
        raise SystemExit(f"debootstrap of {SUITE} {arch} into {building} failed: {tail}")
    building.rename(root)
    return root


def prepared_root(name: str) -> Path:
    """The root ``name``, built by ``python -m tests.platform.prepare``; skip,
    saying why, where this machine cannot have it."""
    why = cannot_build(ROOTS[name][0])
    if why:
        pytest.skip(why)
    root = root_path(name)
    if not (root / "usr" / "bin" / "python3").exists():
        pytest.skip(f"{root} is not built: python -m tests.platform.prepare {name} builds it "
                    "(make test does; it needs Debian's mirror)")
    return root


def run_in(root: Path, command: str, *, binds: tuple[tuple[Path, str], ...] = (),
           env: dict[str, str] | None = None, timeout: float = 1800
           ) -> subprocess.CompletedProcess:
    """Run the shell ``command`` inside ``root`` (systemd-nspawn, no network),
    with host folders bound in, read-only, as ``(host path, path inside)``."""
    argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "--private-network",
            "--directory", str(root), "--setenv=LANG=C.UTF-8"]
    for key, value in (env or {}).items():
        argv.append(f"--setenv={key}={value}")
    for host, inside in binds:
        argv.append(f"--bind-ro={host}:{inside}")
    argv += ["--", "/bin/sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def check(result: subprocess.CompletedProcess, what: str) -> str:
    """``result``'s output, or fail naming ``what`` and the end of its output."""
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip().splitlines()
        pytest.fail(f"{what} failed (exit {result.returncode}):\n" + "\n".join(out[-40:]))
    return result.stdout


def quote(path: str | os.PathLike) -> str:
    return shlex.quote(os.fspath(path))
