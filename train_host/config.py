"""Typed, validated settings for training (``config/train.yaml``, mirrored here;
tests keep the two equal), loaded and checked as ``device.config`` loads the
device's: every mistake in a file at once, as one ``ConfigError`` line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from device.config import PROJECT_ROOT, load_config, whole_multiple
from device.motiongram import MotionGainParams, MotiongramParams


@dataclass(frozen=True)
class DataConfig:
    """How takes become training examples."""

    fps: int = field(default=30, metadata={"min": 1, "max": 120})
    """Camera frames per second of the motion the model learns from."""
    sample_rate: int = field(default=22050, metadata={"min": 8000, "max": 96000})
    """Audio samples per second; a whole multiple of fps."""
    segment_seconds: float = field(default=0.1, metadata={"min": 0.02, "max": 2.0})
    """Length of each generated audio segment, in seconds."""
    window_frames: int = field(default=8, metadata={"min": 2, "max": 64})
    """Motion frames the model sees for each segment."""
    validation_fraction: float = field(default=0.2, metadata={"min": 0, "max": 0.5})
    """Share of sessions held out for validation (split by session, not by window)."""

    @property
    def hop_samples(self) -> int:
        """Audio samples per camera frame."""
        return self.sample_rate // self.fps

    @property
    def segment_samples(self) -> int:
        """Audio samples in one generated segment."""
        return round(self.segment_seconds * self.sample_rate)


@dataclass(frozen=True)
class VaeConfig:
    """The size of the joint motion/audio VAE."""

    latent_size: int = field(default=16, metadata={"min": 2, "max": 128})
    """Dimensions of the latent space."""
    hidden_units: int = field(default=384, metadata={"min": 8, "max": 1024})
    """Units in each hidden layer."""
    noise_bands: int = field(default=0, metadata={"min": 0, "max": 256})
    """Bands of filtered noise the audio decoder also controls (``device.noise``);
    0: partials only. A model without them may be fine-tuned into one with them."""


@dataclass(frozen=True)
class TrainingConfig:
    """The optimiser and the loss."""

    epochs: int = field(default=30, metadata={"min": 1, "max": 10000})
    """Most passes over the training set."""
    max_steps: int = field(default=4500, metadata={"min": 0, "max": 10_000_000})
    """Most optimiser steps (0: no limit). Neighbouring windows overlap heavily, so a
    large dataset needs fewer passes: this keeps an hour of takes under ten minutes."""
    batch_size: int = field(default=64, metadata={"min": 1, "max": 4096})
    """Examples per optimiser step."""
    learning_rate: float = field(default=0.001, metadata={"min": 1e-6, "max": 1.0})
    """Adam's step size."""
    kl_weight: float = field(default=0.001, metadata={"min": 0, "max": 10})
    """Weight of the KL term once annealing is done."""
    kl_anneal_epochs: int = field(default=10, metadata={"min": 0, "max": 10000})
    """Epochs' worth of steps over which the KL weight rises from 0 (at most a
    third of training); 0 means full weight at once."""
    spectral_weight: float = field(default=1.0, metadata={"min": 0, "max": 100})
    """Weight of the multi-resolution spectral loss."""
    waveform_weight: float = field(default=0.1, metadata={"min": 0, "max": 100})
    """Weight of the sample-by-sample waveform loss."""
    loudness_weight: float = field(default=1.0, metadata={"min": 0, "max": 100})
    """Weight of the loudness loss: the distance of each generated segment's log
    RMS from the true segment's (``train_host.vae.loudness_loss``)."""
    mel_weight: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """Weight of the log-mel loss: the mean absolute difference, in tens of dB, of
    the generated and true segments' log-mel spectra, as ``evaluate`` measures
    them (``train_host.vae.log_mel_loss``)."""
    chroma_weight: float = field(default=1.0, metadata={"min": 0, "max": 100})
    """Weight of the pitch-class loss: how far each generated segment's pitch-class
    profile lies from the true segment's (``train_host.vae.chroma_loss``), 0 to 1.
    The paired losses are least wrong for a blend of the chords a window might go
    with; this one for the likelier chord alone."""
    spread_weight: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """Weight of the spread loss: how far the motion-only sound's spread over each
    take, band by band, differs from the true sound's (``train_host.vae.spread_loss``)."""
    onset_weight: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """Weight of the onset loss: how far the motion-only sound's rise from one
    camera frame to the next, over each take, differs from the true sound's
    (``train_host.vae.onset_loss``)."""
    dynamics_weight: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """Weight of the dynamics loss, when fine-tuning: how far the level the box
    plays for each window, from the batch's mean level, differs from the level the
    model fine-tuned from plays for it (``train_host.vae.dynamics_loss``), in tens
    of dB: the starting model's loudness-follows-the-dance, kept."""
    dynamics_depth: float = field(default=1.0, metadata={"min": 0, "max": 1})
    """How much of the starting model's dynamics the dynamics loss keeps: its
    levels' movement about their mean, scaled by this (1 keeps it whole, 0.5 moves
    half as many dB): which window is louder stays the starting model's, the range
    they span can be brought to the songs'."""
    dynamics_floor_db: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """How far under its median level (dB) a window's kept level may lie; 0 keeps
    every dip. The factory model is silent for stillness: it plays the quietest
    twentieth of the real takes' windows, where dancers stand still while their
    songs go on, 33 dB or more under its median. With a floor the dynamics loss asks
    for no deeper dip than this, and the songs teach what such a window sounds like;
    a room left still is faded by the box (``motion.quiet_after_s``). Measured, not
    the default (docs/model.md, "A dancer standing still while the song goes on")."""
    kept_pitch_weight: float = field(default=0.0, metadata={"min": 0, "max": 100})
    """Weight of the kept pitch-class loss, when fine-tuning: how far the way the
    pitch-class profile of the partials the box plays for each window differs from
    the batch's mean profile lies from the way the model fine-tuned from plays it
    (``train_host.vae.kept_pitch_loss``): the starting model's pitch
    following the dance, kept, as ``dynamics_weight`` keeps its loudness, while the
    chords as a whole move to the new takes'. A song's chords are not in its dance,
    and fine-tuning on songs otherwise teaches one spread of chords for every dance
    (docs/model.md, "The pitch through fine-tuning")."""
    motion_weight: float = field(default=0.1, metadata={"min": 0, "max": 100})
    """Weight of the motion reconstruction loss (keeps the latent about motion)."""
    motion_noise: float = field(default=1.0, metadata={"min": 0, "max": 10})
    """Standard deviation of the noise added, in training only, to the motion the
    encoder sees, in units of the training motion's own standard deviation (when
    fine-tuning, of the motion the model was first trained on: its input scale is
    kept). It keeps the model to what a whole window's motion says rather than the
    faint detail of the takes it learned from."""
    even_levels: bool = False
    """Scale each take's sound, in training only, so that its median segment level
    is the median of the training takes' (``train_host.dataset.even_levels``): a
    song's mastering level is not in the dance, and a model that learns it plays
    a new dancer at the level of whichever song that dance resembles."""
    calibrate_level: bool = False
    """After training, scale the level output so that the box, from motion alone,
    plays the training takes at their own median level (``train.calibrate_level``):
    the waveform and spectral losses otherwise leave it under that level wherever
    the motion does not tell the notes."""
    threads: int = field(default=2, metadata={"min": 1, "max": 256})
    """CPU threads for training; a fixed number keeps runs reproducible."""


