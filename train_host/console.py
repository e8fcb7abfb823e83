"""Keeping TensorFlow's own noise out of a person's way.

TensorFlow's converter and interpreters print from C++ (absl log lines, the
XNNPACK delegate's INFO line) and from Python (saved-model signatures, warnings
about their own deprecations) straight to the process's stdout and stderr, where
a ``python -m train_host`` user reads the project's own lines. ``quiet`` catches
what the process's file descriptors 1 and 2 receive in a block and drops it, or,
when the block fails, puts it back in front of the error; with ``--debug``
(``DANCESAMPLER_DEBUG=1``) it lets everything through. ``Progress`` draws a bar
with an estimate of the time left on the terminal, also from inside ``quiet``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings

DEBUG_ENV = "DANCESAMPLER_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


@contextlib.contextmanager
def quiet():
    """File descriptors 1 and 2 (and Python's warnings) caught for the block.

    Yields the stream that still reaches where stderr went (for ``Progress``)."""
    if debugging():
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as caught, warnings.catch_warnings(), \
            os.fdopen(os.dup(saved[1]), "w", closefd=True) as screen:
        warnings.simplefilter("ignore")
        os.dup2(caught.fileno(), 1)
        os.dup2(caught.fileno(), 2)
        try:
            yield screen
        except BaseException:
            _restore(saved)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))
            raise
        else:
            _restore(saved)


def _restore(saved: list[int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
    saved.clear()


class Progress:
    """``WHAT: DONE/TOTAL, about N s left`` redrawn in place on a terminal, at most
    five times a second; nothing where ``stream`` is not a terminal (a log has the
    stage's own lines)."""

    def __init__(self, what: str, total: int, stream=None):
        self.what, self.total = what, max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.started = self._drawn = time.monotonic()
        self.done = 0

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        now = time.monotonic()
        if not self.on or (now - self._drawn < 0.2 and self.done < self.total):
            return
        self._drawn = now
        left = (now - self.started) / self.done * (self.total - self.done)
        self.stream.write(f"\r{self.what}: {self.done}/{self.total}, about {left:.0f} s left ")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
