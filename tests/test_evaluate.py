"""The evaluation: its metrics on signals whose answers are known, the baselines,
and the command end to end on synthetic takes and on real dance data.

The real data comes from ../shared/realdata (see SOURCES.md); those tests skip,
saying why, where it is absent. The committed factory model was trained on the
synthetic demo, so on real dance it need not beat the baselines: those tests check
the output's form, not its scores. The in-domain test (unseen synthetic takes)
checks that the model, run through the box's runtime on aligned windows, does
follow the sound where it can.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from device.bundle import read_bundle
from device.errors import DanceSamplerError
from device.session import SessionWriter
from tests.conftest import DEFAULT_BUNDLE, ROOT, real_video
from train_host import evaluate as ev

SR = 22050
SEGMENT = 2205


def cli(*argv: str) -> int:
    """``python -m train_host evaluate …`` in this process, through ``add_commands``."""
    parser = argparse.ArgumentParser(prog="python -m train_host")
    ev.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def noise_segments(n: int, seed: int, levels=None) -> np.ndarray:
    """``n`` segments of white noise, each at its own level (default: rising over 30 dB)."""
    rng = np.random.default_rng(seed)
    levels = np.geomspace(0.01, 0.3, n) if levels is None else np.asarray(levels)
    return (rng.standard_normal((n, SEGMENT)) * levels[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def spectra() -> ev.Spectra:
    return ev.Spectra(SR, SEGMENT)


# ---- metrics on known signals --------------------------------------------------------


def test_identical_audio_is_at_distance_zero_and_fully_correlated(spectra):
    audio = noise_segments(20, seed=1)
    assert np.all(ev.log_mel_distance(audio, audio.copy(), spectra) == 0.0)
    assert ev.pearson(ev.loudness_db(audio), ev.loudness_db(audio.copy())) == pytest.approx(1.0)


def test_scaled_copy_keeps_loudness_correlation_but_is_6_db_away(spectra):
    audio = noise_segments(20, seed=3, levels=np.geomspace(0.1, 0.9, 20))
    quieter = audio * 0.5
    assert ev.pearson(ev.loudness_db(quieter), ev.loudness_db(audio)) == pytest.approx(1.0)
    # Noise this loud is above the -80 dB floor in every band and frame: half the
    # amplitude is 20 log10(2) = 6.02 dB lower everywhere.
    assert spectra.log_mel(quieter).min() > ev.FLOOR_DB
    distance = ev.log_mel_distance(quieter, audio, spectra)
    assert distance == pytest.approx(np.full(20, 20 * math.log10(2)), abs=1e-3)


def test_the_matched_distance_takes_out_one_overall_level_and_nothing_else(spectra):
    """A song's mastering level is not in the dance: at the song's own level a copy
    6 dB quieter is at no distance, and other noise 20 dB quieter is as far as the
    same noise at the same level, no nearer."""
    levels = np.geomspace(0.1, 0.9, 20)
    audio = noise_segments(20, seed=3, levels=levels)
    true = spectra.log_mel(audio)
    assert ev.matched_distance(spectra.log_mel(audio * 0.5) - true) == pytest.approx(0, abs=1e-3)
    other = noise_segments(20, seed=4, levels=levels)
    same_level = spectra.log_mel(other) - true
    quieter = spectra.log_mel(other * 0.1) - true
    assert np.abs(quieter).mean() > 15.0
    assert ev.matched_distance(quieter) == pytest.approx(ev.matched_distance(same_level), abs=0.05)
    assert 1.0 < ev.matched_distance(same_level) <= np.abs(same_level).mean()
    # A level that moves with time is not taken out: only one shift per take.
    rising = spectra.log_mel(audio * np.geomspace(0.1, 1, 20)[:, None].astype(np.float32)) - true
    assert ev.matched_distance(rising) > 4.0


def test_unrelated_noise_is_at_a_distance(spectra):
    # Same levels, different noise: the spectra differ only by chance, but they do.
    a, b = noise_segments(10, seed=3), noise_segments(10, seed=4)
    assert np.all(ev.log_mel_distance(a, b, spectra) > 1.0)
    # Noise 20 dB or more below the other is at least that far.
    quiet = noise_segments(10, seed=5, levels=np.full(10, 1e-3))
    assert np.all(ev.log_mel_distance(quiet, a, spectra) > 15.0)


def test_silence_against_silence_is_zero_not_minus_infinity(spectra):
    silence = np.zeros((3, SEGMENT), np.float32)
    assert np.all(ev.log_mel_distance(silence, silence, spectra) == 0.0)
    assert np.all(ev.loudness_db(silence) == ev.FLOOR_DB)
    # Below the floor counts as the floor: no difference from silence either.
    assert np.all(ev.log_mel_distance(silence + 1e-6, silence, spectra) == 0.0)


def test_constant_loudness_has_no_correlation():
    segment = noise_segments(1, seed=6)[0]
    constant = ev.loudness_db(np.tile(segment, (12, 1)))
    varying = ev.loudness_db(noise_segments(12, seed=7))
    assert ev.pearson(constant, varying) is None
    assert ev.pearson(varying, constant) is None
    assert ev.pearson([1.0], [2.0]) is None
    assert ev.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_loudness_is_rms_in_db_full_scale():
    t = np.arange(SEGMENT) / SR
    square = np.sign(np.sin(2 * np.pi * 100 * t) + 1e-9)
    sine = np.sin(2 * np.pi * 1000 * t)
    assert ev.loudness_db(square[None])[0] == pytest.approx(0.0, abs=1e-6)
    assert ev.loudness_db(sine[None])[0] == pytest.approx(-3.01, abs=0.01)


def tone_steps(freqs, seconds_each: float = 0.5, level: float = 0.3) -> np.ndarray:
    """A sine that holds each frequency for ``seconds_each``, phase continuous."""
    f = np.repeat(np.asarray(freqs, np.float64), round(seconds_each * SR))
    return (level * np.sin(2 * np.pi * np.cumsum(f) / SR)).astype(np.float32)


def test_chroma_movement_follows_pitch_steps():
    # A, C, A, C...: every block lands on another pitch class (0.5 s blocks, one note each).
    stepping = tone_steps([440.0, 523.25] * 4)
    steady = tone_steps([440.0] * 8)
    moving = ev.chroma_movement(stepping, SR)
    assert moving.shape == (8,) and np.isnan(moving[0])
    assert np.all(moving[1:] > 0.8)
    still = ev.chroma_movement(steady, SR)
    assert np.all(still[1:] < 0.05)
    # An octave is the same pitch class; from 110 Hz up a semitone step is resolved.
    assert np.all(ev.chroma_movement(tone_steps([110.0, 220.0] * 3), SR)[1:] < 0.1)
    assert np.all(ev.chroma_movement(tone_steps([110.0, 116.54] * 3), SR)[1:] > 0.5)
    # At 55 Hz the window's main lobe spans several semitones: only partly resolved,
    # but a semitone still moves more than an octave.
    semitone = ev.chroma_movement(tone_steps([55.0, 58.27] * 3), SR)[1:]
    octave = ev.chroma_movement(tone_steps([55.0, 110.0] * 3), SR)[1:]
    assert semitone.min() > octave.max()
    # Silence has no pitch: undefined, not "no movement".
    quiet = ev.chroma_movement(np.concatenate([stepping[:SR], np.zeros(2 * SR, np.float32)]), SR)
    assert not np.isnan(quiet[1]) and np.all(np.isnan(quiet[3:]))   # block 2 still hears the tail


def test_chroma_movement_agreement():
    rng = np.random.default_rng(11)
    notes = rng.choice([220.0, 246.9, 261.6, 293.7, 329.6, 392.0], 24)
    notes[::3] = notes[1::3]              # some blocks stay, so movement varies
    true = tone_steps(notes)
    corr, ratio = ev.chroma_movement_agreement(true, true.copy(), SR)
    assert corr == pytest.approx(1.0) and ratio == pytest.approx(1.0)
    # Another melody with the same rhythm of changes, at another level: still in step.
    other = tone_steps(notes * 2 ** (5 / 12), level=0.05)
    corr, ratio = ev.chroma_movement_agreement(other, true, SR)
    assert corr > 0.9 and ratio == pytest.approx(1.0, abs=0.1)
    # A held note does not move: ratio near 0, correlation undefined or weak.
    corr, ratio = ev.chroma_movement_agreement(tone_steps([440.0] * 24), true, SR)
    assert ratio < 0.1 and (corr is None or abs(corr) < 0.5)
    # Plain arrays of different lengths: the longer is cut.
    corr, _ = ev.chroma_movement_agreement(true[:-1000], true, SR)
    assert corr == pytest.approx(1.0)


# ---- beats, distributions, levels ----------------------------------------------------------


FPS, HOP = 30, SR // 30


def clicks(frames: int, at) -> np.ndarray:
    """Quiet noise with a loud 10 ms noise burst at the start of each frame in ``at``."""
    rng = np.random.default_rng(12)
    audio = 0.001 * rng.standard_normal(frames * HOP)
    for frame in at:
        audio[frame * HOP:frame * HOP + 220] += 0.5 * rng.standard_normal(220)
    return audio.astype(np.float32)


def test_onsets_are_found_on_the_frame_of_each_click():
    at = np.arange(10, 290, 14)
    assert np.array_equal(ev.onsets(clicks(300, at), SR, HOP), at)
    # Steady sound has no onsets, however its noise flickers.
    assert len(ev.onsets(clicks(300, []), SR, HOP)) == 0
    assert len(ev.onsets(np.zeros(300 * HOP, np.float32), SR, HOP)) == 0


def test_motion_beats_are_the_pauses_of_the_smoothed_motion():
    t = np.arange(300)
    motion = 1.1 + np.cos(2 * np.pi * t / 20)           # still every 20 frames, from frame 10
    motion += 0.05 * np.random.default_rng(13).standard_normal(300)
    beats = ev.motion_beats(motion)
    assert np.array_equal(beats, np.arange(10, 300, 20))


def test_beat_align_score_is_one_on_the_beat_and_low_ten_frames_off():
    beats = np.arange(10, 300, 20)
    assert ev.beat_align_score(beats, beats) == pytest.approx(1.0)
    assert ev.beat_align_score(beats, beats + 10) == pytest.approx(math.exp(-100 / 18))
    assert ev.beat_align_score(beats, beats + 10) < 0.01
    assert ev.beat_align_score(beats, beats + 3) == pytest.approx(math.exp(-0.5))
    assert ev.beat_align_score(beats, []) == 0.0
    assert ev.beat_align_score([], beats) is None
    # End to end: clicks on the pauses of the motion align; clicks between them do not.
    motion = 1.1 + np.cos(2 * np.pi * np.arange(300) / 20)
    on = ev.onsets(clicks(300, np.arange(10, 290, 20)), SR, HOP)
    off = ev.onsets(clicks(300, np.arange(20, 290, 20)), SR, HOP)
    assert ev.beat_align_score(ev.motion_beats(motion), on) > 0.9
    assert ev.beat_align_score(ev.motion_beats(motion), off) < 0.01


def test_beat_hit_and_cover_use_100_ms():
    true = np.arange(10, 300, 20)
    assert ev.beat_hit_cover(true, true, FPS) == (1.0, 1.0)
    assert ev.beat_hit_cover(true + 3, true, FPS) == (1.0, 1.0)     # 100 ms: a hit
    assert ev.beat_hit_cover(true + 4, true, FPS) == (0.0, 1.0)     # 133 ms: a miss
    hit, cover = ev.beat_hit_cover(true[::2], true, FPS)
    assert hit == pytest.approx(8 / 15) and cover == pytest.approx(8 / 15)
    hit, cover = ev.beat_hit_cover(np.arange(300), true, FPS)       # onsets everywhere
    assert hit == 1.0 and cover == pytest.approx(20.0)
    assert ev.beat_hit_cover(true, [], FPS) == (None, None)
    assert ev.beat_hit_cover([], true, FPS) == (0.0, 0.0)


def test_chance_shifts_spread_from_a_second_to_a_second_short_of_the_take():
    shifts = ev.chance_shifts(900, FPS)
    assert len(shifts) == ev.CHANCE_SHIFTS
    assert shifts[0] == FPS and shifts[-1] == 900 - FPS
    assert np.all(np.diff(shifts) > 0)
    assert len(ev.chance_shifts(2 * FPS, FPS)) == 0      # too short to shift past a beat


def test_beats_over_chance_credit_the_timing_of_onsets_not_their_number():
    frames = 900
    beats = np.cumsum(np.random.default_rng(3).integers(12, 40, 40))
    beats = beats[beats < frames]

    def align(on):
        return ev.beat_align_score(beats, on)

    # Onsets on the dancer's irregular stops: far above the same onsets shifted.
    assert ev.over_chance(align, beats, frames, FPS) > 0.5
    # Onsets in every frame align perfectly, and shifted just as well: no credit.
    assert align(np.arange(frames)) == 1.0
    assert ev.over_chance(align, np.arange(frames), frames, FPS) == pytest.approx(0.0)
    # Dense onsets unrelated to the beats score high, and nothing over chance.
    dense = np.arange(5, frames, 7)
    assert align(dense) > 0.7
    assert abs(ev.over_chance(align, dense, frames, FPS)) < 0.05
    # The hit rate against the true onsets, likewise.
    hit = ev.over_chance(lambda on: ev.beat_hit_cover(on, beats, FPS)[0], beats, frames, FPS)
    assert hit > 0.5
    assert ev.over_chance(align, [], frames, FPS) == 0.0
    assert ev.over_chance(align, beats, 2 * FPS, FPS) is None
    assert ev.over_chance(lambda on: ev.beat_align_score([], on), beats, frames, FPS) is None


def test_frechet_distance(spectra):
    rng = np.random.default_rng(14)
    frames = spectra.log_mel(noise_segments(60, seed=15)).reshape(-1, ev.N_MELS)
    fit = ev.GaussianFit(ev.N_MELS)
    for part in np.array_split(frames, 7):     # accumulated a batch at a time
        fit.add(part)
    mean, cov = fit.mean_cov()
    assert np.allclose(mean, frames.mean(axis=0)) and np.allclose(cov, np.cov(frames.T))
    assert ev.frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-6)
    # A shift of every band by 6 dB: 64 * 36 dB^2 and nothing else.
    assert ev.frechet_distance(mean + 6, cov, mean, cov) == pytest.approx(64 * 36, rel=1e-6)
    # Known closed form for diagonal covariances: sum (s1 - s2)^2.
    s1, s2 = rng.uniform(1, 3, 5), rng.uniform(1, 3, 5)
    assert ev.frechet_distance(np.zeros(5), np.diag(s1 ** 2), np.zeros(5), np.diag(s2 ** 2)) == \
        pytest.approx(((s1 - s2) ** 2).sum())
    # Non-commuting covariances: tr sqrt(S1 S2) via sqrt(S1) S2 sqrt(S1), checked by hand.
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    c1, c2 = a @ a.T + np.eye(4), b @ b.T + np.eye(4)
    w, v = np.linalg.eigh(c1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    cross = np.sqrt(np.linalg.eigvals(root @ c2 @ root).real).sum()
    assert ev.frechet_distance(np.zeros(4), c1, np.ones(4), c2) == \
        pytest.approx(4 + np.trace(c1) + np.trace(c2) - 2 * cross)


def test_spread_ratio_says_how_far_the_frames_vary_against_the_music(spectra):
    frames = spectra.log_mel(noise_segments(60, seed=16)).reshape(-1, ev.N_MELS)
    cov = np.cov(frames.T)
    assert ev.spread_ratio(cov, cov) == pytest.approx(1.0)
    # The same frames drawn halfway to their mean: half the spread.
    half = frames.mean(axis=0) + 0.5 * (frames - frames.mean(axis=0))
    assert ev.spread_ratio(np.cov(half.T), cov) == pytest.approx(0.5)
    assert ev.spread_ratio(np.zeros_like(cov), cov) == 0.0     # one unchanging spectrum
    assert ev.spread_ratio(cov, np.zeros_like(cov)) is None    # music that never varies


def test_level_error_removes_a_constant_offset():
    true = np.linspace(-40, -10, 50)
    offset, error, used = ev.level_offset_error(true - 12.0, true)
    assert offset == pytest.approx(-12.0) and error == pytest.approx(0.0) and used == 50
    wobble = np.where(np.arange(50) % 2, 3.0, -3.0)
    offset, error, _ = ev.level_offset_error(true + 5 + wobble, true)
    assert abs(offset - 5) <= 3 and error == pytest.approx(3.0, abs=3.0)
    # Silence in the true audio (a gap in the song) counts for neither.
    gap = true.copy()
    gap[:10] = ev.FLOOR_DB
    offset, error, used = ev.level_offset_error(np.full(50, ev.FLOOR_DB), gap)
    assert used == 40 and offset < -30
    assert ev.level_offset_error(true, np.full(50, ev.FLOOR_DB)) == (None, None, 0)


def test_takes_pool_by_their_weights():
    def take(value, weight, ceiling):
        metrics = {s: dict.fromkeys(ev.METRICS, value) for s in ev.SYSTEMS}
        return {"metrics": metrics, "reference": dict.fromkeys(ev.REFERENCE, ceiling),
                "weights": {w: weight for w in set(ev.WEIGHTS.values())}}

    metrics, reference = ev.pool_takes([take(0.2, 1, 0.5), take(0.6, 3, None)])
    assert metrics["model"]["beat_hit"] == pytest.approx(0.5)
    assert reference["loudness_ceiling"] == pytest.approx(0.5)
    assert metrics["model"]["loudness_ceiling_share"] == pytest.approx(1.0)
    metrics, _ = ev.pool_takes([take(0.2, 1, 0.05)])
    assert metrics["model"]["loudness_ceiling_share"] is None   # too low a ceiling


# ---- the mel filterbank ---------------------------------------------------------------


def test_mel_band_edges_increase_and_span_the_band():
    edges = ev.mel_band_edges(SR)
    assert len(edges) == ev.N_MELS + 2
    assert np.all(np.diff(edges) > 0)
    assert edges[0] == pytest.approx(0.0) and edges[-1] == pytest.approx(SR / 2)
    # Evenly spaced in mels, so the bands widen in Hz.
    assert np.diff(edges)[-1] > 10 * np.diff(edges)[0]


def test_mel_triangles_sum_to_one_and_none_is_empty():
    n_fft, hop = ev.stft_size(SR, SEGMENT)
    assert (n_fft, hop) == (512, 128)
    bank = ev.mel_filterbank(SR, n_fft)
    assert bank.shape == (ev.N_MELS, n_fft // 2 + 1)
    assert bank.min() >= 0.0 and bank.max() <= 1.0
    edges = ev.mel_band_edges(SR)
    freqs = np.arange(n_fft // 2 + 1) * SR / n_fft
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    assert np.allclose(bank[:, inside].sum(axis=0), 1.0)
    assert np.all(bank.sum(axis=1) > 0), "a band catches no FFT bin"
    # Each band peaks at (the bin nearest) its own centre, in order.
    assert np.all(np.diff(bank.argmax(axis=1)) >= 0)


def test_full_scale_tone_is_near_0_db_in_its_band(spectra):
    freq = 1000.0
    t = np.arange(SEGMENT) / SR
    level = spectra.log_mel(np.sin(2 * np.pi * freq * t)[None])[0].mean(axis=0)
    centres = ev.mel_band_edges(SR)[1:-1]
    assert abs(int(level.argmax()) - int(np.abs(centres - freq).argmin())) <= 1
    assert -3.0 < level.max() < 2.0


def test_stft_size_fits_short_segments_and_other_rates():
    assert ev.stft_size(44100, 4410) == (1024, 256)
    n_fft, hop = ev.stft_size(8000, 160)
    assert n_fft <= 160 and hop == n_fft // 4
    spectra = ev.Spectra(8000, 160)
    assert spectra.log_mel(np.zeros((2, 160))).shape == (2, spectra.frames(160), ev.N_MELS)


# ---- baselines and similarity -----------------------------------------------------------


def test_nearest_neighbour_finds_the_exact_training_window():
    rng = np.random.default_rng(8)
    train = rng.random((300, 8, 112), dtype=np.float32)
    picks = np.array([0, 63, 64, 65, 199, 299, 150])
    # Small blocks, so matches lie in different blocks and at their edges.
    assert np.array_equal(ev.nearest_windows(train[picks], train, chunk=64), picks)
    # Near (not equal) windows: the same answer as a brute-force search.
    query = train[picks] + rng.normal(0, 0.01, train[picks].shape).astype(np.float32)
    brute = ((query[:, None] - train[None]) ** 2).sum(axis=(2, 3)).argmin(axis=1)
    assert np.array_equal(ev.nearest_windows(query, train, chunk=64), brute)


def test_mean_spectrum_segment_has_the_training_spectrum(spectra):
    t = np.arange(SEGMENT) / SR
    rng = np.random.default_rng(9)
    # Training sound: a 440 Hz tone over quiet noise, at varying levels.
    train = (np.sin(2 * np.pi * 440 * t)[None] * rng.uniform(0.1, 0.5, (40, 1))
             + 0.01 * rng.standard_normal((40, SEGMENT))).astype(np.float32)
    segment = ev.mean_spectrum_segment(train, spectra, seed=1)
    assert segment.shape == (SEGMENT,) and segment.dtype == np.float32
    assert np.array_equal(segment, ev.mean_spectrum_segment(train, spectra, seed=1))
    made = spectra.log_mel(segment[None])[0].mean(axis=0)
    wanted = spectra.log_mel(train).mean(axis=(0, 1))
    assert int(made.argmax()) == int(wanted.argmax())
    assert ev.pearson(made, wanted) > 0.9


def test_similarity_correlation():
    rng = np.random.default_rng(10)
    motion = rng.random((40, 16))
    same = ev.self_similarity(motion)
    assert np.allclose(np.diag(same), 1.0)
    assert ev.similarity_correlation(same, ev.self_similarity(motion * 3 + 0.0)) == \
        pytest.approx(1.0)
    # A system that always makes the same sound has no structure: undefined.
    constant = ev.self_similarity(np.tile(rng.random(64), (40, 1)))
    assert np.all(constant == 0)
    assert ev.similarity_correlation(same, constant) is None
    unrelated = ev.self_similarity(rng.random((40, 16)))
    assert abs(ev.similarity_correlation(same, unrelated)) < 0.3


# ---- end to end ----------------------------------------------------------------------------


def write_demo_take(root: Path, seconds: float, seed: int) -> Path:
    """A synthetic demo take, recorded as the box would: the factory model's own world."""
    from train_host.demo_data import make_demo_take

    take = make_demo_take(seconds, seed=seed)
    writer = SessionWriter(root, label=f"demo{seed}", fps=take.fps, sample_rate=take.sample_rate,
                           audio_source="test", min_free_bytes=0,
                           started=datetime(2026, 1, 1, 0, seed % 60, tzinfo=timezone.utc))
    for i, frame in enumerate(take.frames):
        writer.add_frame(frame, i / take.fps)
    writer.add_audio(take.audio)
    writer.close()
    return writer.path


