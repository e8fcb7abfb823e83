"""Putting one model bundle on a box (``flash-model``), checked before it is used.

The bundle is read and verified here first (a damaged file never leaves this
machine), copied into the box's models folder's ``.incoming/``
(``/var/lib/dancesampler/models``, ``device.config.BOX_STATE_DIR``), its SHA-256
checked on the box against this machine's, and run through the box's own
``python -m device check-bundle`` (the box's config, the box's runtime). Only
then is it renamed into ``models/``, in one step. A bundle refused at any stage
leaves ``models/`` as it was; the service picks the new model up at the model
button or its next start.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import shlex
from collections.abc import Callable
from pathlib import Path

from device.config import DeviceConfig, box_path
from device.errors import BundleError
from firmware_tools.deploy import Box, _run, rsync_to
from firmware_tools.ssh import Remote, RemoteCommandFailed, RemoteError

log = logging.getLogger(__name__)

MODELS_DIR = box_path(DeviceConfig().model.models_dir)
SERVICE_USER = "dancesampler"


class FlashRefused(RemoteError):
    """The bundle was refused (here or on the box); the box keeps what it had."""


def flash_model(remote: Remote, bundle: str | Path, box: Box = Box(), *,
                report: Callable[[str], None] = print,
                rsync: Callable[..., None] | None = None) -> str:
    """Install ``bundle`` into the box's models folder; return its path there."""
    from device.bundle import read_bundle

    bundle = Path(bundle)
    try:
        read_bundle(bundle)
    except BundleError as exc:
        raise FlashRefused(f"refused: {exc}") from None
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    name = bundle.name if bundle.suffix == ".dsb" else f"{bundle.name}.dsb"
    models = box.path(MODELS_DIR)
    incoming = posixpath.join(models, ".incoming", name)
    final = posixpath.join(models, name)
    rsync = rsync or rsync_to
    with remote.connection():
        _run(remote, box, f"mkdir -p {shlex.quote(posixpath.dirname(incoming))}",
             "making the models folder")
        rsync(remote, box, str(bundle), incoming, ("-I",))
        try:
            got = _run(remote, box, f"sha256sum {shlex.quote(incoming)}",
                       "checksumming the copy").stdout.split()[:1]
            if got != [digest]:
                raise FlashRefused(f"{remote}: refused {name}: the copy on the box does not "
                                   f"match (SHA-256 {(got or ['?'])[0][:16]}…, expected "
                                   f"{digest[:16]}…); models/ unchanged")
            check = f"{box.python.format(current=shlex.quote(box.path('opt/dancesampler/current')))}" \
                    f" -m device check-bundle {shlex.quote(incoming)}"
            try:
                _run(remote, box, check, f"checking {name} on the box", timeout=300)
            except RemoteCommandFailed as exc:
                raise FlashRefused(f"{remote}: refused {name}: check-bundle on the box "
                                   f"said: {_reason(exc.stderr)}; models/ unchanged") from None
        except RemoteError:
            _run(remote, box, f"rm -f {shlex.quote(incoming)}", "removing the refused copy",
                 check=False)
            raise
        owner = shlex.quote(f"{SERVICE_USER}:{SERVICE_USER}")
        _run(remote, box, f"if id -u {SERVICE_USER} >/dev/null 2>&1; then "
                          f"chown {owner} {shlex.quote(incoming)}; fi && "
                          f"chmod 0640 {shlex.quote(incoming)} && "
                          f"mv -f {shlex.quote(incoming)} {shlex.quote(final)}",
             f"putting {name} in place")
    report(f"{remote}: flashed {name} ({digest[:16]}…) to {final}")
    return final


def _reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no message"
