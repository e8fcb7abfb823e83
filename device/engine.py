"""The performance loop: frames in, one inference per frame, a hop of sound out.

Per camera frame: the motiongram of the frame joins a sliding window of the last
``window_frames`` motion vectors (the window moves by one frame, never by a whole
segment), the model turns the window into an audio segment, and overlap-add
emits exactly one hop (one frame's worth) of the stream. A run from a video file
into a WAV file therefore holds exactly ``frames * hop`` samples and is
repeatable to the sample.

The window starts full of zeros (no motion), so sound comes from the first frame.
Each frame's motion is scaled by the bundle's motion gain (the dancer's own recent
level; ``device.motiongram.MotionGain``) times the room's ``sensitivity``, as the
model heard it in training. With ``quiet_after_s``, the sound fades out once
nobody has moved for that long and comes back at the first move
(``QuietWhenStill``). The level swings around its recent median by
``dynamics_depth`` of what the model plays, and a pause in a dance, shorter than
that, keeps the sound within ``pause_floor_db`` of that median (``Dynamics``).
Where the dancer stops between moves, a model's sound is struck (``Strikes``).

Another model can take over while playing (``prepare`` then ``swap``): for a short
crossfade both models hear the same window and their segments are mixed, so the
change has no gap and no click.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from device.bundle import Bundle, Manifest
from device.config import DeviceConfig
from device.errors import BundleError
from device.camera import Camera, Frame
from device.motiongram import (MotionGain, MotionGainParams, MotiongramParams, MotiongramStream,
                               motion_amount, stop_between_moves)
from device.overlap_add import OverlapAdd
from device.corpus import open_voice
from device.publish import level_db

log = logging.getLogger(__name__)


# Frames whose compute time the run statistics keep: ten minutes at 60 fps.
_STATS_FRAMES = 36000


class MotionWindow:
    """The last ``frames`` motion vectors, oldest first, as one contiguous array.

    Each vector is written twice into a buffer of twice the window's length, so
    the current window is always a plain slice: no copy, no roll, per frame.
    """

    def __init__(self, frames: int, features: int):
        self.frames = frames
        self._buffer = np.zeros((2 * frames, features), np.float32)
        self._next = 0

    def push(self, vector: np.ndarray) -> np.ndarray:
        i = self._next
        self._buffer[i] = vector
        self._buffer[i + self.frames] = vector
        self._next = (i + 1) % self.frames
        return self._buffer[self._next:self._next + self.frames]

    @property
    def latest(self) -> np.ndarray:
        """The newest vector (zeros before the first ``push``)."""
        return self._buffer[self._next - 1 + self.frames]


@dataclass
class RunStats:
    """What a run did, for the closing log line and the tests."""

    frames: int = 0
    samples: int = 0
    wall_s: float = 0.0
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=_STATS_FRAMES))
    """Per frame of the most recent ones: motiongram, inference and overlap-add, in ms.
    Bounded, so a box that plays for months does not grow."""

    def summary(self, sample_rate: int) -> str:
        ms = np.asarray(self.compute_ms) if self.compute_ms else np.zeros(1)
        return (f"{self.frames} frames, {self.samples / sample_rate:.2f} s of audio in "
                f"{self.wall_s:.2f} s; compute per frame {np.median(ms):.2f} ms median, "
                f"{np.percentile(ms, 99):.2f} ms 99th percentile")


class QuietWhenStill:
    """Fades the box's sound out once nobody has moved for ``after_s`` seconds, and
    brings it back within a frame of the next move.

    A model plays whatever it learned for a still window. The factory model, taught
    by its demo instrument, plays almost nothing there (-66 dBFS), but a model
    fine-tuned on real takes without ``training.dynamics_weight``, whose songs go on
    while the dancer pauses, plays a still window nearly as loud as a dance (-19 to
    -24 dBFS, 0.4 to 4.7 dB under its level while dancing, over the 13
    cross-validation folds): an empty gallery would hear it all day. With the
    weight (``config/finetune.yaml``) the folds play it at -34 to -59 dBFS, and
    ``Dynamics`` lifts it for the first seconds of stillness. The real takes'
    longest still stretches while dancing are 2.4 to 6 s, so the box waits longer
    than a pause before it fades.

    A frame moves when its motion passes the motion gain's ``floor`` (a repeated
    camera frame carries the motion before it). The room counts as moving again
    after ``MOVING_FRAMES`` moving frames in a row: a blink (a light, a codec's
    refresh: one or two frames of change) neither wakes a quiet room nor restarts
    the count, and a dancer is heard again 67 ms after their first move. The fade is
    linear in amplitude over ``fade_s``; coming back is a ramp over one hop, which
    does not click.
    """

    MOVING_FRAMES = 3

    def __init__(self, after_s: float, *, fps: float, hop: int, fade_s: float = 2.0):
        self.after_frames = round(after_s * fps) if after_s > 0 else None
        self.down = 1.0 / max(1, round(fade_s * fps))    # per hop
        self.level = 1.0
        self.still_frames = 0
        """Frames since the room last moved."""
        self._moving = 0
        self._ramp = np.arange(1, hop + 1, dtype=np.float32) / hop

    @property
    def quiet(self) -> bool:
        """Whether the sound is (or is going) out for want of motion."""
        return self.level < 1.0

    def gains(self, moved: bool) -> float | np.ndarray:
        """This frame's hop gain: one number, or a ramp of one value per sample."""
        self._moving = self._moving + 1 if moved else 0
        self.still_frames = 0 if self._moving >= self.MOVING_FRAMES else self.still_frames + 1
        if self.after_frames is None:
            return 1.0
        was = self.level
        self.level = max(0.0, was - self.down) if self.still_frames >= self.after_frames \
            else 1.0
        return was if self.level == was else was + (self.level - was) * self._ramp