def check_schema(metrics: dict) -> None:
    reference = metrics.pop("reference", None)
    if reference is not None:   # the command's JSON: the true audio's own values too
        assert sorted(reference) == sorted(ev.REFERENCE)
        for take in metrics.pop("takes"):   # and each take's own
            assert sorted(take["reference"]) == sorted(ev.REFERENCE)
            check_schema(take["metrics"])
    assert list(metrics) == list(ev.SYSTEMS)
    for system, values in metrics.items():
        assert sorted(values) == sorted(ev.METRICS), system
        for metric, value in values.items():
            assert value is None or (isinstance(value, float) and math.isfinite(value)), \
                (system, metric, value)


def test_model_follows_the_sound_on_unseen_synthetic_takes(tmp_path):
    # The factory model trained on demo seeds 7..16; seed 101 is a dance it never saw.
    write_demo_take(tmp_path / "eval", 20.0, seed=101)
    write_demo_take(tmp_path / "train", 20.0, seed=7)
    metrics = ev.evaluate(DEFAULT_BUNDLE, [tmp_path / "eval"], [tmp_path / "train"])
    check_schema(metrics)
    model, random = metrics["model"], metrics["baseline_random"]
    assert model["loudness_corr"] > 0.3 > abs(random["loudness_corr"])
    assert model["motion_loudness_corr"] > 0.3
    assert model["similarity_corr"] > random["similarity_corr"] + 0.2
    assert metrics["baseline_mean"]["loudness_corr"] is None   # one segment, always
    # Seeded: the same run gives the same numbers.
    assert ev.evaluate(DEFAULT_BUNDLE, [tmp_path / "eval"], [tmp_path / "train"]) == metrics