@dataclass(frozen=True)
class DemoConfig:
    """The synthetic demo take that the default model trains on."""

    seconds: float = field(default=600.0, metadata={"min": 10, "max": 36000})
    """Length of the demo take, in seconds."""
    seed: int = field(default=7, metadata={"min": 0})
    """Seed of the demo take's dancer and music."""


@dataclass(frozen=True)
class ExportConfig:
    """The int8 export."""

    representative_windows: int = field(default=1000, metadata={"min": 10, "max": 1000})
    """Training windows used to calibrate the int8 quantization (a run keeps 1000)."""
    headroom: float = field(default=1.25, metadata={"min": 1.0, "max": 4.0})
    """The calibration also sees each window with its motion this many times as
    strong, so a dancer more vigorous than any in training is not clipped."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer reads from ``config/train.yaml``."""

    seed: int = field(default=1, metadata={"min": 0})
    """Seed for weight initialisation, shuffling and the validation split."""
    motiongram: MotiongramParams = MotiongramParams()
    """How frames become motion features; recorded in the bundle."""
    motion_gain: MotionGainParams = MotionGainParams()
    """How motion is scaled to the dancer's own recent level; recorded in the bundle."""
    data: DataConfig = DataConfig()
    """Training examples."""
    model: VaeConfig = VaeConfig()
    """The model's size."""
    training: TrainingConfig = TrainingConfig()
    """The optimiser and the loss."""
    demo: DemoConfig = DemoConfig()
    """The synthetic demo take."""
    export: ExportConfig = ExportConfig()
    """The int8 export."""

    def check(self) -> list[str]:
        d = self.data
        problems = whole_multiple("data.sample_rate", d.sample_rate, "data.fps", d.fps)
        if d.segment_samples < d.hop_samples:
            problems.append(
                f"data.segment_seconds: {d.segment_seconds:g} s ({d.segment_samples} samples) "
                f"is shorter than one camera frame ({d.hop_samples} samples at {d.fps} fps)")
        if self.model.noise_bands == 1 or self.model.noise_bands > d.segment_samples // 2:
            problems.append(f"model.noise_bands: {self.model.noise_bands}; expected 0 (none) or "
                            f"2 to {min(256, d.segment_samples // 2)}")
        return problems


def load_train_config(path: str | os.PathLike | None = None) -> TrainConfig:
    """The training config from ``path``, else ``config/train.yaml`` in the project root."""
    return load_config(path or PROJECT_ROOT / "config" / "train.yaml", TrainConfig)