PAUSE_FLOOR_DB = 18.0
"""The box's default ``motion.pause_floor_db``; evaluation plays the model with it."""
DYNAMICS_DEPTH = 0.5
"""The box's default ``motion.dynamics_depth``; evaluation plays the model with it."""
STRIKE = 1.0
"""The box's default ``motion.strike``; evaluation plays the model with it."""


class Dynamics:
    """The sound's level around its recent median: its swing narrowed to
    ``depth``, and a pause in the dance kept from dropping the sound out.

    A model that kept its starting model's dynamics (``training.dynamics_weight``)
    swings its level with the dance about twice as far as songs do: over the 13
    held-out takes of the cross-validation, 8.1 dB against the music's 4.5
    (standard deviation of the segment level within a take; 13.4 against 1.7 on a
    waltz). Each segment is moved to ``depth`` of its distance from the median
    level (RMS dB) of the model's last ``window_s`` of segments: at 0.5 the level
    still rises and falls with the dance, by half as much (docs/model.md, "The
    swing of the level, narrowed on the box"). No segment is turned down by more
    than ``MOST_CUT_DB``: after a room has been still, the median is the still
    level, and a dancer coming in is heard at once, at most that far under the
    dance's own level until the median has caught up (half the window).

    And a held pose is part of the dance: in three of those folds (a rumba and
    two waltzes of motion capture) the quietest twentieth of the held-out take lay
    27 to 37 dB under the take's median level, where the songs' own lay 2 to 5 dB
    under theirs. So a segment is lifted, when needed, to ``floor_db`` under that
    median; no segment is lifted by more than ``MOST_DB``. The median is of what
    the model played, before any change: a pause shorter than half the window
    does not pull it down, and a room left still for longer lets it fall to the
    still level, where the lift ends (and ``QuietWhenStill`` fades the sound).
    ``depth`` 1 and ``floor_db`` 0 leave the model's level as it plays it.

    A voice whose loudness is a rule of its own, not learned from songs (a notes
    voice, whose class says ``own_dynamics``), keeps its swing; the floor holds.
    """

    WINDOW_S = 10.0
    MOST_DB = 24.0
    MOST_CUT_DB = 6.0
    QUIETEST_DB = -80.0
    """Levels under this count as this: digital silence does not sink the median."""

    def __init__(self, floor_db: float, depth: float = 1.0, *, fps: float,
                 window_s: float = WINDOW_S):
        self.floor_db = float(floor_db)
        self.depth = float(depth)
        self._levels = np.empty(max(1, round(window_s * fps)), np.float64)
        self._count = 0

    def reset(self) -> None:
        """Forget the levels heard (a new take)."""
        self._count = 0

    def __call__(self, segment: np.ndarray, voice=None) -> np.ndarray:
        """``segment``, played by ``voice``, at its level for the box."""
        depth = 1.0 if getattr(voice, "own_dynamics", False) else self.depth
        level = max(level_db(segment), self.QUIETEST_DB)
        n = len(self._levels)
        self._levels[self._count % n] = level
        self._count += 1
        if self.floor_db <= 0 and depth >= 1:
            return segment   # heard, so a depth set later narrows around this median
        reference = float(np.median(self._levels[:min(self._count, n)]))
        target = reference + depth * (level - reference)
        if self.floor_db > 0:
            target = max(target, reference - self.floor_db)
        change = min(self.MOST_DB, max(-self.MOST_CUT_DB, target - level))
        if change == 0:
            return segment
        return segment * np.float32(10.0 ** (change / 20.0))