def test_several_takes_are_scored_each_and_pooled(tmp_path, capsys):
    # A developer scoring a model on new takes sees each take beside the baselines.
    names = [write_demo_take(tmp_path / "eval", 6.0, seed=seed).name for seed in (101, 102)]
    write_demo_take(tmp_path / "train", 6.0, seed=7)
    argv = (str(DEFAULT_BUNDLE), "--data", str(tmp_path / "eval"), "--train-data",
            str(tmp_path / "train"), "--cache", "none")
    assert cli("evaluate", *argv, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    takes = result["takes"]
    assert [take["take"] for take in takes] == sorted(names)
    check_schema(result)
    # The pooled log-mel distance is the mean over every segment of both takes.
    distances = [take["metrics"]["model"]["log_mel_distance_db"] for take in takes]
    assert result["model"]["log_mel_distance_db"] == pytest.approx(
        np.average(distances, weights=[take["segments"] for take in takes]), abs=1e-3)
    assert distances[0] != distances[1]
    # A constant sound reads as less varied than real training segments.
    assert result["baseline_mean"]["log_mel_spread_ratio"] < \
        result["baseline_nearest"]["log_mel_spread_ratio"]

    assert cli("evaluate", *argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("take ")))
    assert lines[header].split() == ["take", *[h for h, _, _ in ev.TAKE_COLUMNS]]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:header + 4]}
    assert list(rows) == [*sorted(names), "pooled"]
    for name, take in zip(sorted(names), takes):
        assert float(rows[name][0]) == pytest.approx(
            take["metrics"]["model"]["log_mel_distance_db"], abs=0.01)
        assert float(rows[name][1]) == pytest.approx(
            take["metrics"]["baseline_mean"]["log_mel_distance_db"], abs=0.01)
    assert float(rows["pooled"][0]) == pytest.approx(result["model"]["log_mel_distance_db"],
                                                     abs=0.01)
    closer = sum(take["metrics"]["model"]["log_mel_distance_db"]
                 < take["metrics"]["baseline_mean"]["log_mel_distance_db"] for take in takes)
    assert f"closer than the mean spectrum in {closer} take(s) of 2" in lines[header + 5]


