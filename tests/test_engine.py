"""The live loop with the factory model: sample-exact runs, motion makes sound."""

import numpy as np
import pytest

from device.audio import to_int16
from device.audio.wav import WavSink, read_wav
from device.bundle import read_bundle
from device.camera.synthetic import SyntheticDancer
from device.camera.video import VideoFileCamera
from device.engine import Dynamics, Engine, MotionWindow, QuietWhenStill, Strikes
from tests.conftest import real_video


def _play(bundle_path, camera, sink, frames=None):
    engine = Engine(read_bundle(bundle_path), volume=1.0)
    try:
        return engine.run(camera, sink.write, max_frames=frames)
    finally:
        camera.close()
        sink.close()


def test_video_to_wav_is_one_hop_per_frame_and_repeatable(default_bundle, tmp_path):
    clip = real_video("aist_clip.mp4")
    outputs = []
    for i in range(2):
        sink = WavSink(tmp_path / f"run{i}.wav", sample_rate=22050)
        stats = _play(default_bundle, VideoFileCamera(clip, fps=30), sink)
        assert stats.frames == 146 and stats.samples == 146 * 735
        audio, rate = read_wav(tmp_path / f"run{i}.wav")
        assert rate == 22050 and len(audio) == 146 * 735
        outputs.append((tmp_path / f"run{i}.wav").read_bytes())
    assert outputs[0] == outputs[1]                    # repeatable to the sample


def test_still_dancer_is_quieter_than_a_moving_one(default_bundle, tmp_path):
    rms = {}
    for name, energy in (("still", 0.0), ("moving", None)):
        sink = WavSink(tmp_path / f"{name}.wav", sample_rate=22050)
        _play(default_bundle, SyntheticDancer(seed=11, energy=energy, seconds=20), sink)
        audio, _ = read_wav(tmp_path / f"{name}.wav")
        rms[name] = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert rms["moving"] > 0.01
    assert 20 * np.log10(rms["moving"] / max(rms["still"], 1e-6)) > 12.0


def test_engine_plays_through_real_alsa_exactly(default_bundle, alsa_file_device, tmp_path):
    from device.audio.alsa import AlsaSink

    device, raw = alsa_file_device
    clip = real_video("aist_clip.mp4")
    _play(default_bundle, VideoFileCamera(clip, fps=30),
          AlsaSink(device, sample_rate=22050, period_size=256, periods=4))
    _play(default_bundle, VideoFileCamera(clip, fps=30),
          WavSink(tmp_path / "same.wav", sample_rate=22050))
    wav, _ = read_wav(tmp_path / "same.wav")
    assert np.array_equal(np.frombuffer(raw.read_bytes(), "<i2"), to_int16(wav))


def test_motion_window_slides_one_frame_at_a_time():
    window = MotionWindow(3, 2)
    for i in range(1, 6):
        view = window.push(np.full(2, i, np.float32))
    assert view[:, 0].tolist() == [3, 4, 5]           # oldest first, newest last


def test_swapping_models_crossfades_without_a_gap(default_bundle, tiny_bundle):
    engine = Engine(read_bundle(default_bundle), volume=1.0, crossfade_frames=10)
    dancer = SyntheticDancer(seed=5, seconds=6)
    hops = []
    for i in range(180):
        if i == 90:
            engine.swap(engine.prepare(read_bundle(tiny_bundle)))
        hops.append(engine.step(dancer.read().image).copy())
    assert all(len(h) == 735 for h in hops)            # one hop per frame, throughout
    assert engine.bundle.manifest.name == "tiny"
    audio = np.concatenate(hops)
    jumps = np.abs(np.diff(audio))
    around = jumps[89 * 735:101 * 735]
    assert around.max() <= 2 * np.percentile(jumps, 99.9) + 1e-3   # no click at the swap


