"""The notes voice: the dance played as notes of the C major pentatonic scale.

After Dance2Music (Aggarwal and Parikh, 2021), which makes a note sequence on the
pentatonic scale from a dance, online, and measures it by how well the music's
self-similarity follows the dance's. Here it runs on the box, per camera frame and
causally, on the same gained motiongram window every voice hears, and plays its
notes through a small synthesizer of its own (decaying partials, a bell-like
pluck), so the box needs no other instrument.

Two methods, chosen when the voice is made (``NotesParams.method``):

``motion`` (this project's):
  - **pitch** from the height of the motion: the centroid of the row means of the
    last few frames (high movement, high note), over ``steps`` notes of the scale;
    a lower part (``bass_steps`` notes an octave down) from where across the picture
    the motion is, struck with each note;
  - **onsets** at the motion beats, the stops between the dancer's moves (a local
    minimum of the smoothed quantity of motion one frame ago: the same beat the
    corpus voice takes its attacks at, and ``train_host.evaluate.motion_beats``
    finds in a whole take, one frame late); also when the height of the motion moves
    by ``leap`` notes or more, and, while the dancer keeps moving, the sounding note
    is struck again every ``repeat_frames`` frames (a similar motion gives the same
    note again, so the music's self-similarity follows the dance's);
  - **velocity** from the quantity of motion of the move just made, on a log scale
    (``slope_db`` per doubling, ``level_db`` at four times the gain's reference);
  - **stillness** (the window's motion under ``still_below``) starts no note; the
    notes that ring fade out and the voice is then silent.

``heuristic`` (a baseline in the manner of Dance2Music's heuristic, which maps a
motion feature to pitch): while the dancer moves, a note every ``grid_frames``
frames, at a fixed velocity, its pitch the height of the motion; no beats, no
dynamics.

Each note is a table computed once per pitch when the voice opens (partials 1 to 4
of the note, each decaying faster than the one below, a 2 ms rise, and a short
burst of noise at its start: the strike). A struck note
is added into a buffer of the sound still to come; each frame the voice returns the
next segment of that buffer and moves it on by one hop, so consecutive segments
are slices of one continuous sound and the engine's overlap-add gives it back
unchanged. Per frame: a few sums over the window, a copy of one segment and a
shift of the buffer (numpy; under 0.1 ms here), and at an onset one table added.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from device.bundle import Bundle, Manifest, TensorSpec, write_bundle
from device.corpus import VoiceShape
from device.errors import BundleError, DanceSamplerError
from device.motiongram import stop_between_moves

log = logging.getLogger(__name__)

SCALE = (0, 2, 4, 7, 9)
"""The C major pentatonic scale: semitones above C."""
METHODS = ("motion", "heuristic")
PARTIALS = ((1.0, 1.0), (2.0, 0.5), (3.0, 0.25), (4.0, 0.12))
"""(multiple of the fundamental, amplitude) of each partial of a note; partial k
decays k times as fast as the fundamental."""
RISE_S = 0.002
"""Each note's rise from silence (no click)."""
STRIKE_S = 0.006
"""Time constant of the strike: a burst of noise at each note's start (the mallet on
the bar, the pick on the string: what a Karplus-Strong string starts from), which
is what makes an onset heard across the spectrum and not in a few partials only."""
RING_DECAYS = 5.0
"""A note's table lasts this many of its decay times (-43 dB)."""
RECENT_FRAMES = 3
"""The newest frames whose motion gives the pitch and whether the dancer moves."""


