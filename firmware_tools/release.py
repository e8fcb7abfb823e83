"""Building a release: the folder that ``deploy`` copies to a box.

A release holds what the box runs and nothing else: the ``device`` package,
``config/``, the systemd units, the shipped ``models/*.dsb``, a demo track to
record with (``music/demo.wav``: the demo instrument played by the synthetic
dancer, made here, the same samples every time), the pinned
requirements the box's venv is made from (``requirements.txt``) and, when
prepared, ``wheels/``: binary wheels for aarch64 / CPython 3.11 so the box
installs without reaching a package index. ``release.json`` lists every file
with its SHA-256; the release id is a hash of that list, so the same content
always has the same id and a deploy of an unchanged tree changes nothing.

Downloading the wheels needs the package index, so it is a separate step with a
cache (``python -m firmware_tools release --wheels``); building a release never
touches the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from device.errors import DanceSamplerError

log = logging.getLogger(__name__)

MANIFEST = "release.json"
FORMAT = 1
REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"

# What the box installs into its venv (--system-site-packages: picamera2,
# libcamera, gpiozero and lgpio come from apt; Raspberry Pi OS's gpiozero works on
# a Pi 5, PyPI's 2.0.1 does not, so none is installed over it). Pinned exactly, so
# every box of one release runs the same code. numpy<2: Bookworm's picamera2 and
# tflite-runtime 2.14 are built against numpy 1. pyalsaaudio publishes no wheels:
# provisioning builds it once into the box's local wheel folder
# (/opt/dancesampler/wheels).
BOX_REQUIREMENTS = (
    "numpy==1.26.4",
    "pyyaml==6.0.2",
    "tflite-runtime==2.14.0",
    "av==16.0.1",
    "python-osc==1.10.2",
    "python-rtmidi==1.5.8",
)
BUILT_ON_BOX = ("pyalsaaudio==0.11.0",)

# The box: Raspberry Pi OS Bookworm 64-bit (glibc 2.36), CPython 3.11.
WHEEL_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64",
                   "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
WHEEL_PYTHON = "3.11"
DEFAULT_WHEEL_CACHE = Path("out") / "wheels-aarch64-cp311"

# (source in the project, name in the release); folders are copied whole.
_CONTENT = (("device", "device"), ("config", "config"),
            ("systemd/dancesampler.service", "systemd/dancesampler.service"),
            ("systemd/dancesampler-osc.service", "systemd/dancesampler-osc.service"),
            ("systemd/dancesampler-web.service", "systemd/dancesampler-web.service"),
            ("systemd/dancesampler-midi.service", "systemd/dancesampler-midi.service"))
_SKIP = {"__pycache__", ".pytest_cache"}


DEMO_TRACK = "music/demo.wav"
DEMO_TRACK_S = 30.0
_DEMO_TRACK_SEED = 2026


def _write_demo_track(path: Path) -> None:
    """A short track a dancer can record to at once (``track:demo.wav``): the demo
    instrument as the synthetic dancer plays it, 16-bit mono at the box's rate."""
    import wave

    from device.audio import to_int16
    from device.config import DeviceConfig
    from train_host.demo_data import make_demo_take

    cfg = DeviceConfig()
    take = make_demo_take(DEMO_TRACK_S, seed=_DEMO_TRACK_SEED, fps=cfg.camera.fps,
                          sample_rate=cfg.audio.sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(cfg.audio.sample_rate)
        out.writeframes(to_int16(take.audio).tobytes())


class ReleaseError(DanceSamplerError, OSError):
    """A release could not be built, or its wheels not fetched."""


@dataclass(frozen=True)
class Release:
    """A release folder built here, ready to copy."""

    id: str
    path: Path
    files: dict[str, str]
    """Path inside the release -> SHA-256."""
    size: int
    """Bytes of all its files."""


def requirements_text() -> str:
    lines = ["# Installed on the box by deploy: pip install --no-index --find-links wheels",
             "# --find-links /opt/dancesampler/wheels -r requirements.txt",
             *BOX_REQUIREMENTS, *BUILT_ON_BOX]
    return "\n".join(lines) + "\n"


def build_release(project: str | os.PathLike, out: str | os.PathLike,
                  wheels: str | os.PathLike | None = None) -> Release:
    """Gather the release from ``project`` into ``out/<id>/`` and return it.

    ``wheels``: a folder of ``.whl`` files to ship as ``wheels/`` (None: none,
    and the box's venv must find its packages elsewhere).
    """
    project, out = Path(project), Path(out)
    staging = out / ".building"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for source, name in _CONTENT:
        _copy(project / source, staging / name)
    models = sorted((project / "models").glob("*.dsb"))
    if not models:
        raise ReleaseError(f"{project / 'models'}: no *.dsb bundle to ship")
    for model in models:
        _copy(model, staging / "models" / model.name)
    _write_demo_track(staging / DEMO_TRACK)
    (staging / REQUIREMENTS).write_text(requirements_text())
    (staging / WHEELS).mkdir()
    if wheels is not None:
        found = sorted(Path(wheels).glob("*.whl"))
        for wheel in found:
            _copy(wheel, staging / WHEELS / wheel.name)

    files = {str(p.relative_to(staging)): _sha256(p)
             for p in sorted(staging.rglob("*")) if p.is_file()}
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items()))
    release_id = hashlib.sha256(listing.encode()).hexdigest()[:16]
    (staging / MANIFEST).write_text(json.dumps(
        {"format": FORMAT, "id": release_id, "files": files}, indent=1, sort_keys=True) + "\n")
    final = out / release_id
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    log.info("release %s: %d files, %.1f MB", release_id, len(files), size / 1e6)
    return Release(release_id, final, files, size)


def download_wheels(cache: str | os.PathLike, *, timeout: float = 600) -> list[Path]:
    """Fetch the aarch64 / CPython 3.11 wheels of ``BOX_REQUIREMENTS`` into ``cache``.

    pip keeps what is already there, so a second call downloads nothing new.
    Raises ``ReleaseError`` with pip's last words when a pin has no such wheel
    or the index cannot be reached.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(pip_download_command(cache), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        tail = " / ".join(line.strip() for line in result.stderr.splitlines()
                          if line.strip())[-400:]
        raise ReleaseError(f"downloading the box's wheels into {cache} failed: {tail}")
    return sorted(cache.glob("*.whl"))


def pip_download_command(dest: str | os.PathLike) -> list[str]:
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", WHEEL_PYTHON, "--implementation", "cp",
            "--dest", os.fspath(dest)]
    for platform in WHEEL_PLATFORMS:
        argv += ["--platform", platform]
    return [*argv, *BOX_REQUIREMENTS]


def _copy(source: Path, dest: Path) -> None:
    if not source.exists():
        raise ReleaseError(f"{source}: missing; a release needs it")
    if source.is_dir():
        shutil.copytree(source, dest, ignore=lambda _, names: [n for n in names if n in _SKIP
                                                                or n.endswith(".pyc")])
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