def test_a_model_with_another_window_cannot_take_over_live(default_bundle):
    import dataclasses

    from device.errors import BundleError

    bundle = read_bundle(default_bundle)
    other = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest,
                                                                     window_frames=4))
    with pytest.raises(BundleError, match="cannot take over live"):
        Engine(bundle).prepare(other)


def _dance_stop_dance(engine, *, moving=60, still=150, again=30):
    """Hops for a dancer who moves, stands quite still (the same picture), moves again."""
    dancer = SyntheticDancer(seed=5, seconds=10)
    hops = []
    for _ in range(moving):
        image = dancer.read().image
        hops.append(engine.step(image).copy())
    hops += [engine.step(image).copy() for _ in range(still)]
    hops += [engine.step(dancer.read().image).copy() for _ in range(again)]
    return np.stack(hops)


def test_a_still_room_fades_out_and_the_first_move_brings_the_sound_back(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    plain = _dance_stop_dance(Engine(bundle, volume=1.0))
    quiet = _dance_stop_dance(Engine(bundle, volume=1.0, quiet_after_s=1.0))
    def db(hops):
        return 20 * np.log10(np.sqrt(np.mean(np.square(hops, dtype=np.float64))) + 1e-12)

    assert np.all(np.abs(plain[150:210]).max(axis=1) > 0)   # the model alone plays on
    # Unchanged for a second of stillness (30 frames from hop 60), then a fade of two
    # seconds to silence.
    np.testing.assert_array_equal(quiet[:89], plain[:89])
    assert db(quiet[89:119]) < db(plain[89:119]) - 1
    assert np.all(quiet[149:210] == 0) and np.any(quiet[148] != 0)
    # Moving again (three frames in a row, so a blink does not count): a ramp up over
    # one hop, then the model's own sound.
    assert not np.any(quiet[210:212])
    ramp = np.arange(1, 736, dtype=np.float32) / 735
    np.testing.assert_allclose(quiet[212], plain[212] * ramp, atol=1e-7)
    np.testing.assert_array_equal(quiet[213:], plain[213:])


def test_a_blink_neither_wakes_a_quiet_room_nor_restarts_its_count():
    gate = QuietWhenStill(1.0, fps=30, hop=4, fade_s=0.5)     # fades over 15 frames
    for moved in [True] * 5 + [False] * 20 + [True, True] + [False] * 8:
        gate.gains(moved)
    assert gate.still_frames == 30 and gate.level == 1 - 1 / 15   # the blink was counted
    for _ in range(20):
        gate.gains(False)
    assert gate.level == 0 and gate.quiet
    assert gate.gains(True) == gate.gains(True) == 0              # two frames: still quiet
    assert np.array_equal(gate.gains(True), np.float32([0.25, 0.5, 0.75, 1]))
    assert not gate.quiet and gate.still_frames == 0


def test_with_quiet_after_s_zero_a_still_room_plays_on(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    never = _dance_stop_dance(Engine(bundle, volume=1.0, quiet_after_s=0.0), still=400)
    np.testing.assert_array_equal(never, _dance_stop_dance(Engine(bundle, volume=1.0),
                                                           still=400))


def _at_db(db: float, seed: int) -> np.ndarray:
    """A segment of noise at ``db`` RMS dB re full scale."""
    noise = np.random.default_rng(seed).standard_normal(735)
    return (noise / np.sqrt(np.mean(noise ** 2)) * 10 ** (db / 20)).astype(np.float32)


def _db(segment: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(segment, dtype=np.float64))))