class NotesError(DanceSamplerError, ValueError):
    """A notes voice cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class NotesParams:
    """The manifest's ``notes`` object: how the voice turns motion into notes."""

    method: str = "motion"
    """``motion`` or ``heuristic`` (the module's docstring)."""
    lowest: int = 48
    """MIDI number of the lowest note (48: C3); it must be a note of the scale."""
    steps: int = 15
    """Notes of the scale used, upward from ``lowest`` (15: three octaves)."""
    decay_s: float = 0.6
    """Time constant of a note's fundamental (seconds)."""
    level_db: float = -12.0
    """Peak level of the loudest note (dBFS)."""
    slope_db: float = 8.0
    """How much louder a note is per doubling of the quantity of motion (motion)."""
    range_db: float = 30.0
    """The softest note is this much under ``level_db``."""
    still_below: float = 0.002
    """Quantity of (gained) motion under which the dancer counts as still."""
    reference: float = 0.008
    """Quantity of (gained) motion of a typical move: four times it plays at ``level_db``."""
    leap: int = 3
    """A change of the motion's height by this many notes strikes a note (motion)."""
    repeat_frames: int = 4
    """While moving without a beat, the note is struck again after this many frames (motion)."""
    grid_frames: int = 8
    """Frames between the heuristic's notes."""
    strike: float = 1.0
    """Level of the strike's burst of noise against the note's peak (0: none)."""
    bass_steps: int = 10
    """Notes of a second, lower part (from an octave under ``lowest``), its pitch from
    where across the picture the motion is (left low, right high), struck with each
    note of the first; 0: none."""
    bass_db: float = 0.0
    """Level of the lower part against the first."""


