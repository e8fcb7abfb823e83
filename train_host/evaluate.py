"""Evaluation: how well a bundle's int8 model makes the sound of motion it never saw.

Every window of held-out takes (``--data``) goes through the bundle's own
performer graph, run by the box's runtime (``device.runtime.Performer``), and the
segment it makes is compared with the segment that really sounded there. Three
baselines that need no model, made from the training takes, get the same
measures, so a number means something: the mean spectrum of the training sound
(``baseline_mean``), a random training segment (``baseline_random``), and the
sound of the training window whose motion is nearest (``baseline_nearest``).

The metrics are defined in docs/evaluation.md; in short, per system: the log-mel
distance to the true segment (dB, lower is better), the correlation of its
loudness with the true loudness, of the amount of motion with its loudness, and
of the motion's self-similarity with its sound's self-similarity (the
Dance2Music measure). A correlation over a constant series is undefined: it is
None (null in JSON, "n/a" in tables) and never wins.

Everything here is host-side and offline. It never trains, never imports
TensorFlow, and never modifies a take; it keeps memory bounded by working a
take, and a chunk of segments, at a time.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import os
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import Bundle, Manifest, read_bundle
from device.config import with_overrides
from train_host.config import TrainConfig
from device.errors import ConfigError, DanceSamplerError
from device.motiongram import fits_frames, motion_amount
from device.overlap_add import OverlapAdd
from device.corpus import open_voice
from device.engine import DYNAMICS_DEPTH, PAUSE_FLOOR_DB, STRIKE, Dynamics, Strikes
from device.runtime import Performer
from device.session import session_info
from train_host.dataset import DatasetError, Examples, add_cache_option, build_dataset, \
    cache_dir_option, find_takes, session_examples

log = logging.getLogger(__name__)

SYSTEMS = ("model", "baseline_mean", "baseline_random", "baseline_nearest")
"""The systems compared, in the order tables list them."""
METRICS = ("log_mel_distance_db", "log_mel_matched_db", "frechet_log_mel",
           "log_mel_spread_ratio", "level_offset_db", "level_error_db",
           "loudness_corr", "loudness_ceiling_share", "motion_loudness_corr",
           "similarity_corr", "chroma_movement_corr", "chroma_movement_ratio", "beat_align",
           "beat_align_over_chance", "beat_hit", "beat_hit_over_chance", "beat_cover")
"""The metrics, in the order tables list them."""
LOWER_IS_BETTER = frozenset({"log_mel_distance_db", "log_mel_matched_db", "frechet_log_mel",
                             "level_error_db"})
IDEAL = {"log_mel_spread_ratio": 1.0, "chroma_movement_ratio": 1.0, "beat_cover": 1.0}
"""Ratios best at 1: the value nearest wins."""
NO_WINNER = frozenset({"level_offset_db"})
"""Reported, never won: a take's level offset is the song's mastering, not the dance."""
REFERENCE = ("loudness_ceiling", "motion_loudness_corr", "similarity_corr", "beat_align",
             "beat_align_over_chance")
"""The true audio's own values, for scale (``loudness_ceiling`` is its
motion_loudness_corr: what loudness_corr could reach from motion alone)."""
WEIGHTS = {
    "log_mel_distance_db": "segments", "log_mel_matched_db": "segments",
    "frechet_log_mel": "segments", "log_mel_spread_ratio": "segments",
    "level_offset_db": "audible_segments", "level_error_db": "audible_segments",
    "loudness_corr": "segments", "motion_loudness_corr": "segments",
    "similarity_corr": "takes", "chroma_movement_corr": "chroma_blocks",
    "chroma_movement_ratio": "chroma_blocks", "beat_align": "motion_beats",
    "beat_align_over_chance": "motion_beats", "beat_hit_over_chance": "true_onsets",
    "beat_hit": "true_onsets", "beat_cover": "true_onsets",
    "loudness_ceiling": "segments",
}
"""What each per-take value is weighted by when takes are pooled (see ``pool_takes``)."""

N_MELS = 64
"""Mel bands of the log-mel spectrum."""
FLOOR_DB = -80.0
"""Levels below this (dB re full scale) count as this, so silence against silence is 0."""
STFT_SECONDS = 512 / 22050
"""Analysis window: n_fft 512 at 22050 Hz (23 ms), the same length in time at other rates."""
MAX_SSM_SEGMENTS = 500
"""Segments per take in a self-similarity matrix (evenly subsampled beyond this)."""
EXCERPT_SECONDS = 6.0
"""Length of the stretch of one take that the report plots and lets you hear."""
AUDIBLE_DB = FLOOR_DB + 20.0
"""Segments whose true level is below this (-60 dBFS: a gap in the music) are left
out of the level measures: a song's mastering level says nothing about its silences."""
CEILING_MIN = 0.1
"""loudness_ceiling_share is undefined where the ceiling is below this: dividing
by a correlation near 0 gives numbers that mean nothing."""
MOTION_SMOOTH_FRAMES = 2.0
"""Sigma (frames) of the Gaussian that smooths the motion amount before its beats are found."""
BEAT_SIGMA_FRAMES = 3.0
"""Sigma (frames) of the beat alignment score's Gaussian (AIST++, Bailando: 3)."""
BEAT_TOLERANCE_S = 0.1
"""How near (seconds) a generated onset must be to a true one to hit it."""
CHANCE_SHIFTS = 24
"""Circular shifts of a system's onsets whose mean score is its chance level."""
CHANCE_MIN_SHIFT_S = 1.0
"""The smallest shift (seconds): further than any beat measure's reach."""
ONSET_WAIT_FRAMES = 2
"""An onset is the largest onset strength within this many frames either side."""
ONSET_MEAN_S = 0.5
"""An onset's strength must exceed the mean strength within this many seconds either side..."""
ONSET_DELTA = 0.07
"""... by this share of the take's range of strength (librosa's onset_detect default) ..."""
ONSET_MIN_DB = 3.0
"""... and be at least this (dB of mean rise per mel band), so noise in a steady
sound never makes onsets (white noise: at most 2.3 dB over 10 s)."""

_CHUNK = 256            # segments per batch of feature computation
_SEARCH_CHUNK = 4096    # training windows per block of the nearest-neighbour search
_MEAN_CHUNK = 1024      # training segments per block of the mean spectrum
_CONSTANT = 1e-6        # relative spread under which a series counts as constant
_REPORT_TAKES = 12      # per-take loudness plots in a report


class EvaluationError(DanceSamplerError, ValueError):
    """An evaluation cannot run as asked; the message says what is missing or wrong."""


# ---- spectra -------------------------------------------------------------------------


