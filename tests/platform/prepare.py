"""``python -m tests.platform.prepare [box] [arm64]``: what the platform tests
need from the network, fetched before they run so that nothing in them reaches
it (``make test`` runs it for ``box``, ``make test-arm64`` for ``arm64``).

- wheels the tests install in their Debian roots besides the release's own:
  pytest and gpiozero (the versions the suite pins; gpiozero stands for Raspberry
  Pi OS's python3-gpiozero, which a Pi has from apt) for aarch64 / CPython 3.11;
  pyalsaaudio's
  source, which provisioning builds on the box, with what pip builds it with;
  and the box's requirements for x86-64, for the box in a container here;
- the Debian bookworm roots asked for (debootstrap from Debian's mirror, cached
  under ``out/``; ``tests.platform.rootfs``).

A machine that cannot build a root (not root, no debootstrap) is told so in one
line and the tests skip; a failed download is an error.
"""

from __future__ import annotations

import re
import subprocess
import sys

from firmware_tools.provision import PYALSAAUDIO
from firmware_tools.release import BOX_REQUIREMENTS, WHEEL_PLATFORMS, WHEEL_PYTHON
from tests.conftest import ROOT

DEST = ROOT / "out" / "wheels-platform-test"
AMD64 = ROOT / "out" / "wheels-box-amd64"
"""The box's requirements for x86-64 / CPython 3.11 (its container's platform)."""


def pin(package: str) -> str:
    """``package==VERSION`` as pyproject.toml pins it."""
    found = re.search(rf'"({package}==[^";]+)"', (ROOT / "pyproject.toml").read_text())
    if not found:
        raise SystemExit(f"pyproject.toml: no {package}==VERSION pin")
    return found[1]


def fetch_wheels() -> None:
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--dest", str(DEST)]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    subprocess.run([*pip, "--only-binary=:all:", "--python-version", WHEEL_PYTHON,
                    "--implementation", "cp", *platforms, pin("pytest"), pin("gpiozero")],
                   check=True)
    subprocess.run([*pip, "--no-binary=:all:", "--no-deps", PYALSAAUDIO], check=True)
    subprocess.run([*pip, "--only-binary=:all:", "setuptools", "wheel"], check=True)
    amd64 = [arg for p in WHEEL_PLATFORMS for arg in
             ("--platform", p.replace("aarch64", "x86_64"))]
    subprocess.run([*pip[:-2], "--dest", str(AMD64), "--only-binary=:all:", "--python-version",
                    WHEEL_PYTHON, "--implementation", "cp", *amd64, *BOX_REQUIREMENTS],
                   check=True)
    print(f"platform test packages in {DEST} and {AMD64}")


def main(argv: list[str]) -> int:
    from tests.platform import rootfs

    unknown = set(argv) - set(rootfs.ROOTS)
    if unknown:
        print(f"prepare: unknown root {', '.join(sorted(unknown))} (expected "
              f"{' or '.join(rootfs.ROOTS)})", file=sys.stderr)
        return 2
    fetch_wheels()
    for name in argv:
        why = rootfs.cannot_build(rootfs.ROOTS[name][0])
        if why:
            print(f"prepare: no {name} root: {why}; its tests will skip")
            continue
        print(f"prepare: {name} root in {rootfs.build_root(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
