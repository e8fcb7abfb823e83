"""How every command line of the project starts and ends.

Logging is set up once here: under systemd, each line carries its syslog
priority so ``journalctl -p warning`` finds the warnings, and a fatal signal
(the watchdog's SIGABRT) prints every thread's stack. Errors meant for people
(``DanceSamplerError``) end a command with one line on stderr and exit status 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import faulthandler
import logging
import sys

from device.errors import DanceSamplerError
from device.service import JournalFormatter, stderr_is_journal


def setup_logging(debug: bool) -> None:
    """Log to stderr, with journal priorities when stderr is the journal."""
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter("%(name)s: %(message)s") if stderr_is_journal()
                         else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    faulthandler.enable()


def dispatch(args) -> int:
    """Run the subcommand ``args.func``; a ``DanceSamplerError`` becomes one line and 1."""
    setup_logging(args.debug)
    try:
        return args.func(args)
    except DanceSamplerError as exc:
        if args.debug:
            raise
        print(f"dancesampler: error: {exc}", file=sys.stderr)
        return 1