def test_refusals_name_what_is_wrong(tmp_path):
    with pytest.raises(DanceSamplerError, match="no such bundle"):
        ev.evaluate(tmp_path / "missing.dsb", [tmp_path], [tmp_path])
    (tmp_path / "empty").mkdir()
    take = write_demo_take(tmp_path / "takes", 2.0, seed=3)
    with pytest.raises(ev.EvaluationError, match="no takes in"):
        ev.evaluate(DEFAULT_BUNDLE, [tmp_path / "empty"], [tmp_path / "takes"])
    # The factory model was trained on the synthetic demo: it names no training takes.
    assert "roots" not in read_bundle(DEFAULT_BUNDLE).manifest.training["data"]
    with pytest.raises(ev.EvaluationError, match="--train-data"):
        ev.evaluate(DEFAULT_BUNDLE, [take])
    small = tmp_path / "small"
    writer = SessionWriter(small, label="small", fps=30, width=32, height=24, sample_rate=SR,
                           audio_source="test", min_free_bytes=0)
    for i in range(30):
        writer.add_frame(np.full((24, 32), i, np.uint8), i / 30)
    writer.add_audio(np.zeros(SR, np.float32))
    writer.close()
    with pytest.raises(ev.EvaluationError, match="32x24 .* trained on 64x48"):
        ev.evaluate(DEFAULT_BUNDLE, [small], [take])


