"""A take on a frame-rate timeline: its motion per tick and the sound of those ticks.

One rule for the host (training examples, ``train_host.dataset``) and the box (a
corpus voice built from a take, ``device.corpus``): the frames are re-timed by
their timestamps to ``fps`` as a camera running at that rate would have seen them
(``device.retime.frame_ticks``), the motiongram is the box's own
(``ticks_motiongram``), and the audio of tick ``t`` is samples ``t * hop`` up to
``(t + 1) * hop``. Window ``t`` (the ``window_frames`` ticks ending at ``t``) sounds
with the segment that starts at sample ``t * hop`` (``window_ends``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from device.errors import SessionError
from device.motiongram import MotiongramParams, ticks_motiongram
from device.retime import frame_ticks
from device.session import Session

log = logging.getLogger(__name__)

AUDIO_SLACK_S = 1.0
"""Frames may run this far past the end of a take's audio before they are cut (the
last frames' sound is then silence)."""
TIMELINE_MARGIN_S = 60.0
"""Frames timed further than this outside a take's audio are left out first."""


def take_timeline(session: Session, *, fps: int, sample_rate: int,
                  motiongram: MotiongramParams,
                  resample: Callable[[np.ndarray, int, int], np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(motion per tick (T, features), audio of those ticks (T * hop,), first tick)
    for a take read whole. ``resample(audio, from_rate, to_rate)`` converts a take
    recorded at another rate; without one such a take is refused."""
    info = session.info
    t = session.timestamps
    if not np.all(np.isfinite(t)):
        raise SessionError(f"{info.path}: some frame timestamps are not numbers; the frames "
                           "cannot be placed on the audio's timeline")
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        i = int(back[0]) + 1
        raise SessionError(f"{info.path}: frame timestamps go backwards (frame {i} at "
                           f"{t[i]:.4f} s after {t[i - 1]:.4f} s); the frames cannot be "
                           "placed on the audio's timeline")
    # A damaged or hand-made take may time frames absurdly far from its audio,
    # which would become that many re-timed ticks in memory: frames more than a
    # minute outside the audio are left out first (what has no sound is cut below).
    end_s = len(session.audio) / info.sample_rate
    lo = int(np.searchsorted(t, -TIMELINE_MARGIN_S, side="left"))
    hi = int(np.searchsorted(t, end_s + TIMELINE_MARGIN_S, side="right"))
    if lo or hi < len(t):
        log.warning("take %s: %d frame(s) timed outside its %.1f s of audio are left out",
                    info.path.name, len(t) - (hi - lo), end_s)
    if hi <= lo:
        raise SessionError(f"{info.path}: no frame is timed within its {end_s:.1f} s of audio")
    first, index = frame_ticks(t[lo:hi], fps=fps, source_fps=info.fps)
    index = index + lo

    audio = session.audio
    if info.sample_rate != sample_rate:
        if resample is None:
            raise SessionError(f"{info.path}: its audio is at {info.sample_rate} Hz, not the "
                               f"{sample_rate} Hz this needs; build it on the host, which "
                               "resamples")
        log.info("take %s: resampling its audio from %d Hz to %d Hz", info.path.name,
                 info.sample_rate, sample_rate)
        audio = resample(audio, info.sample_rate, sample_rate)
    hop = sample_rate // fps
    start = first * hop
    have = max(0, len(audio) - start)
    missing = len(index) * hop - have
    if missing > AUDIO_SLACK_S * sample_rate:
        keep = -(-have // hop)
        log.warning("take %s: the audio stops %.1f s before the frames; using only the "
                    "%.1f s that have sound", info.path.name, missing / sample_rate,
                    keep / fps)
        index = index[:keep]
    needed = len(index) * hop
    if have >= needed:   # the usual case: a view, not a copy of the take's sound
        sound = np.asarray(audio[start:start + needed], np.float32)
    else:
        sound = np.zeros(needed, np.float32)
        sound[:have] = audio[start:start + have]
    return ticks_motiongram(session.frames, index, motiongram), sound, first


def window_ends(frames: int, audio_samples: int, *, window_frames: int, segment_samples: int,
                hop_samples: int, stride: int = 1) -> np.ndarray:
    """The ticks a window may end on: a full window behind each, and its whole
    segment (from ``tick * hop``) inside the audio."""
    last = (audio_samples - segment_samples) // hop_samples   # the segment must fit
    return np.arange(window_frames - 1, min(frames - 1, last) + 1, stride)


def windows_at(motion: np.ndarray, ends: np.ndarray, window_frames: int) -> np.ndarray:
    """float32 (len(ends), window_frames, features): the windows ending at ``ends``."""
    framed = np.lib.stride_tricks.sliding_window_view(motion.astype(np.float32, copy=False),
                                                      window_frames, axis=0)
    return np.ascontiguousarray(framed[ends - window_frames + 1].transpose(0, 2, 1))
