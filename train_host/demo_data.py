"""The project's own demo dataset: the synthetic dancer and the sound it drives.

A take pairs the dancer's frames with audio from a small instrument played by the
figure's motion, so that a model has something clearly learnable before anyone
has danced for it: more motion is louder and brighter, and where the motion is
sets the notes. Where the dancer stands picks the chord (left D, centre A, right
E); arm strokes strike a high bell whose note rises with where the dancer stands
and how high the arms are raised; steps and kicks pluck a bass on the chord's
root, its fifth while the arms are up, an octave higher while the legs work
hard; the whole body's motion swells a pad, and loudness follows the motion of
the moment. Every note is a function of what a camera sees in the moment (place,
arm height, leg work), never of a count of earlier strokes, which no window of
motion could reveal. Everything is seeded, so a take is reproducible.
Pitches move on a grid of the frame rate and start each frame in phase (see
``synthesize``), so the sound of a frame depends on the dance alone.

This is training data, not a performance path: it runs offline, whole takes at
once, and must stay vectorised (ten minutes in a few seconds). It must never
produce a click or a sample outside [-1, 1].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from device.camera.synthetic import DancerState, SyntheticDancer
from device.motiongram import motiongram
from train_host.dataset import Examples, gained_motion, make_examples

log = logging.getLogger(__name__)

# A minor pentatonic, in semitones above A. Every voice stays in it, so whatever
# the dancer does sounds like one piece.
_BELL_NOTES = np.array([0, 3, 5, 7, 10, 12, 15, 17, 19, 22])      # from A4
_BELL_HZ = 440.0
_BELL_PARTIALS = (1.0, 2.76, 5.40)    # a struck bar's modes...
_BELL_LEVELS = (1.0, 0.6, 0.25)       # ...the upper ones quieter, scaled by brightness
_REACH_STEPS = 4                      # scale steps the bell rises from arms down to overhead
_CHORD_ROOTS = (5, 0, 7)              # left of stage D, centre A, right E
_PAD_HZ = 220.0
_BASS_HZ = 55.0
_BASS_FIFTH_REACH = 0.5               # arms above this: the bass plays the chord's fifth
_BASS_OCTAVE_LEGS = 0.45              # leg motion above this: the bass goes an octave up
_BASS_HARMONICS = 6
_PAD_HARMONICS = 3

_CONTROL_BLOCK = 128                  # samples per control step (5.8 ms at 22.05 kHz)
_CHUNK_BLOCKS = 512                   # control steps rendered per chunk of samples
_ATTACK_S, _RELEASE_S = 0.020, 0.150  # loudness follows motion: fast up, slower down
_GLIDE_S = 0.060                      # pitch portamento
_BELL_DECAY_S, _PLUCK_DECAY_S = 0.40, 0.22
_STROKE_MIN = 0.12                    # speed peaks below this are not strokes
_STROKE_GAP_S = 0.15                  # at most one stroke per limb group this often
_BODY_FULL_SPEED = 0.2                # frame widths per second that swell the pad fully
# What _controls hands to the sample loop: one row each, one column per control step.
_CONTROL_ROWS = ("gain", "brightness", "bell level", "bell Hz", "bass level", "bass Hz",
                 "pad level", "pad Hz", "noise level", "pluck brightness")

# Levels: a fully energetic dance peaks around 0.6; the soft limiter above the
# knee only catches rare coincident peaks, so full scale is never reached.
_MIX_PAD, _MIX_BELL, _MIX_BASS, _MIX_NOISE = 0.40, 0.24, 0.32, 0.10
_MASTER = 1.1
_KNEE = 0.8


@dataclass(frozen=True)
class DemoTake:
    """One demo take: frames and the audio they drove, sample-aligned."""

    frames: np.ndarray
    """uint8 (T, height, width) grey frames."""
    audio: np.ndarray
    """float32 (T * hop,) mono in [-1, 1], where hop = sample_rate // fps."""
    styles: tuple[str, ...]
    """The choreography section label of each frame (length T)."""
    fps: float
    """Frames per second."""
    sample_rate: int
    """Audio samples per second."""


def _hop(fps: float, sample_rate: int) -> int:
    if not fps > 0 or sample_rate <= 0:
        raise ValueError(f"fps and sample_rate: expected positive, got {fps} and {sample_rate}")
    if sample_rate % fps != 0:
        raise ValueError(f"sample_rate {sample_rate} is not a whole multiple of fps {fps}: "
                         "each frame must own a whole number of audio samples")
    return int(round(sample_rate / fps))