@pytest.fixture(scope="module")
def real_takes(tmp_path_factory) -> dict[str, Path]:
    """aist_clip as the evaluation take and phone_dance as the training take, imported once."""
    pytest.importorskip("av")
    from train_host.importers import import_video

    root = tmp_path_factory.mktemp("real")
    import_video(real_video("aist_clip.mp4"), root / "eval", sample_rate=SR)
    import_video(real_video("phone_dance.mp4"), root / "train", sample_rate=SR)
    return {"eval": root / "eval", "train": root / "train", "root": root}


def test_json_and_report_on_real_dance(real_takes, capsys):
    report = real_takes["root"] / "report"
    assert cli("evaluate", str(DEFAULT_BUNDLE), "--data", str(real_takes["eval"]),
               "--train-data", str(real_takes["train"]), "--cache", "none", "--json",
               "--report", str(report)) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)   # one JSON object and nothing else on stdout
    check_schema(metrics)
    assert metrics["baseline_mean"]["loudness_corr"] is None

    page = (report / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert any(name.startswith("loudness_") for name in images)
    assert {"spectrograms.png", "self_similarity.png"} <= set(images)
    for name in images:
        assert (report / name).stat().st_size > 1000, name
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "default" in page and "synthetic demo" in page   # the bundle and its training
    assert "aist_clip" in page                             # the evaluation data


def test_table_says_who_wins_each_metric(real_takes, capsys):
    assert cli("evaluate", str(DEFAULT_BUNDLE), "--data", str(real_takes["eval"]),
               "--train-data", str(real_takes["train"]), "--cache", "none") == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header == ["metric", *ev.SYSTEMS, "true_audio", "best"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}
    for metric in ev.METRICS:
        assert len(rows[metric]) == len(ev.SYSTEMS) + 2, metric
    assert rows["loudness_corr"][1] == "n/a"          # baseline_mean has no dynamics
    assert rows["loudness_corr"][4] not in ("-", "n/a")   # the ceiling beside it
    assert rows["level_offset_db"][-1] == "-"         # reported, never won
    short = {s.replace("baseline_", "") for s in ev.SYSTEMS}
    for metric in ev.METRICS:
        assert all(w in short | {"none", "-"} for w in rows[metric][-1].split(",")), metric
    assert "mean" not in rows["loudness_corr"][-1]    # an undefined correlation never wins


def test_command_line_when_wired(tmp_path):
    main = (ROOT / "train_host" / "__main__.py").read_text()
    if "evaluate" not in main:
        pytest.skip("train_host/__main__.py does not call train_host.evaluate.add_commands yet")
    result = subprocess.run([sys.executable, "-m", "train_host", "evaluate",
                             str(tmp_path / "missing.dsb"), "--data", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no such bundle" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
