"""Re-timing frames to a camera's frame rate: the one rule for host and device.

A camera running at ``fps`` shows, at its tick ``k`` (``k / fps`` seconds on the
source's timeline), the latest source frame captured at or before that moment,
give or take ``TICK_TOLERANCE`` of a tick period: timestamps carry rounding
(containers round to the millisecond), and a 30 fps source read at 30 fps must
map frame to frame. Ticks before the first frame are dropped, and so are ticks
after the last frame has lasted its own period (``1 / source_fps``).

Where the source is slower than the camera (a 25 fps video read at 30 fps), a
source frame lasts two ticks now and then. The second tick is marked as a
repeat: the picture did not change because no new picture was taken, not
because the dancer stood still, so the motion front end carries the motion on
(``device.motiongram``) instead of reading a still frame that never happened.

``retime`` works one frame at a time, for a video file played live;
``frame_ticks`` gives the same answer for a whole take's timestamps at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")

TICK_TOLERANCE = 0.25
"""A frame up to this share of a tick period after a tick counts as on it."""


def retime(frames: Iterable[tuple[float, T]], *, fps: float,
           source_fps: float) -> Iterator[tuple[int, T, bool]]:
    """(tick, item, repeat) for every tick of a camera at ``fps`` over timed items.

    ``frames`` gives (seconds, item) in time order. Each tick yields the latest
    item at or before it; ``repeat`` is True when that item was already yielded
    at the tick before (the source had no new frame for this tick).
    """
    tolerance = TICK_TOLERANCE / fps
    held: T | None = None
    shown = False            # whether the held item has been yielded at a tick
    k = 0
    t = 0.0
    for t, item in frames:
        if held is None:
            # The first tick at or after the first frame (within the tolerance).
            k = max(0, math.ceil((t - tolerance) * fps - 1e-9))
            while k / fps + tolerance < t:
                k += 1
        else:
            while k / fps + tolerance < t:
                yield k, held, shown
                shown = True
                k += 1
        held, shown = item, False
    if held is None:
        return
    end = t + 1.0 / source_fps - tolerance
    while k / fps < end:
        yield k, held, shown
        shown = True
        k += 1


def frame_ticks(timestamps: np.ndarray, *, fps: float,
                source_fps: float) -> tuple[int, np.ndarray]:
    """The first tick kept and, for each tick from there, the index of its frame.

    The same rule as ``retime``, for a whole take's frame times (seconds on the
    take's, that is the audio's, timeline). Repeats are where an index equals
    the one before it.
    """
    ticks = list(retime(((float(t), i) for i, t in enumerate(np.asarray(timestamps))),
                        fps=fps, source_fps=source_fps))
    if not ticks:
        return 0, np.zeros(0, np.intp)
    return ticks[0][0], np.fromiter((i for _, i, _ in ticks), np.intp, len(ticks))
