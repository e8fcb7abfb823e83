"""The synthetic dancer and the demo dataset it drives.

The dancer is the camera on a machine without one and the source of the demo
training data, so these tests check what both uses rely on: it is reproducible,
it stops when told, standing still really is still to the motiongram, and a free
dance moves by varying amounts in varying places. The demo sound must follow the
motion, be silent when the dancer is, and never click or clip.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from device.camera import Frame
from device.camera.synthetic import STYLES, DancerState, SyntheticDancer, dance_states
from device.motiongram import MotiongramParams, motion_amount, motiongram
from train_host.demo_data import DemoTake, make_demo_take, synthesize

PARAMS = MotiongramParams()
FPS = 30
RATE = 22050
HOP = RATE // FPS


def dance(seconds: float, **kwargs) -> tuple[np.ndarray, list[DancerState], list[Frame]]:
    """Frames (T, H, W), states and Frame objects of a whole dance."""
    dancer = SyntheticDancer(seconds=seconds, **kwargs)
    frames, states = [], []
    while (frame := dancer.read()) is not None:
        frames.append(frame)
        states.append(dancer.state)
    return np.stack([f.image for f in frames]), states, frames


def frame_rms(audio: np.ndarray, frames: int) -> np.ndarray:
    return np.sqrt((audio.astype(np.float64).reshape(frames, -1) ** 2).mean(axis=1))


def click_score(audio: np.ndarray, window: int = 220) -> float:
    """Largest sample-to-sample jump over the RMS of the jumps within +-10 ms.

    Tones and noise stay below about 5 (their own peak factors); a discontinuity
    stands out from its neighbourhood: a 0.05 step in a sounding take scores ~20,
    a synthesiser that switches its parameters without smoothing scores over 7.
    """
    jump = np.diff(audio.astype(np.float64))
    energy = np.concatenate([[0.0], np.cumsum(jump * jump)])
    i = np.arange(len(jump))
    lo, hi = np.maximum(i - window, 0), np.minimum(i + window + 1, len(jump))
    local = np.sqrt((energy[hi] - energy[lo]) / (hi - lo))
    return float((np.abs(jump) / (local + 1e-4)).max())


@pytest.fixture(scope="module")
def take() -> DemoTake:
    return make_demo_take(60, seed=0)


@pytest.fixture(scope="module")
def free_dance() -> tuple[np.ndarray, list[DancerState], list[Frame]]:
    return dance(60, seed=0)


# --- the dancer as a camera ------------------------------------------------------

def test_frames_are_grey_uint8_of_the_asked_size_with_frame_timestamps():
    images, _, frames = dance(1, seed=0)
    assert images.dtype == np.uint8 and images.shape == (30, 48, 64)
    assert [f.timestamp for f in frames] == pytest.approx([i / 30 for i in range(30)])
    wide, _, _ = dance(0.5, seed=0, width=80, height=60, fps=20)
    assert wide.shape == (10, 60, 80)
    # A light figure on a darker backdrop, not a blank frame.
    assert images[0].max() > 180 and np.median(images[0]) < 90


def test_same_seed_gives_identical_frames_and_another_seed_does_not():
    a, states_a, _ = dance(3, seed=7)
    b, states_b, _ = dance(3, seed=7)
    c, _, _ = dance(3, seed=8)
    assert np.array_equal(a, b) and states_a == states_b
    assert not np.array_equal(a, c)


def test_seconds_gives_exactly_that_many_frames_then_none():
    dancer = SyntheticDancer(fps=25, seconds=0.7)           # round(17.5) frames
    count = 0
    while dancer.read() is not None:
        count += 1
    assert count == round(0.7 * 25)
    assert dancer.read() is None
    endless = SyntheticDancer(seed=1)
    assert all(endless.read() is not None for _ in range(400))
    endless.close()
    endless.close()                                         # safe twice
    assert endless.read() is None


def test_zero_energy_stands_perfectly_still():
    images, states, _ = dance(10, seed=3, energy=0.0)
    features = motiongram(images, PARAMS)
    assert (features == 0).mean() > 0.999
    assert all(s.energy == 0.0 and s.arms == 0.0 and s.legs == 0.0 for s in states)
    # Only sensor noise: every pixel stays within a few grey levels of its mean.
    assert np.abs(images.astype(np.float32) - images.mean(axis=0)).max() < 13


def test_free_dance_moves_by_varying_amounts_in_varying_places(free_dance):
    images, _, _ = free_dance
    features = motiongram(images[:20 * FPS], PARAMS)
    amount = motion_amount(features, PARAMS)
    assert (amount > 0).mean() > 0.5                       # plenty of motion
    per_second = amount.reshape(20, FPS).mean(axis=1)
    assert per_second.max() > 3 * per_second.min()         # sections clearly differ
    columns = features[:, :PARAMS.width]
    moving = columns.sum(axis=1) > 0
    centroid = (columns[moving] * np.arange(PARAMS.width)).sum(1) / columns[moving].sum(1)
    assert np.percentile(centroid, 90) - np.percentile(centroid, 10) > 4   # the place moves


def test_section_changes_glide_without_a_jerk(free_dance):
    images, states, _ = free_dance
    amount = motion_amount(motiongram(images, PARAMS), PARAMS)
    styles = np.array([s.style for s in states])
    changes = np.flatnonzero(styles[1:] != styles[:-1]) + 1
    assert len(changes) >= 6 and set(styles) <= set(STYLES)
    near = np.zeros(len(styles), bool)
    for i in changes:
        near[max(i - 3, 0):i + FPS] = True
    # A pose that jumped would move far more pixels at once than any dancing does.
    assert amount[near].max() < 1.5 * np.percentile(amount[~near], 99.5)


def test_state_describes_the_figure(free_dance):
    images, states, _ = free_dance
    figure = images > 128
    centre = (figure.sum(axis=1) * np.arange(64)).sum(axis=1) / figure.sum(axis=(1, 2))
    x = np.array([s.x for s in states]) * 64
    assert np.abs(centre - x).max() < 3
    assert x.max() - x.min() > 10                          # it travels
    styles = np.array([s.style for s in states])
    arms = np.array([s.arms for s in states])
    legs = np.array([s.legs for s in states])
    assert arms[styles == "arms"].mean() > 3 * legs[styles == "arms"].mean()
    assert legs[styles == "legs"].mean() > 3 * arms[styles == "legs"].mean()
    assert all(0 <= v <= 1 for s in states for v in (s.energy, s.x, s.arms, s.legs))


def test_dance_states_give_the_choreography_without_rendering(free_dance):
    _, states, _ = free_dance
    assert dance_states(60, seed=0) == states


def test_paced_dancer_keeps_real_time_and_unpaced_does_not_wait():
    paced = SyntheticDancer(fps=50, paced=True, seconds=0.4)
    start = time.monotonic()
    while paced.read() is not None:
        pass
    assert 0.37 <= time.monotonic() - start < 1.0           # 20 frames, 19 intervals
    start = time.monotonic()
    dance(0.4, fps=50)
    assert time.monotonic() - start < 0.2


def test_bad_arguments_are_refused():
    for kwargs in ({"energy": 1.5}, {"energy": -0.1}, {"fps": 0}, {"seconds": -1},
                   {"width": 4}):
        with pytest.raises(ValueError):
            SyntheticDancer(**kwargs)


# --- the demo dataset ------------------------------------------------------------

def test_demo_take_is_frame_aligned_and_in_range(take):
    assert take.frames.shape == (60 * FPS, 48, 64) and take.frames.dtype == np.uint8
    assert take.audio.dtype == np.float32 and take.audio.shape == (60 * FPS * HOP,)
    assert len(take.styles) == 60 * FPS and take.fps == FPS and take.sample_rate == RATE
    assert np.abs(take.audio).max() <= 1.0
    small = make_demo_take(1, seed=2, fps=25, sample_rate=16000)
    assert small.audio.shape == (25 * 640,)


def test_sample_rate_must_be_a_whole_multiple_of_fps():
    with pytest.raises(ValueError):
        make_demo_take(1, seed=0, fps=40, sample_rate=22050)
    with pytest.raises(ValueError):
        synthesize(dance_states(1), fps=40, sample_rate=22050, seed=0)


def test_demo_take_is_reproducible():
    a, b = make_demo_take(2, seed=5), make_demo_take(2, seed=5)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, make_demo_take(2, seed=6).audio)


def test_loudness_follows_motion(take):
    amount = motion_amount(motiongram(take.frames, PARAMS), PARAMS)
    rms = frame_rms(take.audio, len(take.frames))
    assert np.corrcoef(rms, amount)[0, 1] > 0.6


def test_a_still_dancer_is_far_quieter_than_a_moving_one():
    moving = make_demo_take(20, seed=1).audio
    still = make_demo_take(20, seed=1, energy=0.0).audio
    quieter_db = 20 * np.log10(np.sqrt(np.mean(moving ** 2.0)) / (np.sqrt(np.mean(still ** 2.0)) + 1e-9))
    assert quieter_db > 20
    energetic = make_demo_take(10, seed=1, energy=1.0).audio
    assert 0.45 < np.abs(energetic).max() < 0.95


def test_where_the_motion_is_shapes_the_timbre():
    def centroid_hz(audio: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(audio)) ** 2
        return float((power * np.fft.rfftfreq(len(audio), 1 / RATE)).sum() / power.sum())

    beat = np.abs(np.sin(2 * np.pi * 1.5 * np.arange(10 * FPS) / FPS))
    def played(x: float, limb: str) -> np.ndarray:
        states = [DancerState(energy=0.7, x=x, arms=float(v) if limb == "arms" else 0.0,
                              legs=float(v) if limb == "legs" else 0.0, style=limb)
                  for v in beat]
        return synthesize(states, fps=FPS, sample_rate=RATE, seed=0)

    arms_left, arms_right, legs = played(0.2, "arms"), played(0.8, "arms"), played(0.5, "legs")
    assert centroid_hz(arms_left) > 1.5 * centroid_hz(legs)      # arms ring high, legs low
    assert centroid_hz(arms_right) > 1.3 * centroid_hz(arms_left)  # further right, higher


def test_no_clicks_even_when_the_dance_changes_abruptly(take):
    assert click_score(take.audio) < 6.5
    # Every frame a different dancer: the worst case for parameter changes.
    rng = np.random.default_rng(0)
    wild = [DancerState(*map(float, rng.random(4)), style="jump") for _ in range(300)]
    audio = synthesize(wild, fps=FPS, sample_rate=RATE, seed=0)
    assert click_score(audio) < 6.5 and np.abs(audio).max() <= 1.0
    # The measure does see a click: a small step where the take is sounding.
    loud = int(np.argmax(frame_rms(take.audio, len(take.frames)) > 0.05)) * HOP + HOP // 2
    clicked = take.audio.copy()
    clicked[loud:] += 0.05
    assert click_score(clicked) > 6.5
