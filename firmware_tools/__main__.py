"""``python -m firmware_tools``: getting takes off boxes and releases onto them.

Subcommands import what they need when they run; nothing here loads TensorFlow.
Errors meant for people print one line to stderr and exit 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("firmware_tools")


def main(argv: list[str] | None = None) -> int:
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
                      help="folder of takes on the box (default: /var/lib/dancesampler/sessions)")
    pull.add_argument("--out", default=None,
                      help="folder of takes here (default: sessions/ in the project)")
    pull.add_argument("--delete-after", action="store_true",
                      help="delete each take on the box once its copy here is verified")
    pull.add_argument("--port", type=int, help="SSH port (default: ssh's own, usually 22)")
    pull.add_argument("--identity", "-i", metavar="FILE", help="SSH private key to log in with")
    pull.add_argument("--ssh-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                      help="extra ssh option, as for ssh -o (repeatable)")
    pull.set_defaults(func=_pull_data)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from device.errors import DanceSamplerError

    try:
        return args.func(args)
    except DanceSamplerError as exc:
        if args.debug:
            raise
        print(f"dancesampler: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dancesampler: interrupted; run the same command again to carry on",
              file=sys.stderr)
        return 130


def _pull_data(args) -> int:
    from pathlib import Path

    from firmware_tools.pull import DEFAULT_REMOTE_DIR, pull
    from firmware_tools.ssh import Remote

    if args.out is None:
        from device.config import resolve_path
        from device.session import DEFAULT_ROOT

        out = resolve_path(DEFAULT_ROOT)
    else:
        out = Path(args.out)
    remote = Remote(args.host, port=args.port, identity=args.identity, options=args.ssh_option)
    pull(remote, args.remote_dir or DEFAULT_REMOTE_DIR, out, delete_after=args.delete_after,
         report=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
