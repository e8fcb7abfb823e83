"""Keeping TensorFlow's own noise out of a person's way.

TensorFlow's converter and interpreters print from C++ (absl log lines, the
XNNPACK delegate's INFO line) and from Python (saved-model signatures, warnings
about their own deprecations) straight to the process's stdout and stderr, where
a ``python -m train_host`` user reads the project's own lines. ``quiet`` catches
what the process's file descriptors 1 and 2 receive in a block and drops it, or,
when the block fails, puts it back in front of the error; with ``--debug``
(``DANCESAMPLER_DEBUG=1``) it lets everything through.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings

DEBUG_ENV = "DANCESAMPLER_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


@contextlib.contextmanager
def quiet():
    """File descriptors 1 and 2 (and Python's warnings) caught for the block."""
    if debugging():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(caught.fileno(), 1)
        os.dup2(caught.fileno(), 2)
        try:
            yield
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