class Strikes:
    """A model's sound struck at each of the dancer's stops between moves.

    A model fine-tuned on songs plays a sound that swells with the dance and is
    never struck: on takes it never heard, it makes 0.04 onsets for each of the
    songs' (docs/model.md, "Strikes at the dancer's stops, on the box"). Where
    the dancer stops after a move (``device.motiongram.stop_between_moves``, two
    frames on, with the window's motion at its peak at least a quarter of the
    motion gain's reference, so a flicker in a still room is no move), a burst
    of white noise is added to the segment starting then and those after it,
    ``strike`` times the RMS level of that first segment, decaying as
    ``e^(-t / 15 ms)``: a hi-hat's tick, as loud as the sound it strikes and
    gone within 0.1 s, heard across the spectrum (most in the upper mel bands,
    where a model's sound is weakest) while the level of a segment hardly
    moves. A stop during a strike strikes afresh. The burst is one fixed
    stretch of noise, so a run is repeatable to the sample. The strike comes
    after ``Dynamics``, whose median it leaves alone. A voice that strikes at
    the stops itself (a notes or corpus voice, whose class says
    ``own_strikes``) is left as it is; ``strike`` 0 strikes nothing.
    """

    DECAY_S = 0.015
    SPAN = 6.0
    """Decay times a strike lasts (then under 0.3 % of its start)."""

    def __init__(self, strike: float, *, motiongram: MotiongramParams,
                 gain: MotionGainParams, sample_rate: int, hop: int, segment: int):
        self.params, self.hop, self.segment = motiongram, hop, segment
        self.retune(gain)
        self._span = int(np.ceil(self.SPAN * self.DECAY_S * sample_rate))
        n = np.arange(self._span + segment)
        burst = np.random.default_rng(0).standard_normal(len(n)) * np.exp(
            -n / (self.DECAY_S * sample_rate))
        self._burst = burst.astype(np.float32)
        self.strike = float(strike)
        self.reset()

    @classmethod
    def of(cls, manifest: Manifest, strike: float) -> Strikes:
        """Strikes for the segments of the bundle ``manifest`` describes."""
        m = manifest
        return cls(strike, motiongram=m.motiongram, gain=m.gain, sample_rate=m.audio.sample_rate,
                   hop=m.audio.hop_samples, segment=m.audio.segment_samples)

    def retune(self, gain: MotionGainParams) -> None:
        """Take another model's motion gain: its reference sets what a move is."""
        reference = gain.reference if gain.enabled else MotionGainParams.reference
        self._move = 0.25 * reference

    def reset(self) -> None:
        """Forget the strike under way (a new take)."""
        self._since = self._span
        self._level = np.float32(0.0)
        self.count = 0
        """Strikes since the last ``reset``."""

    def __call__(self, segment: np.ndarray, window: np.ndarray, voice=None) -> np.ndarray:
        """``segment``, the one made from motion ``window`` by ``voice``, struck."""
        if self.strike <= 0 or getattr(voice, "own_strikes", False):
            return segment
        amount = motion_amount(window, self.params)
        if stop_between_moves(amount, self._move):
            self._since = 0
            self._level = np.float32(np.sqrt(np.mean(np.square(segment, dtype=np.float64))))
            self.count += 1
        since = self._since
        if since >= self._span:
            return segment
        self._since = since + self.hop
        # The strength is read now: one set while a strike sounds applies at once.
        return segment + self._burst[since:since + self.segment] * (self._level * np.float32(
            self.strike))