def stft_size(sample_rate: int, segment_samples: int) -> tuple[int, int]:
    """(n_fft, hop) of the log-mel analysis: about 23 ms (512 at 22050 Hz) and a
    quarter of it (128), a power of two no longer than one segment."""
    n_fft = 2 ** round(math.log2(sample_rate * STFT_SECONDS))
    n_fft = min(n_fft, 2 ** int(math.floor(math.log2(segment_samples))))
    return n_fft, max(1, n_fft // 4)


def hz_to_mel(hz):
    """The HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_band_edges(sample_rate: int, n_mels: int = N_MELS, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """The ``n_mels + 2`` frequencies (Hz) of the triangles: band ``i`` rises from
    edge ``i``, peaks at edge ``i + 1`` and falls to zero at edge ``i + 2``."""
    fmax = sample_rate / 2 if fmax is None else fmax
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = N_MELS, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular weights, peak 1, evenly spaced in mels.

    Neighbouring triangles cross at half height, so between the first and last
    band centres the weights on each FFT bin sum to 1: a tone has the same level
    in the mel spectrum wherever it lies.
    """
    edges = mel_band_edges(sample_rate, n_mels, fmin, fmax)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


class Spectra:
    """Log-mel spectra and loudness of segments, for one sample rate and segment length."""

    def __init__(self, sample_rate: int, segment_samples: int, n_mels: int = N_MELS):
        self.sample_rate, self.segment_samples = sample_rate, segment_samples
        self.n_fft, self.hop = stft_size(sample_rate, segment_samples)
        self.window = np.hanning(self.n_fft + 1)[:-1]   # periodic Hann
        # A full-scale sine centred on a bin has power 1 there (0 dB).
        self._power_scale = 4.0 / self.window.sum() ** 2
        self.filterbank = mel_filterbank(sample_rate, self.n_fft, n_mels).astype(np.float32)

    def frames(self, samples: int) -> int:
        """Analysis frames in ``samples`` (no padding: a partial frame at the end is left out)."""
        return 1 + (samples - self.n_fft) // self.hop

    def stft(self, segments: np.ndarray) -> np.ndarray:
        """Complex (N, frames, n_fft // 2 + 1) short-time spectra of (N, samples)."""
        framed = np.lib.stride_tricks.sliding_window_view(segments, self.n_fft, axis=-1)
        return np.fft.rfft(framed[..., ::self.hop, :] * self.window, axis=-1)

    def log_mel(self, segments: np.ndarray) -> np.ndarray:
        """float32 (N, frames, n_mels): mel band power in dB re full scale, floored at -80 dB."""
        spectrum = self.stft(np.asarray(segments, np.float32))
        power = (spectrum.real ** 2 + spectrum.imag ** 2) * self._power_scale
        mel = power.astype(np.float32) @ self.filterbank.T
        return 10.0 * np.log10(np.maximum(mel, 10.0 ** (FLOOR_DB / 10)))


def log_mel_distance(generated: np.ndarray, true: np.ndarray, spectra: Spectra) -> np.ndarray:
    """Per segment: the mean absolute difference of the two log-mel spectra, in dB."""
    return np.abs(spectra.log_mel(generated) - spectra.log_mel(true)).mean(axis=(-2, -1))


def matched_distance(differences: np.ndarray) -> float:
    """The mean absolute log-mel difference (generated - true, dB, any shape) once
    one shift, the same for every frame and band, takes out the overall level: the
    median difference, the shift that makes the mean least. A song's mastering
    level is not in the dance; this is the distance at the song's own level."""
    differences = np.asarray(differences, np.float32).ravel()
    return float(np.abs(differences - np.median(differences)).mean())


def loudness_db(segments: np.ndarray) -> np.ndarray:
    """Per segment: RMS level in dB re full scale (a full-scale square wave is 0 dB),
    floored at -80 dB."""
    x = np.asarray(segments, np.float64)
    return 10.0 * np.log10(np.maximum((x * x).mean(axis=-1), 10.0 ** (FLOOR_DB / 10)))


def pearson(x, y) -> float | None:
    """Pearson correlation, or None where it is undefined: fewer than two points, or
    either series constant (within a relative 1e-6 of its own size)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"pearson: series of {len(x)} and {len(y)} values")
    if len(x) < 2 or _constant(x) or _constant(y):
        return None
    x, y = x - x.mean(), y - y.mean()
    r = float((x @ y) / math.sqrt((x @ x) * (y @ y)))
    return max(-1.0, min(1.0, r))


def _constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= _CONSTANT * (1.0 + np.abs(x).max()))


def self_similarity(features: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity of feature vectors after removing their mean.

    The mean is the take's, so the matrix shows how moments differ from the take's
    usual, not that every moment has sound. A vector equal to the mean is similar
    to nothing (0), so a system that always makes the same sound has a constant
    matrix, and its similarity correlation is None.
    """
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    scale = np.abs(x).max() if x.size else 0.0
    unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-9 * (1.0 + scale))
    return unit @ unit.T


def similarity_correlation(motion_ssm: np.ndarray, audio_ssm: np.ndarray) -> float | None:
    """Pearson correlation of the upper triangles (no diagonal) of two self-similarity matrices."""
    upper = np.triu_indices(len(motion_ssm), k=1)
    return pearson(motion_ssm[upper], audio_ssm[upper])


# ---- pitch-class movement ---------------------------------------------------------------


CHROMA_BLOCK_S = 0.5
"""Length of a chroma block (seconds)."""
CHROMA_MIN_WINDOW_S = 0.18
"""The chroma STFT's window is the shortest power of two at least this long (4096
samples, 0.19 s, at 22050 Hz: 5.4 Hz bins, so the notes of the lowest octave kept
(55 Hz, a semitone 3.3 Hz wide) fall in bins of their own pitch class)."""
CHROMA_FMIN, CHROMA_FMAX = 55.0, 5000.0
"""FFT bins from 55 Hz (A1) to 5 kHz count towards the chroma; the lower edge is
taken half a semitone down, so that the bin nearest A1 itself is in."""
CHROMA_FLOOR_DB = -60.0
"""A block whose mean power per frame in the chroma band (full-scale sine = 0 dB) is
below this has no pitch to speak of: its chroma, and the movement into and out of
it, are undefined."""


def chroma_movement(audio: np.ndarray, sample_rate: int, block_s: float = CHROMA_BLOCK_S
                    ) -> np.ndarray:
    """How far the pitch-class profile moves from each block to the next.

    Mono ``audio`` is cut into blocks of ``block_s`` seconds (a partial block at the
    end is left out). Each block's chroma is the STFT power (periodic Hann, hop a
    quarter window) of the frames centred in it, in bins from 55 Hz (less half a
    semitone) to 5 kHz, summed
    by pitch class ``round(12 log2(f / 440)) mod 12`` (0 is A) and normalised to sum
    to 1. The movement into block ``b`` is ``0.5 * sum |c_b - c_{b-1}|``: 0 when the
    profile stays, 1 when it moves to other pitch classes entirely. Returns one value
    per block, NaN for the first block and wherever either block is quieter than
    ``CHROMA_FLOOR_DB`` or holds no whole frame.
    """
    return chroma_steps(block_chroma(audio, sample_rate, block_s))


def chroma_steps(chroma: np.ndarray) -> np.ndarray:
    """``chroma_movement`` of a ``block_chroma``: ``0.5 * sum |c_b - c_{b-1}|`` into
    each block, NaN for the first and wherever either block is undefined."""
    movement = np.full(len(chroma), np.nan)
    if len(chroma) > 1:
        movement[1:] = 0.5 * np.abs(np.diff(chroma, axis=0)).sum(axis=1)
    return movement


