"""The dataset: takes become aligned motion windows and audio segments, split by take.

Real takes are imported here, into a temporary folder, from ../shared/realdata
(a 25 fps motion-capture take and a 30 fps AIST video clip); tests that need them
skip, saying why, where that folder is absent. Everything else uses small takes
written with the session writer, so what each frame and sample holds is known.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from device.config import with_overrides
from train_host.config import load_train_config
from device.errors import SessionError
from device.motiongram import (MotionGain, block_mean, motion_amount, motiongram,
                               ticks_motiongram)
from device.retime import frame_ticks
from device.session import AUDIO_FILE, SessionWriter, read_session
from tests.conftest import REALDATA, real_video
from train_host import dataset
from train_host.dataset import (DatasetError, build_dataset, session_examples,
                                split_takes)

START = datetime(2026, 11, 21, 14, 30, tzinfo=timezone.utc)


def config(**overrides):
    """The project's training config with dotted-key overrides (data.fps=30, ...)."""
    cfg = load_train_config()
    return with_overrides(cfg, {key.replace("__", "."): value
                                for key, value in overrides.items()}) if overrides else cfg


def expected_count(frames: int, cfg) -> int:
    """Windows of a take of ``frames`` ticks: frames - window + 1, less the tail whose
    segment would run past the end of the audio (frames * hop samples)."""
    d = cfg.data
    tail = -(-d.segment_samples // d.hop_samples) - 1
    return max(0, frames - d.window_frames + 1 - tail)


def write_take(root: Path, *, label: str = "take", seconds: float = 2.0, fps: float = 25,
               sample_rate: int = 22050, seed: int = 0, start_s: float = 0.0,
               minute: int = 0, times=None, audio=None, clean: bool = True,
               scale: int = 1) -> Path:
    """A small take: random moving blocks, a tone whose level follows the frame
    number, timestamps ``start_s + i / fps`` (or ``times``); frames of 64x48 pixels
    times ``scale``."""
    rng = np.random.default_rng(seed)
    count = round(seconds * fps) if times is None else len(times)
    times = start_s + np.arange(count) / fps if times is None else np.asarray(times)
    writer = SessionWriter(root, label=label, fps=fps, sample_rate=sample_rate,
                           audio_source="test", started=START + timedelta(minutes=minute),
                           min_free_bytes=0, width=64 * scale, height=48 * scale)
    for i, t in enumerate(times):
        image = np.full((48 * scale, 64 * scale), 40, np.uint8)
        x, y = rng.integers(0, 56 * scale), rng.integers(0, 40 * scale)
        image[y:y + 8, x:x + 8] = 220
        if scale > 1:
            image[y + 3, x + 9] = 120        # one fine pixel of detail beside the block
        writer.add_frame(image, float(t))
    if audio is None:
        n = round((times[-1] + 1 / fps) * sample_rate)
        t = np.arange(n) / sample_rate
        audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(t))
    writer.add_audio(np.asarray(audio, np.float32))
    if clean:
        writer.close()
    else:
        writer.abort()
    return writer.path


# ---- real takes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_takes(tmp_path_factory) -> dict[str, Path]:
    """A 25 fps mocap take (DANCE_W_1) and a 30 fps video take (aist_clip), imported once."""
    pytest.importorskip("av")
    mocap = REALDATA / "mocap" / "DANCE_W_1"
    if not mocap.is_dir():
        pytest.skip(f"real data {mocap} is absent (see shared/realdata/SOURCES.md)")
    video = real_video("aist_clip.mp4")
    from train_host.importers import import_mocap, import_video

    root = tmp_path_factory.mktemp("real-sessions")
    return {"mocap": import_mocap(mocap, root, sample_rate=22050).path,
            "video": import_video(video, root, sample_rate=22050).path}


