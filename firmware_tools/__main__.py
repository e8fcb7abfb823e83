"""``python -m firmware_tools``: getting takes off boxes and releases onto them.

Subcommands import what they need when they run; nothing here loads TensorFlow.
Errors meant for people print one line to stderr and exit 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("firmware_tools")

# The project tree a release is built from: the one this package lives in.
_PROJECT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    # The box's folders, for the help texts: where the service finds them.
    from device.config import BOX_STATE_DIR, DeviceConfig, box_path

    defaults = DeviceConfig()
    parser = argparse.ArgumentParser(prog="python -m firmware_tools",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = commands.add_parser(
        "pull-data", help="copy the takes a box recorded to this machine, verified",
        description="Copy every take that HOST has and this machine lacks into --out, "
                    "checking each file's SHA-256 against the box's. Takes still being "
                    "recorded are left for next time; an interrupted pull carries on where "
                    "it stopped. Nothing on the box changes unless --delete-after is given.")
    pull.add_argument("host", metavar="HOST", help="the box, as user@host or host")
    pull.add_argument("--remote-dir", default=None,
                      help="folder of takes on the box (default: "
                           f"{box_path(defaults.recorder.sessions_dir)})")
    pull.add_argument("--out", default=None,
                      help="folder of takes here (default: recorder.sessions_dir in the "
                           "project)")
    pull.add_argument("--delete-after", action="store_true",
                      help="delete each take on the box once its copy here is verified")
    _ssh_options(pull)
    pull.set_defaults(func=_pull_data)

    release = commands.add_parser(
        "release", help="build a release folder here (and fetch the box's wheels)",
        description="Build the release that deploy would copy, into --out/<id>/, and print "
                    "its id. With --wheels, first fetch the aarch64 / CPython 3.11 wheels "
                    "of the box's pinned requirements into the cache (needs the package "
                    "index; later builds and deploys use the cache offline).")
    release.add_argument("--out", default="out/releases", help="where to build (default: "
                                                                "out/releases)")
    release.add_argument("--wheels", action="store_true",
                         help="download the box's wheels into the cache first")
    release.add_argument("--wheel-cache", default=None,
                         help="folder of box wheels (default: out/wheels-aarch64-cp311)")
    release.set_defaults(func=_release)

    deploy = commands.add_parser(
        "deploy", help="put this release on boxes, switch to it, roll back if it fails",
        description="Build a release of this tree, copy it to each HOST, make its venv, "
                    "switch /opt/dancesampler/current to it and restart the service; if the "
                    "service does not come up, switch back and restart the release that ran "
                    "before. A release that is already running is left alone.")
    deploy.add_argument("hosts", metavar="HOST", nargs="+", help="a box, as user@host or host")
    deploy.add_argument("--wheel-cache", default=None,
                        help="folder of box wheels to ship (default: out/wheels-aarch64-cp311 "
                             "if it exists)")
    deploy.add_argument("--no-wheels", action="store_true",
                        help="ship no wheels: the box's pip must find them elsewhere")
    _box_options(deploy)
    deploy.set_defaults(func=_deploy)

    flash = commands.add_parser(
        "flash-model", help="copy a model bundle to boxes, checked there before use",
        description=f"Copy BUNDLE into {box_path(defaults.model.models_dir)}/ on each "
                    "HOST: verified "
                    "here, its SHA-256 checked on the box and run through the box's own "
                    "check-bundle before it is renamed into place.")
    flash.add_argument("bundle", metavar="BUNDLE", help="a .dsb bundle file")
    flash.add_argument("hosts", metavar="HOST", nargs="+", help="a box, as user@host or host")
    _box_options(flash)
    flash.set_defaults(func=_flash_model)

    provision = commands.add_parser(
        "provision", help="make a fresh Raspberry Pi OS box ready for deploys (idempotent)",
        description="Install the apt packages, the service user and its groups, the folders, "
                    "a pyalsaaudio wheel and the unit on HOST; every step is skipped when "
                    "already done. See docs/deploy.md.")
    provision.add_argument("hosts", metavar="HOST", nargs="+", help="a box, as user@host or host")
    provision.add_argument("--read-only-root", action="store_true",
                           help="also turn on the overlay read-only root (needs "
                                f"{BOX_STATE_DIR} on its own partition)")
    provision.add_argument("--new-web-password", action="store_true", dest="new_web_password",
                           help="replace the web page's password with a new one (shown once); "
                                "without it a password already set is kept")
    _box_options(provision)
    provision.set_defaults(func=_provision)

    status = commands.add_parser(
        "status", help="one row per box: release, voice, state, uptime, takes, last error",
        description="Ask every HOST at once over SSH what it is doing; a box that does not "
                    "answer is one line, after the table.")
    status.add_argument("hosts", metavar="HOST", nargs="+", help="a box, as user@host or host")
    _box_options(status)
    status.set_defaults(func=_status)

    args = parser.parse_args(argv)
    from device.cli import dispatch

    try:
        return dispatch(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dancesampler: interrupted; run the same command again to carry on",
              file=sys.stderr)
        return 130


def _pull_data(args) -> int:
    from pathlib import Path

    from firmware_tools.pull import DEFAULT_REMOTE_DIR, pull

    if args.out is None:
        from device.config import DeviceConfig, resolve_path

        out = resolve_path(DeviceConfig().recorder.sessions_dir)
    else:
        out = Path(args.out)
    pull(_remote(args.host, args), args.remote_dir or DEFAULT_REMOTE_DIR, out,
         delete_after=args.delete_after, report=lambda line: print(line, flush=True))
    return 0


def _ssh_options(parser) -> None:
    """How to reach a box: port, key and extra ssh options (read by ``_remote``)."""
    parser.add_argument("--port", type=int, help="SSH port (default: ssh's own, usually 22)")
    parser.add_argument("--identity", "-i", metavar="FILE", help="SSH private key to log in with")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="extra ssh option, as for ssh -o (repeatable)")


def _remote(host: str, args):
    from firmware_tools.ssh import Remote

    return Remote(host, port=args.port, identity=args.identity, options=args.ssh_option)


def _box_options(parser) -> None:
    _ssh_options(parser)
    parser.add_argument("--sudo", action="store_true",
                        help="run the box's commands with sudo -n (when not logging in as root)")
    parser.add_argument("--root", default="/",
                        help="folder on the box standing for / (tests; default: /)")
    parser.add_argument("--box-path", default=None, metavar="DIRS",
                        help="folders put first on the box's PATH (tests: stand-in systemctl)")
    parser.add_argument("--box-venv", default=None, metavar="COMMAND",
                        help="shell command that makes .venv in a new release folder "
                             "(default: python3 -m venv --system-site-packages, pip install "
                             "from the shipped wheels, compileall)")
    parser.add_argument("--box-python", default=None, metavar="COMMAND",
                        help="shell prefix running the box's python with device importable "
                             "({current}: the current release folder)")
    parser.add_argument("--settle", type=float, default=None, metavar="S",
                        help="seconds the service must stay up after READY (default: 5)")


def _remotes(args):
    return [_remote(host, args)
            for host in args.hosts]


def _each_host(args, action) -> int:
    """Run ``action(remote)`` for every host; report each failure on one line, go on."""
    from device.errors import DanceSamplerError

    failed = 0
    remotes = _remotes(args)
    for remote in remotes:
        try:
            action(remote)
        except DanceSamplerError as exc:
            if args.debug or len(remotes) == 1:
                raise
            print(f"dancesampler: error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _wheel_cache(args):
    from pathlib import Path

    from firmware_tools.release import DEFAULT_WHEEL_CACHE

    return Path(args.wheel_cache) if args.wheel_cache else DEFAULT_WHEEL_CACHE


def _release(args) -> int:
    from firmware_tools.release import build_release, download_wheels

    cache = _wheel_cache(args)
    if args.wheels:
        wheels = download_wheels(cache)
        print(f"{len(wheels)} wheel(s) for the box in {cache}", flush=True)
    release = build_release(_PROJECT, args.out, wheels=cache if cache.is_dir() else None)
    print(f"release {release.id} in {release.path} ({len(release.files)} files, "
          f"{release.size / 1e6:.1f} MB)")
    return 0


def _deploy(args) -> int:
    import tempfile

    from firmware_tools.deploy import box_from_args, deploy
    from firmware_tools.release import build_release

    cache = None if args.no_wheels else _wheel_cache(args)
    if cache is not None and not cache.is_dir():
        if args.wheel_cache:
            from firmware_tools.release import ReleaseError

            raise ReleaseError(f"{cache}: no such wheel folder (make it with "
                               f"`python -m firmware_tools release --wheels`)")
        log.warning("no wheel cache at %s: shipping no wheels (run `python -m firmware_tools "
                    "release --wheels` once, or pass --no-wheels)", cache)
        cache = None
    box = box_from_args(args)
    with tempfile.TemporaryDirectory(prefix="dsb-release-") as folder:
        release = build_release(_PROJECT, folder, wheels=cache)
        return _each_host(args, lambda remote: deploy(
            remote, release, box, report=lambda line: print(line, flush=True)))


def _flash_model(args) -> int:
    from firmware_tools.deploy import box_from_args
    from firmware_tools.flash import flash_model

    box = box_from_args(args)
    return _each_host(args, lambda remote: flash_model(
        remote, args.bundle, box, report=lambda line: print(line, flush=True)))


def _status(args) -> int:
    from firmware_tools.deploy import box_from_args
    from firmware_tools.status import fleet_status

    return fleet_status(_remotes(args), box_from_args(args))


def _provision(args) -> int:
    from firmware_tools.deploy import box_from_args
    from firmware_tools.provision import provision

    box = box_from_args(args)
    return _each_host(args, lambda remote: provision(
        remote, box, read_only_root=args.read_only_root,
        new_web_password=args.new_web_password, report=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    sys.exit(main())