def _check(p: NotesParams) -> NotesParams:
    """``p`` with its numbers as floats, or ``ValueError`` naming the first bad key."""
    if p.method not in METHODS:
        raise ValueError(f"method is {p.method!r}; expected {' or '.join(map(repr, METHODS))}")
    ints = {"lowest": (12, 108), "steps": (1, 40), "leap": (1, 40), "repeat_frames": (1, 600),
            "grid_frames": (1, 600), "bass_steps": (0, 40)}
    for key, (low, high) in ints.items():
        value = getattr(p, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} is {value!r}; expected a whole number from {low} to {high}")
    if p.lowest % 12 not in SCALE:
        raise ValueError(f"lowest is {p.lowest}; expected a note of C major pentatonic")
    floats = {"decay_s": (0.01, 5.0), "level_db": (-60.0, 0.0), "slope_db": (0.0, 24.0),
              "range_db": (0.0, 60.0), "strike": (0.0, 2.0), "bass_db": (-60.0, 12.0),
              "still_below": (0.0, 1.0), "reference": (1e-6, 1.0)}
    for key, (low, high) in floats.items():
        value = getattr(p, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise ValueError(f"{key} is {value!r}; expected a number from {low:g} to {high:g}")
    if p.lowest < 24 and p.bass_steps:
        raise ValueError(f"lowest is {p.lowest}; a lower part needs at least 24")
    if _midi(p.lowest, p.steps - 1) > 120:
        raise ValueError(f"lowest {p.lowest} and steps {p.steps} reach above MIDI 120")
    return replace(p, **{key: float(getattr(p, key)) for key in floats})


def params_of(notes) -> NotesParams:
    """The manifest's ``notes`` object as ``NotesParams``; ``ValueError`` or
    ``TypeError`` naming what is missing, unknown or out of range."""
    if not isinstance(notes, dict):
        raise TypeError(f"notes is {notes!r}; expected an object")
    known = {f.name for f in fields(NotesParams)}
    unknown = sorted(set(notes) - known)
    missing = sorted(known - set(notes))
    if unknown or missing:
        raise ValueError("; ".join(([f"unknown key {', '.join(unknown)}"] if unknown else [])
                                   + ([f"lacks {', '.join(missing)}"] if missing else [])))
    return _check(NotesParams(**notes))


def scale_notes(lowest: int, steps: int) -> np.ndarray:
    """MIDI numbers of ``steps`` notes of the scale upward from ``lowest``."""
    return np.array([_midi(lowest, i) for i in range(steps)])


def _midi(lowest: int, step: int) -> int:
    octave, start = divmod(lowest, 12)
    i = SCALE.index(start) + step
    return 12 * (octave + i // len(SCALE)) + SCALE[i % len(SCALE)]


# ---- building --------------------------------------------------------------------


def notes_manifest(shape: VoiceShape, params: NotesParams, *, name: str) -> Manifest:
    """A notes voice's manifest: the frame rate, window, audio and motion gain of
    ``shape`` (a bundle's: ``VoiceShape.of(manifest)``, so the model button crossfades
    between them), the notes settings, no members."""
    params = _check(params)
    features = shape.motiongram.features
    return Manifest(
        name=name, created="1980-01-01T00:00:00Z", fps=shape.fps,
        motiongram=shape.motiongram, audio=shape.audio, window_frames=shape.window_frames,
        input=TensorSpec((1, shape.window_frames, features), "float32"),
        output=TensorSpec((1, shape.audio.segment_samples), "float32"),
        motion_gain=shape.motion_gain, voice="notes", notes=asdict(params), training={})


def write_notes(shape: VoiceShape, params: NotesParams, *, name: str, out) -> Path:
    """Write a notes voice bundle at ``out`` (refused, never replaced, if it exists)."""
    if Path(out).exists():
        raise NotesError(f"{out}: already exists; pass another --out, or delete it first")
    return write_bundle(out, notes_manifest(shape, params, name=name), {})


def default_params(shape: VoiceShape, method: str = "motion") -> NotesParams:
    """The settings for a voice of ``shape``: stillness and loudness measured against
    its motion gain's reference (the level every dancer is brought to)."""
    g = shape.motion_gain
    reference = g.reference if g is not None and g.enabled else NotesParams.reference
    lower = {"bass_steps": 0} if method == "heuristic" else {}
    return NotesParams(method=method, reference=reference, still_below=0.25 * reference,
                       **lower)


# ---- playing ---------------------------------------------------------------------


class NotePicker:
    """The notes a dance asks for, one motion window at a time: what the notes voice
    plays and the MIDI service (``device.midi``) sends. Called one frame at a time."""

    def __init__(self, params: NotesParams, width: int, height: int):
        self.params = params
        self._width = width
        self.shape = (width, height)
        """The motiongram's width and height."""
        self.pitches = scale_notes(params.lowest, params.steps)
        self.bass = scale_notes(params.lowest - 12, params.bass_steps)
        self._cols = np.arange(width, dtype=np.float32) / max(width - 1, 1)
        self._rows = np.arange(height, dtype=np.float32) / max(height - 1, 1)
        self._since = 1 << 30   # frames since the last onset
        self.sounding = -1
        """Scale step of the last note struck (-1: none yet)."""
        self.onsets: list[tuple[int, int, float]] = []
        """(frame, MIDI note, velocity 0 to 1) of the most recent notes struck."""
        self.frames = 0

    def step_of(self, window: np.ndarray, frames: int = RECENT_FRAMES) -> int | None:
        """The scale step the height of the last ``frames`` frames' motion asks for,
        or None without motion."""
        rows = window[-frames:, self._width:].mean(axis=0)
        total = float(rows.sum())
        if total <= 1e-9:
            return None
        height = 1.0 - float(rows @ self._rows) / total   # 1: top of the picture
        return int(round(min(max(height, 0.0), 1.0) * (self.params.steps - 1)))

    def bass_of(self, window: np.ndarray) -> int:
        """The lower part's step: where across the picture the motion is."""
        cols = window[-RECENT_FRAMES:, :self._width].mean(axis=0)
        total = float(cols.sum())
        across = float(cols @ self._cols) / total if total > 1e-9 else 0.5
        return int(round(min(max(across, 0.0), 1.0) * (self.params.bass_steps - 1)))

    def decide(self, window: np.ndarray) -> tuple[int, float] | None:
        """(scale step, velocity) of the note this frame strikes, or None."""
        p = self.params
        amount = window[:, :self._width].mean(axis=1)
        moving = float(amount[-RECENT_FRAMES:].mean()) >= p.still_below
        # A stop after a move: the window's peak is the move just made.
        beat = p.method == "motion" and stop_between_moves(amount, p.still_below)
        if not (moving or beat):
            return None
        step = self.step_of(window)
        if step is None:   # the last frames are still: where the move was
            step = self.step_of(window, len(window))
        if step is None:
            return None
        if p.method == "heuristic":
            return (step, 0.5) if self._since >= p.grid_frames else None
        leap = self.sounding < 0 or abs(step - self.sounding) >= p.leap
        if not beat and not (moving and self._since >= 2
                             and (leap or self._since >= p.repeat_frames)):
            return None
        q = float(amount.max() if beat else amount[-RECENT_FRAMES:].mean())
        db = p.slope_db * np.log2(max(q, 1e-9) / (4.0 * p.reference))
        return step, float(10 ** (max(min(db, 0.0), -p.range_db) / 20))

    def pick(self, window: np.ndarray) -> tuple[int, float, int | None] | None:
        """This frame's note as (scale step, velocity 0 to 1, the lower part's step
        or None), or None; and on to the next frame."""
        note = self.decide(window)
        if note is not None:
            step, velocity = note
            self.sounding, self._since = step, 0
            self.onsets.append((self.frames, int(self.pitches[step]), velocity))
            del self.onsets[:-64]
            note = (step, velocity, self.bass_of(window) if self.params.bass_steps else None)
        self._since += 1
        self.frames += 1
        return note


class NotesVoice(NotePicker):
    """One motion window in, one segment of notes out (what ``Performer`` does for a
    model voice). Called from the model thread, one call at a time."""

    runtime = "notes"
    own_dynamics = True
    """Its loudness is its rule's (``db_per_doubling`` of motion): the engine does
    not narrow its swing (``device.engine.Dynamics``)."""
    own_strikes = True
    """It strikes its notes at the dancer's stops: the engine adds no strike of its
    own there (``device.engine.Strikes``)."""

    def __init__(self, bundle: Bundle):
        m, where = bundle.manifest, str(bundle.path)
        try:
            p = params_of(m.notes)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed notes ({exc})") from None
        if bundle.graphs:
            raise BundleError(f"{where}: a notes voice has no members, but it holds "
                              f"{', '.join(sorted(bundle.graphs))}")
        super().__init__(p, m.motiongram.width, m.motiongram.height)
        self._seg, self._hop = m.audio.segment_samples, m.audio.hop_samples
        self._bass_gain = np.float32(10 ** (p.bass_db / 20))
        self._tables = _note_tables(np.concatenate([self.pitches, self.bass]),
                                    m.audio.sample_rate, p.decay_s, p.strike)
        self._future = np.zeros(self._tables.shape[1] + self._seg, np.float32)

    def strike(self, step: int, velocity: float, bass: int | None = None) -> None:
        """Add the note ``step`` of the scale to the sound to come, at ``velocity``
        (0 to 1), and the lower part's note ``bass`` with it."""
        table = self._tables[step]
        gain = np.float32(velocity * 10 ** (self.params.level_db / 20))
        self._future[:len(table)] += table * gain
        if bass is not None:
            self._future[:len(table)] += self._tables[self.params.steps + bass] * (
                gain * self._bass_gain)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        note = self.pick(window)
        if note is not None:
            self.strike(*note)
        segment = np.clip(self._future[:self._seg], -1.0, 1.0)
        hop = self._hop
        self._future[:-hop] = self._future[hop:]
        self._future[-hop:] = 0.0
        return segment


def _note_tables(pitches: np.ndarray, sample_rate: int, decay_s: float,
                 strike: float) -> np.ndarray:
    """float32 (notes, samples): each note struck at full velocity, peak 1."""
    n = int(RING_DECAYS * decay_s * sample_rate)
    t = np.arange(n) / sample_rate
    rise = np.minimum(1.0, t / RISE_S)
    tables = np.zeros((len(pitches), n), np.float32)
    for i, midi in enumerate(pitches):
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        x = np.zeros(n)
        for k, amp in PARTIALS:
            if k * f0 < sample_rate / 2:
                x += amp * np.exp(-t * k / decay_s) * np.sin(2 * np.pi * k * f0 * t)
        x *= rise / max(np.abs(x * rise).max(), 1e-9)
        # The same burst for every note and every voice: a fixed seed.
        burst = np.random.default_rng(int(midi)).standard_normal(n)
        x += strike * burst * np.exp(-t / STRIKE_S) * rise / 3.0
        tables[i] = x / max(np.abs(x).max(), 1.0)
    return tables