def make_demo_take(seconds: float, *, seed: int, fps: float = 30, sample_rate: int = 22050,
                   width: int = 64, height: int = 48,
                   energy: float | None = None) -> DemoTake:
    """Dance for ``seconds`` and synthesise the sound the dance drives.

    ``energy`` pins the dancer's energy as in ``SyntheticDancer`` (0 stands still).
    """
    hop = _hop(fps, sample_rate)
    dancer = SyntheticDancer(fps=fps, width=width, height=height, seed=seed,
                             paced=False, seconds=seconds, energy=energy)
    count = round(seconds * fps)
    frames = np.empty((count, height, width), np.uint8)
    states: list[DancerState] = []
    for i in range(count):
        frame = dancer.read()
        frames[i] = frame.image
        states.append(dancer.state)
    dancer.close()
    audio = synthesize(states, fps=fps, sample_rate=sample_rate, seed=seed)
    assert len(audio) == count * hop
    log.debug("demo take: %d frames, %.1f s, seed %d", count, count / fps, seed)
    return DemoTake(frames=frames, audio=audio, styles=tuple(s.style for s in states),
                    fps=float(fps), sample_rate=sample_rate)


def _strokes(speed: np.ndarray, fps: float) -> np.ndarray:
    """Strength of each frame's stroke: a peak in limb speed, seen one frame late.

    Causal, as a live instrument would be: frame i knows a peak happened at i-1.
    """
    out = np.zeros_like(speed)
    if len(speed) < 3:
        return out
    peak = (speed[1:-1] >= speed[:-2]) & (speed[1:-1] > speed[2:]) & (speed[1:-1] > _STROKE_MIN)
    gap = max(1, round(_STROKE_GAP_S * fps))
    last = -gap
    for i in np.flatnonzero(peak) + 1:           # frame i peaked; frame i + 1 knows it
        if i - last >= gap:
            out[i + 1] = speed[i]
            last = i
    return out


def _controls(states: Sequence[DancerState], fps: float, sample_rate: int,
              steps: int) -> np.ndarray:
    """Slow parameters at the control rate: float64 (len(_CONTROL_ROWS), steps)."""
    x = np.array([s.x for s in states])
    reach = np.array([s.reach for s in states])
    arms = np.array([s.arms for s in states])
    legs = np.array([s.legs for s in states])
    # Moving the whole body (travelling, swaying) moves many pixels: it swells the pad.
    body = np.minimum(np.abs(np.diff(x, prepend=x[:1])) * fps / _BODY_FULL_SPEED, 1.0)
    arm_strokes, leg_strokes = _strokes(arms, fps), _strokes(legs, fps)

    # Frame i's state applies from its first sample; strokes land on the first
    # control step at or after their frame.
    hop = sample_rate / fps
    at = np.arange(steps) * _CONTROL_BLOCK
    frame_at = np.arange(len(states)) * hop
    x_k = np.interp(at, frame_at, x)
    r_k = np.interp(at, frame_at, reach)
    a_k = np.interp(at, frame_at, arms)
    l_k = np.interp(at, frame_at, legs)
    b_k = np.interp(at, frame_at, body)
    stroke_step = np.ceil(frame_at / _CONTROL_BLOCK).astype(int)
    arm_k = np.zeros(steps)
    leg_k = np.zeros(steps)
    ok = stroke_step < steps
    np.maximum.at(arm_k, stroke_step[ok], arm_strokes[ok])
    np.maximum.at(leg_k, stroke_step[ok], leg_strokes[ok])

    dt = _CONTROL_BLOCK / sample_rate
    up, down = 1 - math.exp(-dt / _ATTACK_S), 1 - math.exp(-dt / _RELEASE_S)
    glide = 1 - math.exp(-dt / _GLIDE_S)
    bell_decay = math.exp(-dt / _BELL_DECAY_S)
    pluck_decay = math.exp(-dt / _PLUCK_DECAY_S)
    bell_table = (_BELL_HZ * 2 ** (_BELL_NOTES / 12)).tolist()
    pad_table = [_PAD_HZ * 2 ** (r / 12) for r in _CHORD_ROOTS]
    bass_table = [[_BASS_HZ * 2 ** ((r + b) / 12) for b in (0, 7, 12, 19)] for r in _CHORD_ROOTS]

    rows: list[list[float]] = [[] for _ in _CONTROL_ROWS]
    gain = arm_level = leg_level = body_level = bell_env = pluck = 0.0
    zone, place, lift = 1, -1, -1
    bell_hz = bass_hz = pad_hz = -1.0
    # A plain loop over Python floats: the followers are asymmetric and the note
    # choices stateful, so they do not vectorise, but at the control rate they
    # cost little.
    for xx, rr, a, l, b, arm_hit, leg_hit in zip(
            x_k.tolist(), r_k.tolist(), a_k.tolist(), l_k.tolist(), b_k.tolist(),
            arm_k.tolist(), leg_k.tolist()):
        # Loudness follows the motion happening now (the fastest of arms, legs and
        # the whole body), not the dancer's slowly gliding energy: an instrument
        # answers a move within the frame that holds it.
        drive = max(a, l, b)
        gain += (drive - gain) * (up if drive > gain else down)
        arm_level += (a - arm_level) * (up if a > arm_level else down)
        leg_level += (l - leg_level) * (up if l > leg_level else down)
        body_level += (b - body_level) * (up if b > body_level else down)
        # Where the dancer stands picks the chord (with hysteresis, so standing on
        # a border does not flutter) and the bell's register.
        if zone != 0 and xx < 0.37:
            zone = 0
        elif zone != 2 and xx > 0.63:
            zone = 2
        elif zone != 1 and 0.43 < xx < 0.57:
            zone = 1
        # Place and arm height step the bell through the scale, each with
        # hysteresis, so a pose on a border does not flutter between two notes.
        spot = min(max((xx - 0.2) / 0.6, 0.0), 1.0) * 5
        if place < 0 or abs(spot - place) > 0.75:
            place = int(round(spot))
        height = rr * _REACH_STEPS
        if lift < 0 or abs(height - lift) > 0.75:
            lift = int(round(height))
        if arm_hit > 0:
            bell_env = max(bell_env, arm_hit)
        else:
            bell_env *= bell_decay
        if leg_hit > 0:
            pluck = max(pluck, leg_hit)
        else:
            pluck *= pluck_decay
        bell_to = bell_table[min(place + lift, len(bell_table) - 1)]
        bass_to = bass_table[zone][(rr > _BASS_FIFTH_REACH) + 2 * (leg_level > _BASS_OCTAVE_LEGS)]
        pad_to = pad_table[zone]
        if bell_hz < 0:
            bell_hz, bass_hz, pad_hz = bell_to, bass_to, pad_to
        bell_hz += (bell_to - bell_hz) * glide
        bass_hz += (bass_to - bass_hz) * glide
        pad_hz += (pad_to - pad_hz) * glide
        for row, value in zip(rows, (
                gain, 0.15 + 0.75 * gain,
                min(1.0, 0.3 * arm_level + 0.7 * bell_env), bell_hz,
                min(1.0, 0.25 * leg_level + 0.75 * pluck), bass_hz,
                0.55 + 0.45 * body_level, pad_hz,
                pluck * pluck * (0.5 + 0.5 * leg_level), 0.25 + 0.65 * pluck)):
            row.append(value)
    return np.array(rows)