def block_chroma(audio: np.ndarray, sample_rate: int, block_s: float = CHROMA_BLOCK_S
                 ) -> np.ndarray:
    """(blocks, 12): the pitch-class profile of each whole ``block_s`` block of mono
    ``audio``, as ``chroma_movement`` takes it (0 is A; each row sums to 1), a row of
    NaN where the block is quieter than ``CHROMA_FLOOR_DB`` or holds no whole frame."""
    x = np.asarray(audio, np.float32).ravel()
    block = int(round(block_s * sample_rate))
    if block < 1:
        raise ValueError(f"chroma: block of {block_s} s at {sample_rate} Hz is empty")
    return _block_chroma(x, sample_rate, block, len(x) // block)


def pitch_classes(freqs: np.ndarray) -> np.ndarray:
    """(len(freqs), 12) float32: 1 in the pitch class ``round(12 log2(f / 440)) mod
    12`` (A is 0) of each frequency from 55 Hz (less half a semitone) to 5 kHz, a
    row of 0 for the others: FFT bins' power times this is their chroma."""
    used = np.flatnonzero((freqs >= CHROMA_FMIN * 2 ** (-1 / 24)) & (freqs <= CHROMA_FMAX))
    to_class = np.zeros((len(freqs), 12), np.float32)
    to_class[used, np.round(12 * np.log2(freqs[used] / 440.0)).astype(int) % 12] = 1.0
    return to_class


def _block_chroma(x: np.ndarray, sample_rate: int, block: int, blocks: int) -> np.ndarray:
    """(blocks, 12) chroma normalised to sum 1 per block; NaN rows where undefined."""
    n_fft = 2 ** math.ceil(math.log2(CHROMA_MIN_WINDOW_S * sample_rate))
    hop = n_fft // 4
    to_class = pitch_classes(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)
    used = np.flatnonzero(to_class.any(axis=1))
    to_class = to_class[used]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    scale = 4.0 / float(window.sum()) ** 2
    power = np.zeros((blocks, 12))
    frames = np.zeros(blocks)
    if len(x) >= n_fft and blocks:
        framed = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
        owner = (np.arange(len(framed)) * hop + n_fft // 2) // block
        for start in range(0, len(framed), _CHUNK):
            spectrum = np.fft.rfft(framed[start:start + _CHUNK] * window, axis=-1)[:, used]
            classes = (np.abs(spectrum) ** 2 * scale).astype(np.float32) @ to_class
            mine = owner[start:start + _CHUNK]
            keep = mine < blocks
            np.add.at(power, mine[keep], classes[keep])
            np.add.at(frames, mine[keep], 1.0)
    total = power.sum(axis=1)
    mean_db = 10 * np.log10(np.maximum(total / np.maximum(frames, 1), 1e-30))
    defined = (frames > 0) & (mean_db >= CHROMA_FLOOR_DB)
    chroma = np.full((blocks, 12), np.nan)
    chroma[defined] = power[defined] / total[defined, None]
    return chroma


def chroma_movement_agreement(generated: np.ndarray, true: np.ndarray, sample_rate: int,
                              block_s: float = CHROMA_BLOCK_S
                              ) -> tuple[float | None, float | None]:
    """(corr, ratio) of two mono signals' ``chroma_movement``: the Pearson correlation
    of the two movement series, and the generated mean movement over the true mean
    movement. Only blocks where both are defined count; a longer signal is cut to the
    shorter one. Either is None where undefined (fewer than two such blocks, a
    constant series, or a true mean movement of 0)."""
    return movement_agreement(chroma_movement(generated, sample_rate, block_s),
                             chroma_movement(true, sample_rate, block_s))


def movement_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """(corr, ratio) of two ``chroma_movement`` series, as ``chroma_movement_agreement``."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any():
        return None, None
    corr = pearson(a[both], b[both])
    truth = float(b[both].mean())
    ratio = float(a[both].mean()) / truth if truth > 0 else None
    return corr, ratio


# ---- beats, distributions, levels -----------------------------------------------------


def onset_strength(audio: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Spectral flux at frame resolution: one value per ``hop`` samples (a camera frame).

    Frame ``t`` is a periodic Hann window of ``n_fft`` samples (the power of two at
    least ``hop``) ending where hop ``t`` ends (zeros before the signal's start), so
    a sound that starts within hop ``t`` is first seen in frame ``t``; its log-mel spectrum is computed as everywhere here (64 bands, floor
    -80 dB). The strength is the mean over bands of the rise from the frame before,
    ``max(0, L_t - L_{t-1})`` in dB (librosa's onset_strength, in dB); frame 0 has 0.
    """
    x = np.asarray(audio, np.float32).ravel()
    frames = len(x) // hop
    if frames < 2:
        return np.zeros(frames)
    n_fft = 2 ** math.ceil(math.log2(hop))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    bank = mel_filterbank(sample_rate, n_fft).astype(np.float32)
    scale = 4.0 / float(window.sum()) ** 2
    pad = n_fft - hop
    padded = np.concatenate([np.zeros(pad, np.float32), x])
    starts = np.arange(frames) * hop    # in the padded signal, frame t ends at hop t's end
    level = np.empty((frames, bank.shape[0]), np.float32)
    for first in range(0, frames, _CHUNK):
        index = starts[first:first + _CHUNK, None] + np.arange(n_fft)
        spectrum = np.fft.rfft(padded[index] * window, axis=-1)
        power = (np.abs(spectrum) ** 2 * scale).astype(np.float32) @ bank.T
        level[first:first + _CHUNK] = 10 * np.log10(np.maximum(power, 10 ** (FLOOR_DB / 10)))
    strength = np.zeros(frames)
    strength[1:] = np.maximum(0.0, np.diff(level, axis=0)).mean(axis=1)
    return strength


def pick_onsets(strength: np.ndarray, fps: float) -> np.ndarray:
    """Frames where ``strength`` peaks: the first largest value within
    ``ONSET_WAIT_FRAMES`` either side, above the mean within ``ONSET_MEAN_S`` either
    side by ``ONSET_DELTA`` of the series' range, and at least ``ONSET_MIN_DB``."""
    o = np.asarray(strength, np.float64)
    n = len(o)
    if n < 3:
        return np.zeros(0, np.intp)
    w, m = ONSET_WAIT_FRAMES, max(1, round(ONSET_MEAN_S * fps))
    padded = np.concatenate([np.full(w, -np.inf), o, np.full(w, -np.inf)])
    around = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1)
    peak = (o >= around.max(axis=1)) & (o > around[:, :w].max(axis=1))
    sums = np.concatenate([[0.0], np.cumsum(o)])
    lo, hi = np.maximum(0, np.arange(n) - m), np.minimum(n, np.arange(n) + m + 1)
    local_mean = (sums[hi] - sums[lo]) / (hi - lo)
    above = o >= local_mean + ONSET_DELTA * float(np.ptp(o))
    return np.flatnonzero(peak & above & (o >= ONSET_MIN_DB))


def onsets(audio: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Onset frames of ``audio`` (``onset_strength`` then ``pick_onsets``) at ``sample_rate / hop`` fps."""
    return pick_onsets(onset_strength(audio, sample_rate, hop), sample_rate / hop)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """``x`` convolved with a Gaussian of ``sigma`` samples (cut at 4 sigma), its ends
    extended by reflection so they are not pulled towards 0."""
    x = np.asarray(x, np.float64)
    radius = int(math.ceil(4 * sigma))
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(x, radius, mode="reflect" if len(x) > radius else "edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def motion_beats(motion: np.ndarray, sigma: float = MOTION_SMOOTH_FRAMES) -> np.ndarray:
    """Frames where the smoothed amount of motion has a strict local minimum: the
    moments a dancer stops between moves (AIST++'s kinetic beats)."""
    s = gaussian_smooth(motion, sigma)
    if len(s) < 3:
        return np.zeros(0, np.intp)
    return 1 + np.flatnonzero((s[1:-1] < s[:-2]) & (s[1:-1] < s[2:]))


def beat_align_score(motion_beat_frames: np.ndarray, onset_frames: np.ndarray,
                     sigma: float = BEAT_SIGMA_FRAMES) -> float | None:
    """Mean over motion beats of ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance
    (frames) to the nearest onset. None without motion beats; 0 without onsets."""
    beats = np.asarray(motion_beat_frames, np.float64)
    if not len(beats):
        return None
    if not len(onset_frames):
        return 0.0
    d = np.abs(beats[:, None] - np.asarray(onset_frames, np.float64)[None]).min(axis=1)
    return float(np.exp(-d * d / (2 * sigma * sigma)).mean())


def beat_hit_cover(generated: np.ndarray, true: np.ndarray, fps: float,
                   tolerance_s: float = BEAT_TOLERANCE_S) -> tuple[float | None, float | None]:
    """(hit, cover) of generated onset frames against true ones: the share of true
    onsets with a generated onset within ``tolerance_s``, and the generated count
    over the true count. Both None without true onsets."""
    if not len(true):
        return None, None
    if not len(generated):
        return 0.0, 0.0
    d = np.abs(np.asarray(true, np.float64)[:, None] - np.asarray(generated, np.float64)[None])
    hit = float((d.min(axis=1) <= tolerance_s * fps + 1e-9).mean())
    return hit, len(generated) / len(true)


def chance_shifts(frames: int, fps: float, count: int = CHANCE_SHIFTS) -> np.ndarray:
    """``count`` shifts (frames) spread evenly from ``CHANCE_MIN_SHIFT_S`` to as
    far short of a whole take of ``frames``; none for a take under twice that."""
    least = round(CHANCE_MIN_SHIFT_S * fps)
    if frames < 2 * least + 1:
        return np.zeros(0, np.intp)
    return np.unique(np.linspace(least, frames - least, count).round().astype(np.intp))


def over_chance(score, onset_frames: np.ndarray, frames: int, fps: float) -> float | None:
    """``score(onsets)`` less its mean over the same onsets shifted circularly
    within the take (``chance_shifts``): what the onsets' timing against the
    dance or the music adds to what their number and rhythm score anywhere.
    None where ``score`` is None or the take is too short to shift."""
    onsets = np.asarray(onset_frames, np.intp)
    value, shifts = score(onsets), chance_shifts(frames, fps)
    if value is None or not len(shifts):
        return None
    chance = [score((onsets + shift) % frames) for shift in shifts]
    return float(value - np.mean(chance))


class GaussianFit:
    """Mean and covariance of feature vectors, accumulated a batch at a time."""

    def __init__(self, dims: int):
        self.n = 0
        self.total = np.zeros(dims)
        self.outer = np.zeros((dims, dims))

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64).reshape(-1, len(self.total))
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the (n - 1) covariance; zero covariance from fewer than two vectors."""
        mean = self.total / max(self.n, 1)
        if self.n < 2:
            return mean, np.zeros_like(self.outer)
        return mean, (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: ``|m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr
    sqrt(S1 S2)``, the last term the sum of the square roots of the eigenvalues of
    ``sqrt(S1) S2 sqrt(S1)`` (symmetric, so ``eigh``; negative round-off clipped to 0)."""
    cov1 = (cov1 + cov1.T) / 2
    cov2 = (cov2 + cov2.T) / 2
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    cross = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = np.asarray(mean1, np.float64) - np.asarray(mean2, np.float64)
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross))