def test_a_pause_in_a_dance_plays_within_the_floor_and_a_still_room_falls_quiet():
    floor = Dynamics(12.0, fps=30)                    # the median of the last 300 segments
    dance = [_db(floor(_at_db(-20, i))) for i in range(300)]
    np.testing.assert_allclose(dance, -20, atol=1e-3)  # a dance is played as it is
    # A held pose of 3 s, where the model plays 30 dB under the dance: 12 dB under.
    pose = [_db(floor(_at_db(-50, i))) for i in range(90)]
    np.testing.assert_allclose(pose, -32, atol=1e-3)
    dance = [_db(floor(_at_db(-20, i))) for i in range(60)]
    np.testing.assert_allclose(dance, -20, atol=1e-3)
    # The dancer leaves: once stillness is most of the last 10 s (here 2 s on, with
    # the pose), the model's own still level plays (and QuietWhenStill fades it).
    room = [_db(floor(_at_db(-50, i))) for i in range(400)]
    np.testing.assert_allclose(room[:59], -32, atol=1e-3)
    np.testing.assert_allclose(room[-200:], -50, atol=1e-3)
    # A lift is at most 24 dB, and a new take starts from nothing heard.
    floor.reset()
    [floor(_at_db(-20, i)) for i in range(300)]
    assert abs(_db(floor(_at_db(-70, 0))) - (-70 + Dynamics.MOST_DB)) < 1e-3


def test_a_narrowed_swing_follows_the_dance_by_half_around_its_recent_level():
    dynamics = Dynamics(18.0, 0.5, fps=30)
    swing = [0, 4, -4] * 100
    dance = [_db(dynamics(_at_db(-20 + swing[i], i))) for i in range(300)]
    # A dance swinging 4 dB either side of its median plays 2 dB either side.
    np.testing.assert_allclose(dance[-200:], [-20 + s / 2 for s in swing[-200:]], atol=1e-3)
    assert _db(dynamics(_at_db(-8, 0))) == pytest.approx(-14, abs=1e-3)   # a burst: louder, by half
    # A held pose 20 dB under plays 10 dB under; 50 dB under, the floor's 18 dB
    # would take a lift of 32 dB: it gets the most, 24.
    assert _db(dynamics(_at_db(-40, 1))) == pytest.approx(-30, abs=1e-3)
    assert _db(dynamics(_at_db(-70, 2))) == pytest.approx(-70 + Dynamics.MOST_DB, abs=1e-3)
    # A burst far over the median is turned down by at most 6 dB.
    assert _db(dynamics(_at_db(0, 3))) == pytest.approx(-Dynamics.MOST_CUT_DB, abs=1e-3)


def test_a_dancer_coming_into_a_still_room_is_heard_at_once():
    dynamics = Dynamics(18.0, 0.5, fps=30)
    [dynamics(_at_db(-70, i)) for i in range(400)]      # a still room: its median is -70
    dance = [_db(dynamics(_at_db(-20, i))) for i in range(200)]
    np.testing.assert_allclose(dance[:150], -20 - Dynamics.MOST_CUT_DB, atol=1e-3)
    np.testing.assert_allclose(dance[151:], -20, atol=1e-3)   # the median has caught up


def test_a_notes_voice_keeps_its_own_swing_and_the_pause_floor():
    from device.notes import NotesVoice

    dynamics = Dynamics(18.0, 0.5, fps=30)
    [dynamics(_at_db(-20, i), NotesVoice) for i in range(300)]
    assert _db(dynamics(_at_db(-8, 0), NotesVoice)) == pytest.approx(-8, abs=1e-3)
    assert _db(dynamics(_at_db(-50, 1), NotesVoice)) == pytest.approx(-38, abs=1e-3)


def test_evaluation_plays_the_level_dynamics_the_box_plays_by_default():
    from device.config import MotionConfig
    from device.engine import DYNAMICS_DEPTH, PAUSE_FLOOR_DB, STRIKE

    assert MotionConfig().pause_floor_db == PAUSE_FLOOR_DB
    assert MotionConfig().dynamics_depth == DYNAMICS_DEPTH
    assert MotionConfig().strike == STRIKE


def test_with_pause_floor_db_zero_and_depth_one_the_model_s_level_plays_as_it_is():
    floor = Dynamics(0.0, 1.0, fps=30)
    [floor(_at_db(-20, i)) for i in range(300)]
    pose = _at_db(-50, 0)
    assert floor(pose) is pose
    # What it played is still heard: a depth set now (`ctl dynamics`) narrows around it.
    floor.depth = 0.5
    assert _db(floor(_at_db(-10, 1))) == pytest.approx(-15, abs=1e-3)


