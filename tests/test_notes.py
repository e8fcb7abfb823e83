"""The notes voice: motion to notes of the C major pentatonic scale, on the box.

Windows are made frame by frame through the engine's own ``MotionWindow``, as the
box hears a dance; no test here times anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device.bundle import read_bundle
from device.corpus import VoiceShape, open_voice
from device.engine import Engine, MotionWindow
from device.errors import BundleError
from device.notes import SCALE, NotesVoice, default_params, scale_notes, write_notes
from tests.conftest import DEFAULT_BUNDLE
from tests.test_evaluate import check_schema, write_demo_take
from train_host import evaluate as ev

WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def like() -> VoiceShape:
    return VoiceShape.of(read_bundle(DEFAULT_BUNDLE).manifest)


def voice_of(like, tmp_path: Path, **changes) -> NotesVoice:
    params = dataclasses.replace(default_params(like), **changes)
    return open_voice(read_bundle(write_notes(like, params, name="n",
                                              out=tmp_path / "n.dsb")))


def frame(amount: float, row: int, col: int = 32) -> np.ndarray:
    """A motiongram vector: quantity of motion ``amount``, all of it at row ``row``
    and column ``col``."""
    v = np.zeros(WIDTH + HEIGHT, np.float32)
    v[col] = amount * WIDTH
    v[WIDTH + row] = amount * HEIGHT
    return v


def play(voice: NotesVoice, like, vectors) -> np.ndarray:
    window = MotionWindow(like.window_frames, WIDTH + HEIGHT)
    return np.stack([voice(window.push(v)) for v in vectors])


def test_the_scale_is_c_major_pentatonic():
    notes = scale_notes(48, 15)
    assert list(notes[:6]) == [48, 50, 52, 55, 57, 60]
    assert {n % 12 for n in notes} == set(SCALE)
    assert np.all(np.diff(notes) > 0)


def test_every_note_played_is_on_the_scale_and_high_motion_plays_high(tmp_path, like):
    voice = voice_of(like, tmp_path)
    rng = np.random.default_rng(0)
    vectors = [frame(0.01 + 0.01 * math.sin(t / 3), int(rng.integers(0, HEIGHT)),
                     int(rng.integers(0, WIDTH))) for t in range(300)]
    play(voice, like, vectors)
    assert len(voice.onsets) > 20
    assert {note % 12 for _, note, _ in voice.onsets} <= set(SCALE)
    window = MotionWindow(like.window_frames, WIDTH + HEIGHT)
    for _ in range(3):
        high = window.push(frame(0.01, row=0))
    assert voice.step_of(high) == voice.params.steps - 1
    for _ in range(3):
        low = window.push(frame(0.01, row=HEIGHT - 1))
    assert voice.step_of(low) == 0


def test_notes_start_at_the_dancers_stops(tmp_path, like):
    # One place, so no leap; no repeats: only the beats strike notes.
    voice = voice_of(like, tmp_path, repeat_frames=600)
    period = 20
    amounts = [0.004 + 0.02 * (1 - math.cos(2 * math.pi * t / period)) / 2
               for t in range(200)]
    play(voice, like, [frame(a, row=20) for a in amounts])
    frames = [f for f, _, _ in voice.onsets]
    stops = list(range(period, 200, period))   # the local minima of the motion
    assert frames[0] < 3                        # the first move strikes the first note
    later = frames[1:]
    # Each stop gives one note, found causally a frame or two after it.
    assert len(later) == len(stops)
    assert all(0 < f - s <= 2 for f, s in zip(later, stops))


def test_harder_moves_are_louder(tmp_path, like):
    voice = voice_of(like, tmp_path, repeat_frames=600)
    amounts = [0.002 + a * (1 - math.cos(2 * math.pi * t / 20)) / 2
               for a in (0.005, 0.05) for t in range(40)]
    play(voice, like, [frame(a, row=20) for a in amounts])
    soft = [v for f, _, v in voice.onsets if 10 < f < 40]
    loud = [v for f, _, v in voice.onsets if f > 50]
    assert soft and loud and min(loud) > 2 * max(soft)


def test_the_sound_is_finite_bounded_and_silent_for_a_still_dancer(tmp_path, like):
    voice = voice_of(like, tmp_path)
    still = play(voice, like, [np.zeros(WIDTH + HEIGHT, np.float32)] * 60)
    assert not still.any() and not voice.onsets
    wild = play(voice, like, [np.full(WIDTH + HEIGHT, 50.0, np.float32)] * 30
                + [frame(0.02 * (t % 5), row=t % HEIGHT) for t in range(200)])
    assert np.isfinite(wild).all() and np.abs(wild).max() <= 1.0 and wild.any()
    # Then the dancer stands still: the notes ring out and the voice is silent.
    ring = int(5 * voice.params.decay_s * like.fps) + 4
    stopped = voice.frames
    after = play(voice, like, [np.zeros(WIDTH + HEIGHT, np.float32)] * (ring + 30))
    assert not after[ring:].any()
    # No note is struck once the last frames are still (a stop's own note at most).
    assert all(f < stopped + 3 for f, _, _ in voice.onsets if f >= stopped)


def test_the_heuristic_plays_on_a_fixed_grid(tmp_path, like):
    voice = voice_of(like, tmp_path, method="heuristic", bass_steps=0)
    play(voice, like, [frame(0.01 + 0.005 * (t % 7), row=t % HEIGHT) for t in range(100)])
    frames = [f for f, _, _ in voice.onsets]
    assert np.all(np.diff(frames) == voice.params.grid_frames)
    assert {v for _, _, v in voice.onsets} == {0.5}


def test_the_engine_plays_a_notes_voice(tmp_path, like):
    out = write_notes(like, default_params(like), name="n", out=tmp_path / "n.dsb")
    engine = Engine(read_bundle(out))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (HEIGHT, WIDTH), np.uint8)
    hops = [engine.step(image if t % 2 else 255 - image).copy() for t in range(60)]
    assert np.isfinite(hops).all() and np.concatenate(hops).any()


# ---- the bundle -------------------------------------------------------------------


def test_a_notes_bundle_round_trips(tmp_path, like):
    params = default_params(like, "heuristic")
    out = write_notes(like, params, name="bells", out=tmp_path / "b.dsb")
    bundle = read_bundle(out)
    m = bundle.manifest
    assert (m.voice, m.name, bundle.graphs, m.latent_size) == ("notes", "bells", {}, 0)
    assert m.notes == dataclasses.asdict(params)
    assert (m.fps, m.motiongram, m.audio, m.window_frames, m.motion_gain) == \
        (like.fps, like.motiongram, like.audio, like.window_frames, like.motion_gain)
    assert "notes: C major pentatonic" in m.describe()
    # The same settings give the same bytes; a file already there is never replaced.
    again = write_notes(like, params, name="bells", out=tmp_path / "c.dsb")
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(ValueError, match="already exists"):
        write_notes(like, params, name="bells", out=out)
    # Other voices' manifests carry no notes key at all.
    assert "notes" not in json.loads(zipfile.ZipFile(DEFAULT_BUNDLE).read("manifest.json"))


def rewrite(path: Path, out: Path, change) -> Path:
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    change(manifest)
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
    return out


@pytest.mark.parametrize("change, words", [
    (lambda n: n.update(method="loud"), "method is 'loud'"),
    (lambda n: n.update(steps=0), "steps is 0"),
    (lambda n: n.update(lowest=49), "lowest is 49"),
    (lambda n: n.update(decay_s="long"), "decay_s is 'long'"),
    (lambda n: n.update(level_db=6.0), "level_db is 6.0"),
    (lambda n: n.update(repeat_frames=True), "repeat_frames is True"),
    (lambda n: n.pop("strike"), "lacks strike"),
    (lambda n: n.update(tempo=120), "unknown key tempo"),
])
def test_a_damaged_notes_object_is_refused_in_one_line(tmp_path, like, change, words):
    good = write_notes(like, default_params(like), name="n", out=tmp_path / "n.dsb")
    bad = rewrite(good, tmp_path / "bad.dsb", lambda m: change(m["notes"]))
    with pytest.raises(BundleError) as refused:
        open_voice(read_bundle(bad))
    message = str(refused.value)
    assert "\n" not in message and "bad.dsb" in message and "malformed notes" in message
    assert words in message


@pytest.mark.parametrize("value", [None, 5, [1, 2]])
def test_a_notes_voice_without_a_notes_object_is_refused_on_reading(tmp_path, like, value):
    good = write_notes(like, default_params(like), name="n", out=tmp_path / "n.dsb")
    bad = rewrite(good, tmp_path / "bad.dsb", lambda m: m.update(notes=value))
    with pytest.raises(BundleError, match=r"bad\.dsb: manifest notes is .*expected an object"):
        read_bundle(bad)


def test_the_command_writes_a_voice_the_box_checks(tmp_path):
    out = tmp_path / "bells.dsb"
    made = subprocess.run([sys.executable, "-m", "device", "notes", "--out", str(out),
                           "--like", str(DEFAULT_BUNDLE)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    checked = subprocess.run([sys.executable, "-m", "device", "check-bundle", str(out)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "voice       notes" in checked.stdout and "in notes gave 2205" in checked.stdout
    again = subprocess.run([sys.executable, "-m", "device", "notes", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr


# ---- evaluation --------------------------------------------------------------------


def test_evaluate_scores_a_notes_bundle(tmp_path, like):
    write_demo_take(tmp_path / "eval", 30.0, seed=101)
    write_demo_take(tmp_path / "train", 6.0, seed=7)
    scores = {}
    for method in ("motion", "heuristic"):
        out = write_notes(like, default_params(like, method), name=method,
                          out=tmp_path / f"{method}.dsb")
        metrics = ev.evaluate(out, [tmp_path / "eval"], [tmp_path / "train"])
        check_schema(metrics)
        scores[method] = metrics["model"]
    # The synthetic dancer moves all the time: both play notes the measures see.
    for method, values in scores.items():
        assert values["similarity_corr"] is not None, method
        assert values["beat_align"] is not None and values["beat_align"] > 0, method
    # The dance's self-similarity is followed better than by the heuristic (docs/notes.md).
    assert scores["motion"]["similarity_corr"] > scores["heuristic"]["similarity_corr"] + 0.1


def test_crossval_plays_the_same_notes_voice_in_every_fold(tmp_path):
    from train_host.config import load_train_config
    from train_host.crossval import crossval

    for seed in (21, 22):
        write_demo_take(tmp_path / "takes", 4.0, seed=seed)
    cfg = load_train_config(None)
    result = crossval([tmp_path / "takes"], cfg, out=tmp_path / "folds", cache_dir=None,
                      notes="heuristic")
    assert result["name"].endswith("-notes-heuristic") and len(result["folds"]) == 2
    voices = [read_bundle(tmp_path / "folds" / folder / "model.dsb").manifest
              for folder in sorted(p.name for p in (tmp_path / "folds").iterdir())]
    assert [m.notes for m in voices] == [voices[0].notes] * 2
    assert voices[0].notes["method"] == "heuristic"
    check_schema(result["pooled"]["metrics"])