def spread_ratio(cov: np.ndarray, true_cov: np.ndarray) -> float | None:
    """How far a system's log-mel frames spread against the true audio's: the square
    root of the ratio of their covariances' traces (each the total variance over the
    bands). 1: as varied as the music; 0: one unchanging spectrum; None where the
    true frames do not vary."""
    true_total = float(np.trace(true_cov))
    if true_total <= 0:
        return None
    return float(np.sqrt(max(float(np.trace(cov)), 0.0) / true_total))


def level_offset_error(generated_db: np.ndarray, true_db: np.ndarray
                       ) -> tuple[float | None, float | None, int]:
    """(offset, error, segments used) of a take's segment levels (dB).

    Only segments whose true level is at least ``AUDIBLE_DB`` count. The offset is
    the median of generated minus true there; the error the median of ``|generated
    - offset - true|``. The -80 dB floor of ``loudness_db`` bounds what a silent
    system is charged. (None, None, 0) where no true segment is audible.
    """
    g, t = np.asarray(generated_db, np.float64), np.asarray(true_db, np.float64)
    audible = t >= AUDIBLE_DB
    if not audible.any():
        return None, None, 0
    diff = g[audible] - t[audible]
    offset = float(np.median(diff))
    return offset, float(np.median(np.abs(diff - offset))), int(audible.sum())


# ---- baselines -----------------------------------------------------------------------


def nearest_windows(query: np.ndarray, reference: np.ndarray, *,
                    chunk: int = _SEARCH_CHUNK) -> np.ndarray:
    """For each query window, the index of the reference window nearest to it
    (Euclidean distance over the flattened window); ties go to the lowest index.

    Blocks of ``chunk`` reference windows at a time: each block is searched in
    float32 (|r|^2 - 2 q.r, one matrix product), and its best candidate is then
    measured exactly in float64, so the choice between blocks is exact.
    """
    q = np.asarray(query, np.float32).reshape(len(query), -1)
    r = np.asarray(reference, np.float32).reshape(len(reference), -1)
    if not len(r):
        raise EvaluationError("no training windows to search")
    best = np.zeros(len(q), np.intp)
    best_d = np.full(len(q), np.inf)
    q64 = q.astype(np.float64)
    for start in range(0, len(r), chunk):
        block = r[start:start + chunk]
        approx = (block * block).sum(axis=1) - 2.0 * (q @ block.T)
        candidate = start + approx.argmin(axis=1)
        exact = ((q64 - r[candidate].astype(np.float64)) ** 2).sum(axis=1)
        better = exact < best_d
        best[better], best_d[better] = candidate[better], exact[better]
    return best