def _soft_limit(x: np.ndarray) -> np.ndarray:
    """Linear below the knee, then a smooth approach to 1: never reaches full scale."""
    loud = np.flatnonzero(np.abs(x) > _KNEE)       # rare: only these need the curve
    over = np.abs(x[loud]) - _KNEE
    x[loud] = np.sign(x[loud]) * (_KNEE + (1 - _KNEE) * np.tanh(over / (1 - _KNEE)))
    return x


def synthesize(states: Sequence[DancerState], *, fps: float, sample_rate: int,
               seed: int) -> np.ndarray:
    """The instrument: float32 mono, ``len(states) * hop`` samples in [-1, 1].

    Parameters move per frame but are smoothed at a control rate and interpolated
    per sample; every oscillator keeps its phase, so nothing clicks.
    """
    hop = _hop(fps, sample_rate)
    n = len(states) * hop
    if n == 0:
        return np.zeros(0, np.float32)
    steps = -(-n // _CONTROL_BLOCK) + 1
    controls = _controls(states, fps, sample_rate, steps)
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    nyquist_guard = 0.45 * sample_rate
    ramp = (np.arange(_CONTROL_BLOCK) / _CONTROL_BLOCK).astype(np.float32)
    controls32 = controls.astype(np.float32)
    two_pi = np.float32(2 * np.pi)
    # Pitches are held for a frame, as whole multiples of the frame rate, with
    # phase counted from the frame's start. Every partial is then back at phase 0
    # at each frame boundary (no seam, no click), and the audio of a frame is set
    # by the dance alone, not by phase left over from earlier frames: exactly
    # what a model that generates one segment per frame can learn.
    at_frame_start = (np.arange(len(states)) * hop) // _CONTROL_BLOCK
    frame_hz = {name: controls[_CONTROL_ROWS.index(name), at_frame_start]
                for name in ("bell Hz", "bass Hz", "pad Hz")}
    noise_tail = np.zeros(3, np.float32)
    out = np.empty(n, np.float32)

    def locked(name: str, ratio: float, frame: np.ndarray, since: np.ndarray) -> np.ndarray:
        """Turns at each sample of a partial at ``ratio`` times a frame-held pitch."""
        hz = np.maximum(np.round(ratio * frame_hz[name][frame] / fps), 1) * fps
        return hz * since

    def radians(turn: np.ndarray) -> np.ndarray:
        return (turn - np.floor(turn)).astype(np.float32) * two_pi

    def harmonics(turn: np.ndarray, bright: np.ndarray, count: int) -> np.ndarray:
        """A saw-like tone whose upper harmonics grow with ``bright``, peak <= 1."""
        phase = radians(turn)
        weight = np.ones_like(bright)
        tone = np.sin(phase)
        total = weight.copy()
        for h in range(2, count + 1):
            weight *= bright
            tone += (weight / h) * np.sin(h * phase)
            total += weight / h
        return tone / total

    for k0 in range(0, steps - 1, _CHUNK_BLOCKS):
        k1 = min(k0 + _CHUNK_BLOCKS, steps - 1)
        c0, c1 = controls32[:, k0:k1], controls32[:, k0 + 1:k1 + 1]
        per_sample = (c0[:, :, None] + (c1 - c0)[:, :, None] * ramp).reshape(len(c0), -1)
        s0 = k0 * _CONTROL_BLOCK
        m = min(per_sample.shape[1], n - s0)
        (gain, bright, bell_level, bell_hz, bass_level, bass_hz, pad_level, pad_hz,
         noise_level, pluck_bright) = per_sample[:, :m]
        index = np.arange(s0, s0 + m)
        frame, since = index // hop, (index % hop) / sample_rate

        # The bell's modes are not whole multiples of its pitch: each is rounded
        # to the frame-rate grid on its own.
        bell = np.zeros(m, np.float32)
        norm = np.zeros(m, np.float32)
        weight = np.ones(m, np.float32)
        for ratio, level in zip(_BELL_PARTIALS, _BELL_LEVELS):
            # Upper modes ring with brightness and fade out well below Nyquist.
            fade = level * np.clip((nyquist_guard - ratio * bell_hz) / (0.05 * sample_rate), 0, 1)
            bell += (weight * fade) * np.sin(radians(locked("bell Hz", ratio, frame, since)))
            norm += weight * fade
            weight *= bright
        bell /= np.maximum(norm, np.float32(1e-6))

        bass = harmonics(locked("bass Hz", 1.0, frame, since),
                         pluck_bright * (0.6 + 0.4 * gain), _BASS_HARMONICS)
        pad = 0.6 * harmonics(locked("pad Hz", 1.0, frame, since), bright * 0.7, _PAD_HARMONICS)
        pad += 0.4 * harmonics(locked("pad Hz", 1.5, frame, since), bright * 0.7,
                               _PAD_HARMONICS)

        # Noise softened by a 4-tap average, carried across chunks.
        white = noise_rng.standard_normal(m, np.float32) * np.float32(0.5)
        joined = np.concatenate([noise_tail, white])
        noise = (joined[3:] + joined[2:-1] + joined[1:-2] + joined[:-3]) * np.float32(0.5)
        noise_tail = joined[-3:]

        mix = (_MIX_PAD * pad_level * pad + _MIX_BELL * bell_level * bell
               + _MIX_BASS * bass_level * bass + _MIX_NOISE * noise_level * noise)
        out[s0:s0 + m] = _MASTER * gain * mix
    return _soft_limit(out)


# Demo takes are cut into takes of this length, so validation can hold out whole takes.
_DEMO_TAKE_S = 60.0


def demo_examples(cfg) -> tuple[Examples, Examples, dict]:
    """Training and validation examples from demo takes, split by take.

    ``cfg`` is a ``train_host.config.TrainConfig``: its ``demo`` section gives the
    total length and seed, its ``data`` section the windows and segments. The
    last ``validation_fraction`` of the takes are held out whole.
    """
    data = cfg.data
    takes = max(2, round(cfg.demo.seconds / _DEMO_TAKE_S))
    seconds = cfg.demo.seconds / takes
    parts = []
    for i in range(takes):
        take = make_demo_take(seconds, seed=cfg.demo.seed + i, fps=data.fps,
                              sample_rate=data.sample_rate,
                              width=cfg.motiongram.frame_width,
                              height=cfg.motiongram.frame_height)
        motion = gained_motion(motiongram(take.frames, cfg.motiongram), cfg)
        parts.append(make_examples(motion, take.audio,
                                   window_frames=data.window_frames,
                                   segment_samples=data.segment_samples,
                                   hop_samples=data.hop_samples, labels=take.styles, take=i))
    held_out = round(takes * data.validation_fraction)
    if data.validation_fraction > 0:
        held_out = min(max(held_out, 1), takes - 1)
    train = Examples.concatenate(parts[:takes - held_out])
    validation = (Examples.concatenate(parts[takes - held_out:]) if held_out
                  else train.subset(np.arange(0)))
    summary = {"source": "synthetic demo", "seed": cfg.demo.seed, "takes": takes,
               "seconds": round(cfg.demo.seconds, 1), "validation_takes": held_out,
               "labels": {label: int(n) for label, n in
                          zip(*np.unique(train.labels, return_counts=True))}}
    return train, validation, summary