@pytest.mark.parametrize("segment_seconds", [0.1, 0.5])
def test_25_fps_mocap_used_at_30_fps(real_takes, segment_seconds):
    # The gain off, to compare the re-timed motion with the take's own.
    cfg = config(data__fps=30, data__segment_seconds=segment_seconds,
                 motion_gain__reference=0.0)
    session = read_session(real_takes["mocap"])
    assert session.info.fps == 25 and session.info.frames == 1430      # 57.2 s
    ticks = round(session.info.duration_s * 30)                       # 1716
    ex = session_examples(real_takes["mocap"], cfg, take=3)

    d = cfg.data
    assert len(ex) == expected_count(ticks, cfg) > 1600
    assert ex.motion.shape == (len(ex), d.window_frames, 112)
    assert ex.audio.shape == (len(ex), round(segment_seconds * 22050))
    assert set(ex.labels) == {"waltz"} and set(ex.take) == {3}
    # Example j's window ends at tick 7 + j; its sound starts at that tick's time.
    ends = np.arange(len(ex)) + d.window_frames - 1
    for j in (0, len(ex) // 2, len(ex) - 1):
        start = ends[j] * d.hop_samples
        np.testing.assert_array_equal(ex.audio[j], session.audio[start:start + d.segment_samples])

    # Sensible motion: a tick showing the next source frame has exactly that frame's
    # 25 fps motion; a tick that holds the same frame (one in six) carries the
    # motion of the tick before on, rather than reading as a still moment.
    native = motiongram(np.asarray(session.frames))
    _, index = frame_ticks(session.timestamps, fps=30, source_fps=25)
    assert len(index) == ticks
    retimed = np.concatenate([ex.motion[0], ex.motion[1:, -1]])       # rows for ticks 0..
    steps = np.diff(index[:len(retimed)])
    new, held = steps == 1, steps == 0
    assert set(steps.tolist()) == {0, 1} and held.mean() == pytest.approx(1 / 6, abs=0.01)
    np.testing.assert_array_equal(retimed[1:][new], native[index[1:len(retimed)][new]])
    np.testing.assert_array_equal(retimed[1:][held], retimed[:-1][held])
    still = lambda m: (m.sum(axis=1) == 0).mean()
    assert still(retimed) == pytest.approx(still(native), abs=0.01)
    assert retimed.mean() == pytest.approx(native.mean(), rel=0.05)


def test_30_fps_video_windows_align_with_their_audio(real_takes):
    cfg = config(data__fps=30, data__segment_seconds=0.1, motion_gain__reference=0.0)
    session = read_session(real_takes["video"])
    assert session.info.fps == 30
    ex = session_examples(session, cfg, take=0)
    d = cfg.data
    native = motiongram(np.asarray(session.frames))
    assert len(ex) == expected_count(session.info.frames, cfg)
    for j in range(len(ex)):
        t = j + d.window_frames - 1                     # the frame the window ends on
        np.testing.assert_array_equal(ex.motion[j], native[t - d.window_frames + 1:t + 1])
        np.testing.assert_array_equal(
            ex.audio[j], session.audio[t * d.hop_samples:t * d.hop_samples + d.segment_samples])


# ---- re-timing -------------------------------------------------------------------------


def test_frame_ticks_hold_the_latest_frame_at_or_before_each_tick():
    t = np.arange(50) / 25                               # 2 s at 25 fps
    first, index = frame_ticks(t, fps=30, source_fps=25)
    assert first == 0 and len(index) == 60
    expected = [int(np.floor((k / 30 + 0.25 / 30) * 25 + 1e-9)) for k in range(60)]
    assert index.tolist() == expected
    # Timestamps a little off the grid (container rounding) still map one to one.
    jitter = np.arange(90) / 30 + np.random.default_rng(1).uniform(-0.002, 0.002, 90)
    first, index = frame_ticks(jitter, fps=30, source_fps=30)
    assert first == 0 and index.tolist() == list(range(90))
    # A dropped camera frame: the tick holds the frame before the gap.
    gap = np.delete(np.arange(30) / 30, 10)
    assert frame_ticks(gap, fps=30, source_fps=30)[1][9:12].tolist() == [9, 9, 10]


def test_ticks_before_the_first_frame_are_dropped_and_audio_follows(tmp_path):
    # Frames from 0.2 s on: ticks 0-5 show nothing, tick 6 (0.2 s) is the first.
    path = write_take(tmp_path, fps=30, seconds=1.0, start_s=0.2,
                      audio=np.arange(round(1.2 * 22050)) / 32767)   # sample n holds n
    assert frame_ticks(read_session(path).timestamps, fps=30, source_fps=30)[0] == 6
    cfg = config(data__fps=30, data__segment_seconds=0.1)
    prepared = dataset.prepare_take(path, cfg)
    assert prepared.first_tick == 6 and len(prepared.motion) == 30
    hop = cfg.data.hop_samples
    index = lambda a: np.round(a * 32767).astype(int)
    # audio[0] of the prepared take is sample 6 * hop of the take: 0.2 s.
    assert index(prepared.audio[0]) == 6 * hop
    # The first window ends on tick 6 + 7: its sound starts there.
    ex = session_examples(path, cfg, take=0)
    assert index(ex.audio[0]).tolist() == list(range(13 * hop, 13 * hop + 2205))


def test_motiongram_in_chunks_equals_one_call(tmp_path):
    path = write_take(tmp_path, seconds=3.0, fps=25)
    session = read_session(path)
    _, index = frame_ticks(session.timestamps, fps=30, source_fps=25)
    frames = np.asarray(session.frames)
    whole = ticks_motiongram(frames, index)
    np.testing.assert_array_equal(ticks_motiongram(session.frames, index, chunk=7), whole)
    # Where no frame repeats, it is the plain motiongram of the frames shown.
    new = np.r_[True, index[1:] != index[:-1]]
    np.testing.assert_array_equal(whole[new], motiongram(frames[index[new]]))


def test_examples_carry_the_motion_gain_the_box_applies(tmp_path):
    path = write_take(tmp_path, seconds=3.0, fps=30)
    cfg = config(data__fps=30)
    prepared = dataset.prepare_take(path, cfg)
    gained = MotionGain(cfg.motion_gain, cfg.motiongram, fps=30).apply(prepared.motion)
    ex = session_examples(path, cfg, take=0)
    np.testing.assert_array_equal(ex.motion[:, -1], gained[cfg.data.window_frames - 1:][:len(ex)])
    assert not np.array_equal(gained, prepared.motion)


def test_audio_at_another_rate_is_resampled_in_place(tmp_path):
    rate = 44100
    t = np.arange(round(2.0 * rate)) / rate
    sound = 0.4 * np.sin(2 * np.pi * 440 * t)
    sound[rate:rate + 20] += 0.5                       # a click at exactly 1.0 s
    path = write_take(tmp_path, fps=30, seconds=2.0, sample_rate=rate, audio=sound)
    cfg = config(data__fps=30, data__sample_rate=22050)
    prepared = dataset.prepare_take(path, cfg)
    assert len(prepared.audio) == 60 * cfg.data.hop_samples
    t2 = np.arange(len(prepared.audio)) / 22050
    rest = prepared.audio - 0.4 * np.sin(2 * np.pi * 440 * t2)
    assert np.abs(rest[2000:20000]).max() < 0.01       # the tone, in phase
    assert 22050 <= int(np.argmax(rest)) <= 22050 + 12   # the click, where it was


def test_audio_that_stops_early_cuts_the_motion(tmp_path, caplog):
    # 4 s of frames but only 1.5 s of sound: no silence is learned as the dance's sound.
    path = write_take(tmp_path, fps=30, seconds=4.0, audio=np.full(round(1.5 * 22050), 0.1))
    cfg = config(data__fps=30)
    with caplog.at_level(logging.WARNING):
        prepared = dataset.prepare_take(path, cfg)
    assert len(prepared.motion) == 45 and "audio stops 2.5 s before" in caplog.text
    # Within a second, the shortfall is padded with silence instead.
    short = write_take(tmp_path, fps=30, seconds=2.0, minute=1,
                       audio=np.full(round(1.5 * 22050), 0.1))
    prepared = dataset.prepare_take(short, cfg)
    assert len(prepared.motion) == 60 and not prepared.audio[-cfg.data.hop_samples:].any()


# ---- refusals -------------------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo, *must_contain: str) -> None:
    message = str(exc.value)
    assert message and "\n" not in message
    for text in must_contain:
        assert text in message, message


def test_a_broken_take_stops_the_build_naming_it(tmp_path):
    write_take(tmp_path, label="good")
    broken = write_take(tmp_path, label="broken", minute=1)
    (broken / AUDIO_FILE).unlink()
    with pytest.raises(SessionError) as exc:
        build_dataset([tmp_path], config())
    one_line(exc, str(broken), AUDIO_FILE, "move it out")
    with pytest.raises(SessionError) as exc:
        session_examples(broken, config(), take=0)
    one_line(exc, str(broken), AUDIO_FILE)


def test_unusable_takes_are_refused_with_one_line(tmp_path):
    backwards = write_take(tmp_path, label="backwards", times=[0.0, 0.04, 0.08, 0.02, 0.12])
    with pytest.raises(DatasetError) as exc:
        session_examples(backwards, config(), take=0)
    one_line(exc, str(backwards), "backwards")
    wide = SessionWriter(tmp_path, label="wide", fps=25, width=80, height=48, sample_rate=22050,
                         audio_source="test", min_free_bytes=0)
    wide.add_frame(np.zeros((48, 80), np.uint8), 0.0)
    wide.add_audio(np.zeros(882, np.float32))
    wide.close()
    with pytest.raises(DatasetError) as exc:
        session_examples(wide.path, config(), take=0)
    one_line(exc, str(wide.path), "80x48", "64x48")
    with pytest.raises(DatasetError) as exc:
        build_dataset([tmp_path / "nowhere"], config())
    one_line(exc, "nowhere")


def test_a_take_recorded_finer_trains_a_model_at_either_scale(tmp_path):
    fine = write_take(tmp_path, label="fine", seconds=3.0, fps=30, scale=2)
    coarse_cfg, fine_cfg = config(data__fps=30), config(data__fps=30, motiongram__scale=2)
    frames = np.asarray(read_session(fine).frames)
    # At scale 1 the take's frames are area-averaged first, as a 64x48 camera sees them.
    np.testing.assert_array_equal(dataset.prepare_take(fine, coarse_cfg).motion,
                                  motiongram(block_mean(frames, 48, 64)))
    finer = dataset.prepare_take(fine, fine_cfg).motion
    np.testing.assert_array_equal(finer, motiongram(frames, fine_cfg.motiongram))
    assert finer.shape == (90, 112) and motion_amount(finer, fine_cfg.motiongram).sum() > \
        motion_amount(dataset.prepare_take(fine, coarse_cfg).motion, coarse_cfg.motiongram).sum()
    coarse = write_take(tmp_path, label="coarse", seconds=3.0, fps=30)
    with pytest.raises(DatasetError) as exc:
        session_examples(coarse, fine_cfg, take=0)
    one_line(exc, str(coarse), "frames are 64x48", "takes 128x96 frames")


def test_a_take_not_cleanly_stopped_is_used_with_a_warning(tmp_path, caplog):
    path = write_take(tmp_path, seconds=2.0, fps=30, clean=False)
    with caplog.at_level(logging.WARNING):
        ex = session_examples(path, config(data__fps=30), take=0)
    assert len(ex) == expected_count(60, config(data__fps=30))
    assert "not cleanly stopped" in caplog.text and path.name in caplog.text


# ---- many takes ------------------------------------------------------------------------

LABELS = ["salsa"] * 4 + ["waltz"] * 3 + ["tango"] * 2 + ["solo"]


def ticks(i: int) -> int:
    """Ticks at 30 fps of take ``i`` of ``takes_root``: those before its last frame has
    lasted one of its own periods, less a quarter tick (``frame_ticks``)."""
    fps = (25, 30)[i % 2]
    duration = round((1.0 + 0.25 * i) * fps) / fps
    return math.ceil(duration * 30 - 0.25 - 1e-9)


@pytest.fixture(scope="module")
def takes_root(tmp_path_factory) -> Path:
    """Ten small takes with four labels, of different lengths and frame rates."""
    root = tmp_path_factory.mktemp("sessions")
    for i, label in enumerate(LABELS):
        write_take(root, label=label, seconds=1.0 + 0.25 * i, fps=(25, 30)[i % 2], seed=i,
                   minute=i)
    # An importer's staging folder, half written: never a take.
    (root / ".importing-abc123").mkdir()
    (root / ".importing-abc123" / "junk").write_text("half an import")
    return root


def test_split_is_by_take_deterministic_and_adds_up(takes_root):
    cfg = config(data__validation_fraction=0.3)
    train, validation, summary = build_dataset([takes_root], cfg)
    assert summary["takes"] == 10 and summary["validation_takes"] == 3
    assert not set(train.take.tolist()) & set(validation.take.tolist())
    assert set(train.take.tolist()) | set(validation.take.tolist()) == set(range(10))
    # Stratified: each label with two takes or more gives one to validation.
    assert sorted(set(validation.labels.tolist())) == ["salsa", "tango", "waltz"]
    assert len(summary["validation_sessions"]) == 3

    again = build_dataset([takes_root], cfg)
    for a, b in zip((train, validation), again[:2]):
        for name in ("motion", "audio", "labels", "take"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert again[2] == summary
    splits = {tuple(build_dataset([takes_root], with_overrides(cfg, {"seed": s}))[2]
                    ["validation_sessions"]) for s in range(1, 6)}
    assert len(splits) > 1, "the seed should choose the validation takes"

    labels = summary["labels"]
    assert sum(v["segments"] for v in labels.values()) == len(train) + len(validation)
    assert sum(v["train_segments"] for v in labels.values()) == summary["segments"]["train"]
    assert sum(v["takes"] for v in labels.values()) == 10
    assert {k: v["takes"] for k, v in labels.items()} == {"salsa": 4, "waltz": 3, "tango": 2,
                                                          "solo": 1}
    durations = sum(read_session(p).info.duration_s for p in sorted(takes_root.glob("2*")))
    assert summary["seconds"] == pytest.approx(durations, abs=10 / 30)
    assert summary["hours"] == pytest.approx(summary["seconds"] / 3600, rel=1e-4)
    json.dumps(summary)                                   # it goes into the bundle


@pytest.mark.parametrize("segment_seconds, samples", [(0.1, 2205), (0.5, 11025)])
def test_both_segment_lengths_build(takes_root, segment_seconds, samples):
    cfg = config(data__segment_seconds=segment_seconds)
    train, validation, summary = build_dataset([takes_root], cfg)
    assert train.audio.shape[1:] == validation.audio.shape[1:] == (samples,)
    assert train.motion.shape[1:] == (8, 112)
    assert len(train) + len(validation) == sum(expected_count(ticks(i), cfg)
                                               for i in range(10))
    assert summary["segment_seconds"] == segment_seconds


def test_split_sizes():
    assert not split_takes(["a"], 0.2, 1).any()
    assert not split_takes(["a", "a", "b"], 0.0, 1).any()
    assert split_takes(["a", "b"], 0.2, 1).sum() == 1          # at least one...
    assert split_takes(["a", "b"], 0.5, 1).sum() == 1          # ...never all
    assert split_takes(list("abcdefghij"), 0.2, 1).sum() == 2  # no label to stratify on
    for seed in range(5):
        # The small label is validated too, though the big one is further below its share.
        held = split_takes(["a"] * 8 + ["b"] * 2, 0.2, seed)
        assert held[:8].sum() == 1 and held[8:].sum() == 1
    held = split_takes(["x"] * 10 + ["y"] * 10, 0.5, 3)
    assert held.sum() == 10 and held[:10].sum() == held[10:].sum() == 5
    for seed in range(5):
        np.testing.assert_array_equal(split_takes(LABELS, 0.3, seed),
                                      split_takes(LABELS, 0.3, seed))


def test_evening_levels_brings_every_take_to_the_training_median_and_keeps_its_dynamics():
    rng = np.random.default_rng(0)
    def takes(levels_db, first):
        audio, take = [], []
        for i, level in enumerate(levels_db):
            # A crescendo of 20 segments, 6 dB from first to last, at the take's level.
            ramp = 10.0 ** ((level + np.linspace(-3, 3, 20)) / 20)
            audio.append(ramp[:, None] * rng.choice([-1.0, 1.0], (20, 64)))
            take += [first + i] * 20
        audio = np.concatenate(audio).astype(np.float32)
        return dataset.Examples(np.zeros((len(audio), 2, 3), np.float32), audio,
                                np.full(len(audio), ""), np.array(take))
    train, validation = takes([-10.0, -20.0, -45.0], 0), takes([-30.0], 3)
    before = train.audio.copy()

    gains = dataset.even_levels(train, validation)

    # The median of the training takes' medians is -20 dB: a song 25 dB quieter
    # than the others is brought up, not the others down to it.
    assert gains == pytest.approx({0: -10.0, 1: 0.0, 2: 25.0, 3: 10.0}, abs=1e-6)
    for examples in (train, validation):
        for level in dataset.take_levels_db(examples).values():
            assert level == pytest.approx(-20.0, abs=1e-4)
    # One gain per take: each take's own rise and fall is kept, sample for sample.
    np.testing.assert_allclose(train.audio[:20], before[:20] * 10 ** (-10 / 20), rtol=1e-6)
    np.testing.assert_allclose(train.audio[40:], before[40:] * 10 ** (25 / 20), rtol=1e-6)


def test_a_single_take_has_no_validation_set(tmp_path):
    path = write_take(tmp_path, seconds=2.0, fps=30)
    # The root may be the take folder itself.
    train, validation, summary = build_dataset([path], config(data__fps=30))
    assert len(train) == expected_count(60, config(data__fps=30)) and len(validation) == 0
    assert validation.audio.shape == (0, 2205)
    assert "no validation" in summary["note"] and summary["validation_sessions"] == []


def test_takes_too_short_for_an_example_are_left_out(tmp_path):
    write_take(tmp_path, label="long", seconds=2.0)
    write_take(tmp_path, label="blip", seconds=0.2, minute=1)      # 6 ticks < 8-frame window
    train, validation, summary = build_dataset([tmp_path], config())
    assert summary["takes"] == 1 and len(summary["skipped"]) == 1
    assert "blip" in summary["skipped"][0] and set(train.labels) == {"long"}


# ---- the cache ------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise AssertionError("the motiongram was computed again")


def _same(a, b) -> None:
    for x, y in zip(a[:2], b[:2]):
        for name in ("motion", "audio", "labels", "take"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


def test_cache_hits_give_identical_arrays_and_changes_miss(tmp_path, monkeypatch):
    root, cache = tmp_path / "sessions", tmp_path / "cache"
    paths = [write_take(root, label=label, seconds=2.0, seed=i, minute=i)
             for i, label in enumerate(["a", "a", "b"])]
    cfg = config()
    fresh = build_dataset([root], cfg)
    first = build_dataset([root], cfg, cache_dir=cache)
    _same(fresh, first)
    assert len(list(cache.glob("*.npz"))) == 3

    # A hit computes nothing (the motiongram would raise) and gives the same arrays.
    from device import timeline
    real_motiongram = timeline.ticks_motiongram
    monkeypatch.setattr(timeline, "ticks_motiongram", _boom)
    _same(first, build_dataset([root], cfg, cache_dir=cache))
    # Window and segment lengths, and the motion gain, are applied after the cache:
    # still hits, never stale.
    gained = build_dataset([root], with_overrides(cfg, {"motion_gain.reference": 0.02}),
                           cache_dir=cache)
    assert not np.array_equal(gained[0].motion, first[0].motion)
    other = with_overrides(cfg, {"data.window_frames": 4, "data.segment_seconds": 0.5})
    cut = build_dataset([root], other, cache_dir=cache)
    assert cut[0].motion.shape[1] == 4 and cut[0].audio.shape[1] == 11025

    # A parameter the prepared arrays depend on misses.
    with pytest.raises(AssertionError, match="computed again"):
        build_dataset([root], with_overrides(cfg, {"motiongram.threshold": 0.1}),
                      cache_dir=cache)
    # A take that changed misses: a few more samples of sound on one of them.
    with open(paths[1] / AUDIO_FILE, "ab") as f:
        f.write(np.full(2205, 1000, "<i2").tobytes())
    with pytest.raises(AssertionError, match="computed again"):
        build_dataset([root], cfg, cache_dir=cache)

    monkeypatch.setattr(timeline, "ticks_motiongram", real_motiongram)
    _same(build_dataset([root], other), cut)
    changed = build_dataset([root], cfg, cache_dir=cache)
    _same(build_dataset([root], cfg), changed)
    assert len(list(cache.glob("*.npz"))) == 4          # and one for the changed take


def test_frames_timed_absurdly_far_from_the_audio_cannot_exhaust_memory(tmp_path, caplog):
    """A take from elsewhere whose last frames are timed a million years out (or
    before its start) is built from the frames within its audio, in bounded memory."""
    times = np.concatenate([[-1e12], np.arange(60) / 30, [3e13, 4e13]])
    path = write_take(tmp_path, fps=30, times=times, audio=np.full(2 * 22050, 0.1))
    with caplog.at_level(logging.WARNING):
        prepared = dataset.prepare_take(path, config(data__fps=30))
    assert len(prepared.motion) <= 2 * 30 + 1
    assert "3 frame(s) timed outside its 2.0 s of audio are left out" in caplog.text


def test_a_headless_take_folder_is_left_out_with_a_warning(tmp_path, caplog):
    """A take cut off before its session.yaml was written stops no build."""
    good = write_take(tmp_path)
    headless = tmp_path / "20261121T150000Z-take"
    headless.mkdir()
    (headless / "frames.u8").write_bytes(b"\0" * 3072)
    with caplog.at_level(logging.WARNING):
        assert dataset.find_takes([tmp_path]) == [good]
    assert "20261121T150000Z-take: left out: it was cut off" in caplog.text