def tried_voice(bundle: Bundle, *, runtime: str = "auto", threads: int = 1):
    """What plays ``bundle`` (``device.corpus.open_voice``: its graph's performer, or
    its corpus), once it has made, from a still motion window, one segment of the
    size the manifest promises with every sample finite: a bundle that disagrees
    with its manifest is refused before it can take over the show. A model's noise
    bands are set for the engine's overlap-add (``NoiseBands.for_stream``)."""
    m = bundle.manifest
    performer = open_voice(bundle, runtime=runtime, threads=threads)
    noise = getattr(performer, "noise", None)
    if noise is not None:   # the engine overlap-adds: noise at the stream's level
        noise.for_stream(m.audio.hop_samples)
    try:
        segment = performer(np.zeros((m.window_frames, m.motiongram.features), np.float32))
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises, refuse the bundle
        raise BundleError(f"{bundle.path}: the model fails on a motion window "
                          f"({type(exc).__name__}: {exc})") from None
    if segment.shape != (m.audio.segment_samples,) or not np.isfinite(segment).all():
        raise BundleError(f"{bundle.path}: the model makes {segment.shape[0]} samples"
                          f"{'' if np.isfinite(segment).all() else ' (not all finite)'} "
                          f"where the manifest promises {m.audio.segment_samples} finite ones")
    return performer


