"""``python -m tests.platform.wheels``: fetch what the arm64 tests install in their
root besides the release's own wheels: pytest (the version the suite pins) for
aarch64 / CPython 3.11, and pyalsaaudio's source, which provisioning builds on the
box. Run by ``make test-arm64`` before the tests (it needs the package index)."""

from __future__ import annotations

import re
import subprocess
import sys

from firmware_tools.provision import PYALSAAUDIO
from firmware_tools.release import WHEEL_PLATFORMS, WHEEL_PYTHON
from tests.conftest import ROOT

DEST = ROOT / "out" / "wheels-aarch64-test"


def pytest_pin() -> str:
    found = re.search(r'"(pytest==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not found:
        raise SystemExit("pyproject.toml: no pytest==VERSION pin in the dev extras")
    return found[1]


def main() -> int:
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--dest", str(DEST)]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    subprocess.run([*pip, "--only-binary=:all:", "--python-version", WHEEL_PYTHON,
                    "--implementation", "cp", *platforms, pytest_pin()], check=True)
    subprocess.run([*pip, "--no-binary=:all:", "--no-deps", PYALSAAUDIO], check=True)
    print(f"arm64 test packages in {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