def test_the_room_settings_in_device_yaml_reach_the_engine(tiny_bundle):
    from device.config import DeviceConfig, with_overrides

    cfg = with_overrides(DeviceConfig(), {"motion.sensitivity": 2.5, "motion.pause_floor_db": 0.0,
                                          "motion.quiet_after_s": 4.0,
                                          "motion.dynamics_depth": 0.8,
                                          "motion.strike": 2.0})
    engine = Engine.configured(read_bundle(tiny_bundle), cfg, volume=0.5)
    assert engine.gain.sensitivity == 2.5
    assert (engine.dynamics.floor_db, engine.dynamics.depth) == (0, 0.8)
    assert engine.strikes.strike == 2.0
    assert engine.quiet.after_frames == 4 * read_bundle(tiny_bundle).manifest.fps
    assert engine.volume == np.float32(0.5)


def _strikes(strike: float = 1.0) -> tuple[Strikes, int, int]:
    from device.motiongram import MotionGainParams, MotiongramParams

    params = MotiongramParams()
    hop, segment = 735, 2205
    return (Strikes(strike, motiongram=params, gain=MotionGainParams(), sample_rate=22050,
                    hop=hop, segment=segment), params.features, segment)


def _windows(amounts, features: int, frames: int = 8):
    """Motion windows (every feature at the frame's amount) sliding over ``amounts``."""
    padded = np.concatenate([np.zeros(frames), amounts])
    for i in range(len(amounts)):
        yield np.repeat(padded[i + 1:i + 1 + frames, None], features, axis=1).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_a_stop_between_moves_strikes_the_sound_at_its_level_and_is_gone_within_0_1_s():
    strikes, features, segment = _strikes(1.0)
    # A move, a stop at frame 5 (a local minimum of the motion), another move.
    dance = [0.004, 0.012, 0.02, 0.012, 0.006, 0.004, 0.008, 0.016] + [0.02] * 6
    sound = np.sin(np.arange(segment) * 0.05).astype(np.float32) * 0.1
    added = [strikes(sound, window) - sound for window in _windows(dance, features)]
    struck = [i for i, a in enumerate(added) if np.any(a)]
    # Known two frames on: from the segment of frame 7, for 0.09 s (frames 7 to 9).
    assert struck == [7, 8, 9] and strikes.count == 1
    # Its first 5 ms as loud as the sound; then it decays, and is one burst across
    # segments (each segment a hop on in it).
    first = added[7]
    assert 0.5 * _rms(sound) < _rms(first[:110]) < 1.5 * _rms(sound)
    assert _rms(first[:330]) > 4 * _rms(first[735:1065])
    np.testing.assert_allclose(added[8][:-735], first[735:], atol=1e-7)
    # Set softer while playing (`ctl strike 0.5`): the strike is half as loud.
    strikes.strike = 0.5
    strikes.reset()
    softer = [strikes(sound, window) - sound for window in _windows(dance, features)]
    np.testing.assert_allclose(softer[7], first / 2, atol=1e-7)


def test_no_strike_in_a_still_room_for_a_notes_voice_or_at_zero():
    from device.notes import NotesVoice

    steady = np.full(2205, 0.1, np.float32)
    dance = [0.004, 0.012, 0.02, 0.012, 0.006, 0.004, 0.008, 0.016, 0.02]
    flicker = [d / 20 for d in dance]    # the same shape, never a quarter of the reference
    for strike, amounts, voice in ((1.0, flicker, None), (1.0, dance, NotesVoice),
                                   (0.0, dance, None)):
        strikes, features, _ = _strikes(strike)
        assert all(strikes(steady, w, voice) is steady for w in _windows(amounts, features))
        assert strikes.count == 0