class Engine:
    """Camera to sink through one bundle's model."""

    def __init__(self, bundle: Bundle, *, volume: float = 1.0, runtime: str = "auto",
                 threads: int = 1, crossfade_frames: int = 15, sensitivity: float = 1.0,
                 quiet_after_s: float = 0.0, pause_floor_db: float = PAUSE_FLOOR_DB,
                 dynamics_depth: float = DYNAMICS_DEPTH, strike: float = STRIKE):
        m = bundle.manifest
        self.bundle = bundle
        self.volume = np.float32(volume)
        self.runtime, self.threads = runtime, threads
        self.crossfade_frames = max(1, crossfade_frames)
        self.performer = tried_voice(bundle, runtime=runtime, threads=threads)
        self.stats = RunStats()
        """The current (or last) run's figures, readable while it plays."""
        self._incoming: tuple[Bundle, Callable] | None = None
        self._faded = 0
        self.motiongram = MotiongramStream(m.motiongram)
        self.gain = MotionGain(m.gain, m.motiongram, fps=m.fps,
                               sensitivity=sensitivity)
        self.window = MotionWindow(m.window_frames, m.motiongram.features)
        self.overlap_add = OverlapAdd(m.audio.segment_samples, m.audio.hop_samples)
        self.hop = m.audio.hop_samples
        self.quiet = QuietWhenStill(quiet_after_s, fps=m.fps, hop=self.hop)
        self.dynamics = Dynamics(pause_floor_db, dynamics_depth, fps=m.fps)
        self.strikes = Strikes.of(m, strike)
        self._out = np.zeros(self.hop, np.float32)

    @classmethod
    def configured(cls, bundle: Bundle, cfg: DeviceConfig, **kwargs) -> Engine:
        """An engine for ``bundle`` with the runtime and motion settings of ``cfg``;
        ``kwargs`` (e.g. ``volume``) go to the constructor as they are."""
        return cls(bundle, runtime=cfg.model.runtime, threads=cfg.model.threads,
                   sensitivity=cfg.motion.sensitivity, quiet_after_s=cfg.motion.quiet_after_s,
                   pause_floor_db=cfg.motion.pause_floor_db,
                   dynamics_depth=cfg.motion.dynamics_depth,
                   strike=cfg.motion.strike, **kwargs)

    def prepare(self, bundle: Bundle) -> tuple[Bundle, Callable]:
        """Load another model for ``swap``; any thread, never the audio thread.

        Refuses a bundle whose window or audio differ from the one playing: the
        stream's motiongram, window and overlap-add carry on across the swap.
        """
        now, new = self.bundle.manifest, bundle.manifest
        if (new.motiongram, new.window_frames, new.audio, new.fps) != \
                (now.motiongram, now.window_frames, now.audio, now.fps):
            raise BundleError(f"{bundle.path}: its motion window or audio differ from the "
                              f"playing model {now.name}'s; it cannot take over live")
        return bundle, tried_voice(bundle, runtime=self.runtime, threads=self.threads)

    def swap(self, prepared: tuple[Bundle, Callable]) -> None:
        """Crossfade to a prepared model over the next ``crossfade_frames`` frames."""
        self._faded = 0
        self._incoming = prepared

    def step(self, image: np.ndarray, repeat: bool = False) -> np.ndarray:
        """One camera frame in, one hop of audio out (a reused buffer).

        ``repeat``: the frame repeats the one before for want of a new picture
        (``Frame.repeat``); its motion carries on rather than reading as still.
        """
        window = self.window.push(self.gain.push(self.motiongram.push(image, repeat)))
        segment = self.performer(window)
        incoming = self._incoming
        if incoming is not None:
            self._faded += 1
            mix = np.float32(self._faded / self.crossfade_frames)
            segment = segment * (1 - mix) + incoming[1](window) * mix
            if self._faded >= self.crossfade_frames:
                self.bundle, self.performer = incoming
                self._incoming = None
                # The dancer's level carries on; the new model's gain settings apply.
                self.gain.retune(self.bundle.manifest.gain)
                self.strikes.retune(self.bundle.manifest.gain)
                log.info("model: now playing %s", self.bundle.manifest.name)
        hop = self.overlap_add.push(self.shaped(segment, window))
        # No clipping here: a file sink clips in to_int16, and live sound goes
        # through the audio stream's limiter, which bends peaks instead.
        return np.multiply(hop, self.volume * self.quiet.gains(self.gain.still_frames == 0),
                           out=self._out)

    def shaped(self, segment: np.ndarray, window: np.ndarray) -> np.ndarray:
        """The playing voice's ``segment`` for ``window`` through the level dynamics
        and the strikes, ready to overlap-add."""
        return self.strikes(self.dynamics(segment, self.performer), window, self.performer)

    def latent(self) -> np.ndarray | None:
        """The latent of the model playing, for the window of the last ``step``;
        None where the voice has none (a corpus or notes voice, an older bundle)."""
        given = getattr(self.performer, "latent", None)
        return given() if given is not None else None

    def run(self, camera: Camera, write: Callable[[np.ndarray], object], *,
            max_frames: int | None = None, stop: threading.Event | None = None,
            on_frame: Callable[[Frame], None] | None = None) -> RunStats:
        """Play until the camera ends, ``max_frames`` have played, or ``stop`` is set.

        ``write`` takes each hop (a sink's ``write``, or an audio stream's
        ``push``); ``on_frame`` is called with each frame before it is played,
        for the work around the music (buttons, recording, health).
        """
        stats = self.stats = RunStats()
        started = time.monotonic()
        while (max_frames is None or stats.frames < max_frames) and \
                not (stop is not None and stop.is_set()):
            frame = camera.read()
            if frame is None:
                break
            if on_frame is not None:
                on_frame(frame)
            t0 = time.perf_counter()
            hop = self.step(frame.image, frame.repeat)
            stats.compute_ms.append((time.perf_counter() - t0) * 1000.0)
            write(hop)
            stats.frames += 1
            stats.samples += len(hop)
        stats.wall_s = time.monotonic() - started
        return stats