def mean_spectrum_segment(audio: np.ndarray, spectra: Spectra, *, seed: int = 0,
                          chunk: int = _MEAN_CHUNK) -> np.ndarray:
    """One segment that sounds like the training audio on average.

    The mean magnitude spectrum over every analysis frame of every training
    segment, given a random (seeded) phase per frame and overlap-added back into
    a signal (weighted overlap-add, made longer than a segment and cut from the
    middle, where the overlap is complete), then scaled so that its own mean
    magnitude spectrum has the same total as the training mean.
    """
    n, s = audio.shape
    if not n:
        raise EvaluationError("no training segments for the mean spectrum")
    total = np.zeros(spectra.n_fft // 2 + 1)
    frames = 0
    for start in range(0, n, chunk):
        magnitude = np.abs(spectra.stft(audio[start:start + chunk]))
        total += magnitude.sum(axis=(0, 1))
        frames += magnitude.shape[0] * magnitude.shape[1]
    mean = total / frames

    n_fft, hop, w = spectra.n_fft, spectra.hop, spectra.window
    length = s + 2 * n_fft
    count = 1 + -(-(length - n_fft) // hop)
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random((count, len(mean))))
    pieces = np.fft.irfft(mean * phase, n=n_fft, axis=-1) * w
    signal = np.zeros((count - 1) * hop + n_fft)
    weight = np.zeros_like(signal)
    for i, piece in enumerate(pieces):
        signal[i * hop:i * hop + n_fft] += piece
        weight[i * hop:i * hop + n_fft] += w * w
    segment = (signal / np.maximum(weight, 1e-9))[n_fft:n_fft + s]
    made = np.abs(spectra.stft(segment[None]))[0].mean(axis=0)
    segment *= mean.sum() / max(made.sum(), 1e-12)
    return segment.astype(np.float32)


# ---- the evaluation ------------------------------------------------------------------


@dataclass
class TakeResult:
    """One evaluation take's per-segment series and its own metrics."""

    name: str
    label: str
    seconds_per_segment: float
    """Time between consecutive segments (one frame)."""
    first_time_s: float
    """Time in the take at which the first segment starts."""
    loudness: dict[str, np.ndarray]
    """"true" and each system: dB per segment."""
    motion: np.ndarray
    """Motion amount of each segment's window."""
    distance: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per system: every metric of ``METRICS`` for this take."""
    reference: dict[str, float | None] = field(default_factory=dict)
    """The true audio's own values of ``REFERENCE``."""
    weights: dict[str, int] = field(default_factory=dict)
    """What this take's values weigh when takes are pooled (the names in ``WEIGHTS``)."""

    @property
    def segments(self) -> int:
        return len(self.motion)

    def scores(self) -> dict:
        """This take's values as plain JSON: what ``pool_takes`` pools."""
        return {"take": self.name, "label": self.label, "segments": self.segments,
                "seconds": round(self.segments * self.seconds_per_segment, 3),
                "metrics": {s: dict(values) for s, values in self.metrics.items()},
                "reference": dict(self.reference),
                "weights": dict(self.weights)}


@dataclass
class Excerpt:
    """A stretch of one take, streamed as the box plays it, and that take's similarity matrices."""

    take: str
    start_s: float
    streams: dict[str, np.ndarray]
    """"true", "model", "baseline_nearest": overlap-added audio of the stretch."""
    ssm: dict[str, np.ndarray]
    """"motion", "true", "model": the take's self-similarity matrices."""
    ssm_times: np.ndarray
    """Time in the take of each row of the matrices (seconds)."""


@dataclass
class Evaluation:
    """What ``run_evaluation`` found: the metrics and what the report shows."""

    metrics: dict[str, dict[str, float | None]]
    """System to metric to value: exactly what ``evaluate`` returns."""
    reference: dict[str, float | None]
    """The true audio's own motion_loudness_corr and similarity_corr (for scale)."""
    bundle: Bundle
    data_roots: list[str]
    train_roots: list[str]
    train_summary: dict[str, Any]
    takes: list[TakeResult]
    excerpt: Excerpt | None
    seconds: dict[str, float]
    """Wall time of each stage."""

    def winners(self) -> dict[str, list[str]]:
        """Per metric, the system(s) with the best defined value (none if all are undefined)."""
        return {metric: _winners({s: self.metrics[s][metric] for s in SYSTEMS}, metric)
                for metric in METRICS}


def evaluate(bundle_path: str | os.PathLike, data_roots: list[str | os.PathLike],
             train_roots: list[str | os.PathLike] | None = None, *,
             cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """The metrics of a bundle's model and the three baselines on the takes under
    ``data_roots``: ``{system: {metric: float or None}}`` for the systems in
    ``SYSTEMS`` and the metrics in ``METRICS``. ``train_roots`` (default: the roots
    the bundle says it was trained on) supply the baselines."""
    return run_evaluation(bundle_path, data_roots, train_roots, cache_dir=cache_dir,
                          seed=seed).metrics


def evaluation_config(bundle: Bundle) -> TrainConfig:
    """A training config whose data and motiongram parameters are the bundle's own,
    so that takes become examples exactly as they did for this model."""
    m = bundle.manifest
    overrides = {
        "data.fps": m.fps, "data.sample_rate": m.audio.sample_rate,
        "data.segment_seconds": m.audio.segment_samples / m.audio.sample_rate,
        "data.window_frames": m.window_frames, "data.validation_fraction": 0.0,
        "motiongram.width": m.motiongram.width, "motiongram.height": m.motiongram.height,
        "motiongram.threshold": m.motiongram.threshold,
        **{f"motion_gain.{k}": v for k, v in dataclasses.asdict(m.gain).items()},
    }
    try:
        cfg = with_overrides(TrainConfig(), overrides)
    except ConfigError as exc:
        raise EvaluationError(f"{bundle.path}: its parameters cannot be used to cut "
                              f"examples ({exc})") from None
    d = cfg.data
    if (d.segment_samples, d.hop_samples) != (m.audio.segment_samples, m.audio.hop_samples):
        raise EvaluationError(
            f"{bundle.path}: segment {m.audio.segment_samples} samples and hop "
            f"{m.audio.hop_samples} cannot be cut by the dataset builder (it makes "
            f"{d.segment_samples} and {d.hop_samples})")
    return cfg


def training_roots(bundle: Bundle, train_roots=None) -> list[Path]:
    """The training takes' roots: those given, else those the bundle's manifest names."""
    if train_roots:
        return [Path(root) for root in train_roots]
    data = bundle.manifest.training.get("data") or {}
    roots = data.get("roots")
    if not roots:
        source = data.get("source")
        trained = f" (it was trained on {source})" if source else ""
        raise EvaluationError(f"{bundle.path}: the bundle does not say where its training takes "
                              f"are{trained}; the baselines need them: pass --train-data DIR")
    missing = [root for root in roots if not Path(root).is_dir()]
    if missing:
        raise EvaluationError(f"{bundle.path}: its training data {', '.join(missing)} is not "
                              "here; pass --train-data DIR")
    return [Path(root) for root in roots]


def run_evaluation(bundle_path: str | os.PathLike, data_roots: list[str | os.PathLike],
                   train_roots: list[str | os.PathLike] | None = None, *,
                   cache_dir: str | os.PathLike | None = None, seed: int = 0,
                   keep_excerpt: bool = True) -> Evaluation:
    """The whole evaluation, with what a report needs (see ``evaluate``)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    bundle = read_bundle(bundle_path)
    m = bundle.manifest
    cfg = evaluation_config(bundle)
    train_paths = training_roots(bundle, train_roots)
    eval_paths = _evaluation_takes(data_roots)
    _check_frame_size(bundle, eval_paths, "evaluation")
    performer = open_voice(bundle)
    spectra = Spectra(m.audio.sample_rate, m.audio.segment_samples)

    t0 = time.perf_counter()
    try:
        train_takes = find_takes(train_paths)
        _check_frame_size(bundle, train_takes, "training")
        train, _, train_summary = build_dataset(train_paths, cfg, cache_dir=cache_dir)
    except DatasetError as exc:
        raise EvaluationError(f"training data: {exc}") from None
    shared = {p.resolve() for p in eval_paths} & {p.resolve() for p in train_takes}
    if shared:
        log.warning("%d evaluation take(s) are also training takes (%s): the model and the "
                    "nearest baseline have heard them", len(shared),
                    ", ".join(sorted(p.name for p in shared)))
    mean_segment = mean_spectrum_segment(train.audio, spectra, seed=seed)
    timings["training_data_s"] = time.perf_counter() - t0
    log.info("baselines from %d training segments of %d take(s)", len(train),
             train_summary["takes"])

    systems = _Systems(performer, train, mean_segment, seed, m)
    takes: list[TakeResult] = []
    excerpt: Excerpt | None = None
    longest = 0
    t0 = time.perf_counter()
    for i, path in enumerate(eval_paths):
        try:
            examples = session_examples(path, cfg, take=i, cache_dir=cache_dir)
        except DatasetError as exc:
            raise EvaluationError(f"evaluation data: {exc}") from None
        if not len(examples):
            continue   # too short for one window and its segment (session_examples warned)
        want_excerpt = keep_excerpt and len(examples) > longest
        result, take_excerpt = _evaluate_take(path.name, examples, cfg, systems, spectra,
                                              m.motiongram, want_excerpt)
        takes.append(result)
        if want_excerpt:
            excerpt, longest = take_excerpt, len(examples)
        elapsed = time.perf_counter() - t0
        log.info("take %d/%d, %s: %d segments (%.0f s so far, about %.0f s left)", i + 1,
                 len(eval_paths), path.name, len(examples), elapsed,
                 elapsed / (i + 1) * (len(eval_paths) - i - 1))
    if not takes:
        raise EvaluationError(f"none of the {len(eval_paths)} take(s) in "
                              f"{', '.join(map(str, data_roots))} is long enough for one "
                              f"window ({m.window_frames} frames) and its segment")
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["model_s"] = systems.model_s
    timings["nearest_search_s"] = systems.search_s
    timings["total_s"] = time.perf_counter() - started

    metrics, reference = _combine(takes)
    return Evaluation(metrics, reference, bundle, [str(r) for r in data_roots],
                      [str(r) for r in train_paths], train_summary, takes, excerpt,
                      {k: round(v, 3) for k, v in timings.items()})


def _evaluation_takes(roots) -> list[Path]:
    if not roots:
        raise EvaluationError("no evaluation data: pass --data DIR")
    try:
        paths = find_takes(list(roots))
    except DatasetError as exc:
        raise EvaluationError(f"evaluation data: {exc}") from None
    if not paths:
        raise EvaluationError(f"no takes in {', '.join(map(str, roots))}")
    return paths


def _check_frame_size(bundle: Bundle, takes: list[Path], what: str) -> None:
    """Refuse takes whose frames are not the size the bundle's motiongram was made from."""
    params = bundle.manifest.motiongram
    for path in takes:
        info = session_info(path)
        if not fits_frames(info.width, info.height, params):
            raise EvaluationError(
                f"{what} take {path}: frames are {info.width}x{info.height} but the model "
                f"{bundle.manifest.name} was trained on {params.frame_width}x"
                f"{params.frame_height} frames; import the take at that size or a whole "
                "multiple of it")


class _Systems:
    """Each system's segments for a batch of evaluation windows."""

    def __init__(self, performer: Performer, train: Examples, mean_segment: np.ndarray,
                 seed: int, manifest: Manifest):
        self.performer, self.train, self.mean_segment = performer, train, mean_segment
        self.dynamics = Dynamics(PAUSE_FLOOR_DB, DYNAMICS_DEPTH, fps=manifest.fps)
        self.strikes = Strikes.of(manifest, STRIKE)
        self.rng = np.random.default_rng(seed)
        self.model_s = self.search_s = 0.0

    def start_take(self) -> None:
        self.dynamics.reset()
        self.strikes.reset()

    def _played(self, window: np.ndarray) -> np.ndarray:
        voice = self.performer
        return self.strikes(self.dynamics(voice(window), voice), window, voice)

    def __call__(self, motion: np.ndarray) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        # One window at a time through one interpreter, the level dynamics and the
        # strikes, as the box plays them (a take's windows come in order;
        # ``start_take`` between).
        model = np.stack([self._played(window) for window in motion])
        t1 = time.perf_counter()
        nearest = nearest_windows(motion, self.train.motion)
        self.model_s += t1 - t0
        self.search_s += time.perf_counter() - t1
        chosen = self.rng.integers(0, len(self.train), len(motion))
        return {"model": model,
                "baseline_mean": np.broadcast_to(self.mean_segment, model.shape),
                "baseline_random": self.train.audio[chosen],
                "baseline_nearest": self.train.audio[nearest]}


def _evaluate_take(name: str, examples: Examples, cfg: TrainConfig, systems: _Systems,
                   spectra: Spectra, params, want_excerpt: bool
                   ) -> tuple[TakeResult, Excerpt | None]:
    n, d = len(examples), cfg.data
    systems.start_take()
    kept = _subsample(n, MAX_SSM_SEGMENTS)
    names = ("true",) + SYSTEMS
    loudness = {s: np.empty(n) for s in names}
    distance = {s: np.empty(n) for s in SYSTEMS}
    differences = {s: [] for s in SYSTEMS}   # float16: 0.06 dB steps at 64 dB apart
    mel = {s: np.empty((len(kept), N_MELS)) for s in names}
    fits = {s: GaussianFit(N_MELS) for s in names}
    # Each system's whole take as the box plays it: hop k holds the start of segment k.
    adders = {s: OverlapAdd(d.segment_samples, d.hop_samples) for s in names}
    streams = {s: np.empty(n * d.hop_samples, np.float32) for s in names}
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        truth = examples.audio[start:stop]
        outputs = {"true": truth, **systems(examples.motion[start:stop])}
        true_mel = spectra.log_mel(truth)
        here = kept[(kept >= start) & (kept < stop)]
        rows = np.searchsorted(kept, here)
        for system, segments in outputs.items():
            spectrum = true_mel if system == "true" else spectra.log_mel(segments)
            loudness[system][start:stop] = loudness_db(segments)
            if system != "true":
                difference = spectrum - true_mel
                distance[system][start:stop] = np.abs(difference).mean(axis=(1, 2))
                differences[system].append(difference.astype(np.float16))
            mel[system][rows] = spectrum[here - start].mean(axis=1)
            fits[system].add(spectrum)
            adder, stream = adders[system], streams[system]
            for i, segment in enumerate(segments, start):
                stream[i * d.hop_samples:(i + 1) * d.hop_samples] = \
                    adder.push(segment.astype(np.float32))

    # The motion of the frame each segment starts at, and of each whole window.
    frame_motion = motion_amount(examples.motion[:, -1], params)
    motion = motion_amount(examples.motion, params).mean(axis=1)
    motion_ssm = self_similarity(examples.motion[kept])
    ssm = {s: self_similarity(mel[s]) for s in names}
    beats = motion_beats(frame_motion)
    warmup = _warmup(d)
    found = {}
    for system in names:
        strength = onset_strength(streams[system], d.sample_rate, d.hop_samples)
        strength[:warmup + 1] = 0.0    # the stream fades in over its first hops
        found[system] = pick_onsets(strength, d.fps)
    true_gaussian = fits["true"].mean_cov()

    def align(onset_frames):
        return beat_align_score(beats, onset_frames)

    def hits(onset_frames):
        return beat_hit_cover(onset_frames, found["true"], d.fps)[0]

    true_chroma = chroma_movement(streams["true"], d.sample_rate)
    result = TakeResult(name, str(examples.labels[0]), 1.0 / d.fps,
                        (d.window_frames - 1) / d.fps, loudness, motion, distance)
    audible = 0
    for system in SYSTEMS:
        offset, error, audible = level_offset_error(loudness[system], loudness["true"])
        corr, ratio = movement_agreement(chroma_movement(streams[system], d.sample_rate),
                                        true_chroma)
        hit, cover = beat_hit_cover(found[system], found["true"], d.fps)
        gaussian = fits[system].mean_cov()
        result.metrics[system] = {
            "log_mel_distance_db": float(distance[system].mean()),
            "log_mel_matched_db": matched_distance(np.concatenate(differences.pop(system))),
            "frechet_log_mel": frechet_distance(*gaussian, *true_gaussian),
            "log_mel_spread_ratio": spread_ratio(gaussian[1], true_gaussian[1]),
            "level_offset_db": offset, "level_error_db": error,
            "loudness_corr": pearson(loudness[system], loudness["true"]),
            "motion_loudness_corr": pearson(motion, loudness[system]),
            "similarity_corr": similarity_correlation(motion_ssm, ssm[system]),
            "chroma_movement_corr": corr, "chroma_movement_ratio": ratio,
            "beat_align": align(found[system]),
            "beat_align_over_chance": over_chance(align, found[system], n, d.fps),
            "beat_hit": hit, "beat_hit_over_chance": over_chance(hits, found[system], n, d.fps),
            "beat_cover": cover,
        }
    ceiling = pearson(motion, loudness["true"])
    result.reference = {"loudness_ceiling": ceiling, "motion_loudness_corr": ceiling,
                        "similarity_corr": similarity_correlation(motion_ssm, ssm["true"]),
                        "beat_align": align(found["true"]),
                        "beat_align_over_chance": over_chance(align, found["true"], n, d.fps)}
    for system in SYSTEMS:
        result.metrics[system]["loudness_ceiling_share"] = _share(
            result.metrics[system]["loudness_corr"], ceiling)
    result.weights = {"segments": n, "takes": 1, "audible_segments": audible,
                      "chroma_blocks": int(np.count_nonzero(~np.isnan(true_chroma))),
                      "motion_beats": len(beats), "true_onsets": len(found["true"])}
    excerpt = None
    if want_excerpt:
        _, begin, end = _excerpt_range(n, d)
        h = d.hop_samples
        excerpt = Excerpt(name, result.first_time_s + begin / d.fps,
                          {s: streams[s][begin * h:end * h].copy()
                           for s in ("true", "model", "baseline_nearest")},
                          {"motion": motion_ssm, "true": ssm["true"], "model": ssm["model"]},
                          result.first_time_s + kept / d.fps)
    return result, excerpt


def _share(value: float | None, ceiling: float | None) -> float | None:
    """``value`` as a share of ``ceiling``; None where either is undefined or the
    ceiling is below ``CEILING_MIN``."""
    if value is None or ceiling is None or ceiling < CEILING_MIN:
        return None
    return value / ceiling


def _subsample(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices out of ``n``, evenly spread, sorted, distinct."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.intp))


def _warmup(d) -> int:
    """Segments before a stretch that overlap its first hop in the live overlap-add."""
    return -(-d.segment_samples // d.hop_samples) - 1


def _excerpt_range(n: int, d) -> tuple[int, int, int]:
    """(first segment with its warm-up, first segment, end) of the middle
    ``EXCERPT_SECONDS`` of a take: the warm-up segments before the stretch overlap
    its first hops, so the stream starts as it sounds mid-performance, not from silence."""
    length = min(n, round(EXCERPT_SECONDS * d.fps))
    start = (n - length) // 2
    return max(0, start - _warmup(d)), start, start + length


def _combine(takes: list[TakeResult]) -> tuple[dict, dict]:
    return pool_takes([take.scores() for take in takes])


def pool_takes(scores: list[dict]) -> tuple[dict, dict]:
    """Per-take results (``TakeResult.scores``) as one value per system and metric,
    and the true audio's reference values: ``(metrics, reference)``.

    Each value is the mean over the takes where it is defined, weighted as
    ``WEIGHTS`` says: by segments (log-mel distance, so it is the mean over every
    segment; the Fréchet distance; the loudness correlations), by audible segments
    (level offset and error), by blocks with pitch (chroma), by motion beats
    (beat_align: the mean over every motion beat), by true onsets (beat_hit and
    beat_cover: pooled counts), or equally (similarity_corr, as Dance2Music
    reports it). loudness_ceiling_share is the pooled loudness_corr over the pooled
    ceiling. Correlations are per take because a take's level depends on how it
    was recorded, which no motion can tell.
    """
    def mean_over_takes(values: list[float | None], weights: list[float]) -> float | None:
        pairs = [(v, w) for v, w in zip(values, weights) if v is not None and w > 0]
        if not pairs:
            return None
        return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))

    def pooled(key: str, values: list[float | None]) -> float | None:
        return mean_over_takes(values, [t["weights"][WEIGHTS[key]] for t in scores])

    reference = {key: pooled(key, [t["reference"].get(key) for t in scores])
                 for key in REFERENCE}
    metrics: dict[str, dict[str, float | None]] = {}
    for system in SYSTEMS:
        values = {key: pooled(key, [t["metrics"][system].get(key) for t in scores])
                  for key in METRICS if key != "loudness_ceiling_share"}
        values["loudness_ceiling_share"] = _share(values["loudness_corr"],
                                                  reference["loudness_ceiling"])
        metrics[system] = {k: _rounded(values[k]) for k in METRICS}
    return metrics, {k: _rounded(v) for k, v in reference.items()}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _winners(values: dict[str, float | None], metric: str) -> list[str]:
    defined = {s: v for s, v in values.items() if v is not None}
    if not defined or metric in NO_WINNER:
        return []
    if metric in IDEAL:
        defined = {s: abs(v - IDEAL[metric]) for s, v in defined.items()}
    best = (min if metric in LOWER_IS_BETTER or metric in IDEAL else max)(defined.values())
    return [s for s, v in defined.items() if v == best]


# ---- what a person reads -------------------------------------------------------------


def format_table(evaluation: Evaluation) -> str:
    """Metrics by systems, the true audio's own values for scale, and each metric's
    winner; with more than one take, then a row per take (``format_takes``)."""
    table = format_metrics(evaluation.metrics, evaluation.reference, evaluation.winners())
    if len(evaluation.takes) < 2:
        return table
    rows = [(take.name, take.metrics, take.reference) for take in evaluation.takes]
    return table + "\n\n" + format_takes(rows, evaluation.metrics, evaluation.reference)


TAKE_COLUMNS = (   # (heading, system or "reference", key)
    ("model", "model", "log_mel_distance_db"),
    ("mean", "baseline_mean", "log_mel_distance_db"),
    ("nearest", "baseline_nearest", "log_mel_distance_db"),
    ("model_lm", "model", "log_mel_matched_db"),
    ("mean_lm", "baseline_mean", "log_mel_matched_db"),
    ("spread", "model", "log_mel_spread_ratio"),
    ("offset", "model", "level_offset_db"),
    ("lvl_err", "model", "level_error_db"),
    ("loud_r", "model", "loudness_corr"),
    ("ceiling", "reference", "loudness_ceiling"),
    ("chroma_r", "model", "chroma_movement_corr"),
    ("BAS", "model", "beat_align"),
    ("BAS_true", "reference", "beat_align"),
    ("BAS+", "model", "beat_align_over_chance"),
    ("BAS+_true", "reference", "beat_align_over_chance"),
    ("hit", "model", "beat_hit"),
    ("hit+", "model", "beat_hit_over_chance"),
    ("cover", "model", "beat_cover"),
)
"""The per-take table's columns after the take: log-mel distance (dB) of the model,
the mean-spectrum and the nearest-window baselines; that of the model and of the
mean spectrum once each take's overall level is matched (``log_mel_matched_db``,
``_lm``); the model's log-mel spread against the music's, its level offset and
error (dB), loudness correlation and the true audio's ceiling, chroma movement
correlation, beat alignment (and the true audio's), the same over chance, beat hit,
the same over chance, and cover."""


def format_takes(rows: list[tuple[str, dict, dict]], pooled_metrics: dict,
                 pooled_reference: dict) -> str:
    """A row per take, ``(label, metrics, reference)``, and the pooled row, in the
    columns of ``TAKE_COLUMNS``, then what they mean."""
    width = max([len("pooled")] + [len(label) for label, _, _ in rows]) + 2
    lines = ["take".ljust(width) + "".join(h.rjust(10) for h, _, _ in TAKE_COLUMNS)]

    def row(label: str, metrics: dict, reference: dict) -> str:
        cells = [_cell((reference if system == "reference" else metrics[system]).get(key))
                 for _, system, key in TAKE_COLUMNS]
        return label.ljust(width) + "".join(c.rjust(10) for c in cells)

    lines += [row(*r) for r in rows]
    lines.append(row("pooled", pooled_metrics, pooled_reference))
    lines.append("")
    lines.append(_closer_count(rows))
    lines.append("model, mean, nearest: log-mel distance (dB) of the model and the mean-spectrum "
                 "and nearest-window baselines; model_lm, mean_lm: log_mel_matched_db of the "
                 "model and the mean spectrum; spread: the model's log_mel_spread_ratio; "
                 "offset, lvl_err: the model's level offset and "
                 "error (dB); loud_r: its loudness_corr, ceiling: the true audio's "
                 "motion_loudness_corr; chroma_r: chroma_movement_corr; BAS: beat_align "
                 "(BAS_true: the true audio's); BAS+: beat_align_over_chance (BAS+_true: the "
                 "true audio's); hit, hit+, cover: beat_hit, beat_hit_over_chance, "
                 "beat_cover. Pooled as docs/evaluation.md says.")
    return "\n".join(lines)


def _closer_count(rows: list[tuple[str, dict, dict]]) -> str:
    """In how many takes the model's log-mel distance is under each baseline's."""
    def closer(baseline: str) -> int:
        return sum(m["model"]["log_mel_distance_db"] < m[baseline]["log_mel_distance_db"]
                   for _, m, _ in rows)

    return (f"the model is closer than the mean spectrum in {closer('baseline_mean')} "
            f"take(s) of {len(rows)}, than the nearest window in "
            f"{closer('baseline_nearest')}.")


REFERENCE_CELL = {"loudness_corr": "loudness_ceiling", "motion_loudness_corr":
                  "motion_loudness_corr", "similarity_corr": "similarity_corr",
                  "beat_align": "beat_align",
                  "beat_align_over_chance": "beat_align_over_chance"}
"""Which reference value the true-audio column shows in each metric's row: in
loudness_corr's row, the ceiling (the true loudness's correlation with motion)."""


def format_metrics(metrics: dict, reference: dict, winners: dict | None = None) -> str:
    """One row per metric, one column per system, then the true audio and the winner."""
    name_width = max(len(m) for m in METRICS) + 2
    columns = list(SYSTEMS) + ["true_audio"] + (["best"] if winners is not None else [])
    width = max(len(c) for c in columns) + 2
    lines = ["metric".ljust(name_width) + "".join(c.rjust(width) for c in columns)]
    for metric in METRICS:
        cells = [_cell(metrics[s][metric]) for s in SYSTEMS]
        key = REFERENCE_CELL.get(metric)
        cells.append(_cell(reference.get(key), blank="-") if key else "-")
        if winners is not None:
            cells.append(",".join(_short(w) for w in winners[metric]) or
                         ("-" if metric in NO_WINNER else "none"))
        lines.append(metric.ljust(name_width) + "".join(c.rjust(width) for c in cells))
    lines.append("")
    lines.append("lower is better: log_mel_distance_db, log_mel_matched_db, frechet_log_mel, "
                 "level_error_db; "
                 "nearest 1 is best: log_mel_spread_ratio, chroma_movement_ratio, beat_cover; "
                 "level_offset_db is "
                 "the mastering level, never best; the rest: higher is better. n/a: "
                 "undefined, never best. true_audio: the real music's own value; in the "
                 "loudness_corr row, its motion_loudness_corr (the ceiling that "
                 "loudness_ceiling_share divides by).")
    return "\n".join(lines)


def _short(system: str) -> str:
    return system.replace("baseline_", "")


def _cell(value: float | None, blank: str = "n/a") -> str:
    if value is None:
        return blank
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def write_report(evaluation: Evaluation, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/index.html`` and its PNG (and WAV) files; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    m = evaluation.bundle.manifest
    figures: list[tuple[str, str]] = []   # (file, caption)

    def save(fig, filename: str, caption: str) -> None:
        fig.savefig(out / filename, dpi=90, bbox_inches="tight")
        plt.close(fig)
        figures.append((filename, caption))

    for index, take in enumerate(evaluation.takes[:_REPORT_TAKES]):
        t = take.first_time_s + np.arange(take.segments) * take.seconds_per_segment
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.plot(t, take.loudness["true"], label="true", color="black", linewidth=1.2)
        ax.plot(t, take.loudness["model"], label="model", color="tab:red", linewidth=1.0)
        ax.plot(t, take.loudness["baseline_nearest"], label="nearest baseline",
                color="tab:blue", linewidth=0.8, alpha=0.6)
        ax.set_xlabel("time in take (s)")
        ax.set_ylabel("segment RMS (dBFS)")
        ax.set_title(f"{take.name}: loudness of each segment")
        ax.legend(loc="lower right", fontsize="small")
        save(fig, f"loudness_{index:02d}.png", f"Loudness over time, take {take.name} "
             f"(loudness_corr of the model here: "
             f"{_cell(take.metrics['model']['loudness_corr'])})")

    excerpt = evaluation.excerpt
    if excerpt is not None and len(excerpt.streams["true"]):
        spectra = Spectra(m.audio.sample_rate, m.audio.segment_samples)
        rows = [("true", "true audio"), ("model", "model (as the box plays it)"),
                ("baseline_nearest", "nearest-motion baseline")]
        fig, axes = plt.subplots(len(rows), 1, figsize=(10, 7), sharex=True)
        for ax, (key, title) in zip(axes, rows):
            stream = excerpt.streams[key]
            spectrum = spectra.log_mel(stream[None])[0]
            seconds = len(stream) / m.audio.sample_rate
            image = ax.imshow(spectrum.T, origin="lower", aspect="auto", cmap="magma",
                              vmin=FLOOR_DB, vmax=0,
                              extent=(excerpt.start_s, excerpt.start_s + seconds, 0, N_MELS))
            ax.set_ylabel("mel band")
            ax.set_title(title, fontsize="medium")
        axes[-1].set_xlabel("time in take (s)")
        fig.colorbar(image, ax=axes, label="dB re full scale")
        save(fig, "spectrograms.png", f"Log-mel spectrograms of {seconds:.1f} s of take "
             f"{excerpt.take}: true, generated, nearest baseline")
        for key in ("true", "model"):
            _write_wav(out / f"excerpt_{key}.wav", excerpt.streams[key], m.audio.sample_rate)

        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        t0, t1 = excerpt.ssm_times[0], excerpt.ssm_times[-1]
        for ax, (key, title) in zip(axes, [("motion", "motion"), ("true", "true audio"),
                                           ("model", "model audio")]):
            image = ax.imshow(excerpt.ssm[key], cmap="viridis", vmin=-1, vmax=1,
                              extent=(t0, t1, t1, t0), interpolation="nearest")
            ax.set_title(f"{title} self-similarity", fontsize="medium")
            ax.set_xlabel("time in take (s)")
        axes[0].set_ylabel("time in take (s)")
        fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.8)
        save(fig, "self_similarity.png", f"Self-similarity matrices of take {excerpt.take} "
             f"(at most {MAX_SSM_SEGMENTS} segments, evenly spaced)")

    page = out / "index.html"
    page.write_text(_html(evaluation, figures, audio=excerpt is not None
                          and (out / "excerpt_true.wav").exists()))
    return page


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    data = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(data.tobytes())


def _html(evaluation: Evaluation, figures: list[tuple[str, str]], audio: bool) -> str:
    e, m = evaluation, evaluation.bundle.manifest
    esc = html.escape
    winners = e.winners()
    head = "".join(f"<th>{esc(system)}</th>" for system in SYSTEMS)
    body = []
    for metric in METRICS:
        cells = []
        for system in SYSTEMS:
            text = esc(_cell(e.metrics[system][metric]))
            cells.append(f"<td><b>{text}</b></td>" if system in winners[metric]
                         else f"<td>{text}</td>")
        key = REFERENCE_CELL.get(metric)
        cells.append(f"<td class=ref>{esc(_cell(e.reference.get(key), blank='-') if key else '-')}"
                     "</td>")
        body.append(f"<tr><th>{esc(metric)}</th>{''.join(cells)}</tr>")
    per_take = ("log_mel_distance_db", "log_mel_matched_db", "level_offset_db", "level_error_db",
                "loudness_corr", "chroma_movement_corr", "beat_align", "beat_hit")
    takes = "".join(
        f"<tr><td>{esc(t.name)}</td><td>{esc(t.label)}</td><td>{t.segments}</td>"
        f"<td>{t.segments * t.seconds_per_segment:.1f}</td>"
        + "".join(f"<td>{esc(_cell(t.metrics['model'][k]))}</td>" for k in per_take)
        + f"<td>{esc(_cell(t.reference.get('loudness_ceiling'), blank='-'))}</td></tr>"
        for t in e.takes)
    take_head = "".join(f"<th>model {esc(k)}</th>" for k in per_take)
    images = "".join(f'<figure><img src="{esc(name)}" alt="{esc(caption)}">'
                     f"<figcaption>{esc(caption)}</figcaption></figure>"
                     for name, caption in figures)
    sound = ""
    if audio and e.excerpt is not None:
        sound = ("<h2>Listen</h2><p>The stretch plotted above: "
                 '<audio controls src="excerpt_true.wav"></audio> true, '
                 '<audio controls src="excerpt_model.wav"></audio> the model, overlap-added '
                 "as the box plays it.</p>")
    training = json.dumps(m.training.get("data", {}), indent=1, sort_keys=True)
    train_summary = {k: e.train_summary.get(k) for k in ("takes", "seconds", "segments",
                                                          "labels")}
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Evaluation of {esc(m.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: 1em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .2em .6em; }}
td {{ text-align: right; }} .ref {{ color: #666; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: .5em; overflow-x: auto; }}
</style></head><body>
<h1>Evaluation of model {esc(m.name)}</h1>
<p>Bundle <code>{esc(str(e.bundle.path))}</code>, created {esc(m.created)}.
{sum(t.segments for t in e.takes)} evaluation segments from {len(e.takes)} take(s);
the int8 performer graph run by the box's runtime on every window.</p>
<h2>Results</h2>
<table><tr><th>metric</th>{head}<th>true audio</th></tr>{''.join(body)}</table>
<p><b>Bold</b>: best in its row. log_mel_distance_db: mean absolute difference of
log-mel spectra (64 bands, dB, floor {FLOOR_DB:g} dB), lower is better; log_mel_matched_db:
the same once one shift per take takes out the overall level (the median difference).
frechet_log_mel:
Fréchet distance of Gaussians fitted to the log-mel frames (dB², lower is better).
level_offset_db: median level difference from the true audio (the song's mastering level,
reported, never best); level_error_db: median level error once that offset is removed
(lower is better). loudness_corr: correlation of generated and true segment loudness; its
true-audio cell is the ceiling, the true loudness's own correlation with the motion, and
loudness_ceiling_share the system's loudness_corr as a share of it. motion_loudness_corr:
correlation of the amount of motion with the generated loudness. similarity_corr:
correlation of the motion and audio self-similarity matrices (Dance2Music).
chroma_movement_corr / _ratio: how the pitch-class movement per 0.5 s follows the true
audio's (ratio best near 1). beat_align: beat alignment score of motion beats and the
sound's onsets (AIST++); beat_hit / beat_cover: share of true onsets matched within
100 ms / generated onsets per true onset (best near 1). Per-take values are pooled over
takes; n/a means undefined and never wins. Definitions: docs/evaluation.md.</p>
<h2>Evaluation data</h2>
<p>Roots: {esc(', '.join(e.data_roots))}</p>
<table><tr><th>take</th><th>label</th><th>segments</th><th>seconds</th>{take_head}
<th>loudness ceiling</th></tr>
{takes}</table>
<h2>Baselines' training data</h2>
<p>Roots: {esc(', '.join(e.train_roots))}</p>
<pre>{esc(json.dumps(train_summary, indent=1, sort_keys=True))}</pre>
<h2>The model</h2>
<pre>{esc(m.describe())}</pre>
<p>Its training data, as the bundle records it:</p>
<pre>{esc(training)}</pre>
<h2>Plots</h2>
{images}
{sound}
<p>Timings (s): {esc(json.dumps(e.seconds))}</p>
</body></html>
"""


# ---- command line --------------------------------------------------------------------


def add_commands(subparsers) -> None:
    """Add ``evaluate`` to a ``python -m train_host`` parser."""
    parser = subparsers.add_parser(
        "evaluate", help="score a bundle's model against baselines on takes it never saw")
    parser.add_argument("bundle", metavar="BUNDLE", help="model bundle (.dsb)")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="folders of evaluation takes, or take folders")
    parser.add_argument("--train-data", nargs="+", metavar="DIR",
                        help="the training takes, for the baselines (default: the roots "
                             "the bundle's manifest names)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: system -> metric -> value or null")
    parser.add_argument("--report", metavar="DIR",
                        help="write DIR/index.html with the table and plots")
    add_cache_option(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random baseline and the mean baseline's phase")
    parser.set_defaults(func=_evaluate_command)


def _evaluate_command(args) -> int:
    evaluation = run_evaluation(args.bundle, args.data, args.train_data,
                                cache_dir=cache_dir_option(args.cache),
                                seed=args.seed, keep_excerpt=bool(args.report))
    if args.report:
        page = write_report(evaluation, args.report)
        print(f"wrote {page}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        takes = [{key: value for key, value in take.scores().items() if key != "weights"}
                 for take in evaluation.takes]
        print(json.dumps({**evaluation.metrics, "reference": evaluation.reference,
                          "takes": takes}, sort_keys=False))
    else:
        print(format_table(evaluation))
    return 0
