"""The joint motion/audio VAE, in Keras.

Two encoders (motion window, audio segment) each give a Gaussian expert over one
shared latent; the posterior is the product of the experts that are present and a
standard-normal prior (Wu & Goodman's MVAE). Two decoders give back both
modalities from a latent. Training sub-samples the posteriors (both, motion
alone, audio alone), so the path the box runs, motion alone to latent to audio,
is trained directly rather than hoped for.

The performer graph that is exported to the box is the motion encoder's
posterior mean (each encoder gives its expert's mean already multiplied by the
prior) into the audio decoder: deterministic, batch 1.

Choices that serve the int8 export, whose parity with the float model must
reach 30 dB:
- Hidden layers use a plain ReLU, which int8 fuses into the dense layer: one
  rounding per layer. (A leaky ReLU is a separate int8 op whose input keeps the
  whole negative range; the reference kernels that tflite-runtime 2.14 runs
  lost 11 dB to it, where LiteRT's XNNPACK fuses it.)
- The motion encoder's hidden layers cap their ReLU at 6 (ReLU6, fused as
  well). Real motion is heavy-tailed: uncapped, one window in a hundred of real
  video drove the first layer to 28-48 where most windows stay under 1.3, and
  int8, which gives each layer one range, spent its 256 steps on that range.
  The decoders' layers are fed the latent, which the KL term keeps near unit
  scale, and stay uncapped.
- The audio decoder gives a segment's shape and its level apart
  (``synthesize``): a training term keeps the shape tensor near unit RMS
  whether the dancer is still or wild, so its int8 steps are fine for quiet and loud sound alike,
  where one waveform tensor would spend its 256 steps on the loudest segment.

The audio decoder makes a segment's shape as a sum of partials: it gives the
amplitude of each sine at a whole multiple of the frame rate (30, 60, 90 Hz ...
up to 40 % of the sample rate), and a fixed layer (``partials_basis``) turns
those amplitudes into samples. A whole multiple of the frame rate completes whole
cycles in every hop, so a partial that sounds on in the next frame's segment
meets itself in phase wherever the box overlap-adds them. Its dense layer,
free to make any waveform, learned the average spectrum of whatever notes might
come, and played one static chord whatever the dance (pitch-class movement 0.09
of the demo instrument's, even when the notes could be seen in the motion);
asked for the amplitudes of partials, the decoder's output is a spectrum,
what the spectral loss measures, and the notes can move (docs/model.md).

With ``noise_bands`` the audio decoder also gives the amplitudes of that many
bands of filtered noise (``device.noise``): the sound above the highest partial
and between partials that real music has and sines cannot make. Training draws
fresh noise for every segment (``NoiseRenderer``), as the box does, and the
noise joins the shape before the level scales it.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

# Bounds on the experts' log-variance. The upper keeps precisions finite. The lower
# keeps every posterior at least this wide (sigma >= 0.22), so the decoder is
# smooth at that scale of the latent: int8 rounds the latent in steps of its
# range / 255, and a decoder trained on razor-thin posteriors turns those steps
# into audible changes of level.
_LOGVAR_MIN, _LOGVAR_MAX = -3.0, 6.0
_STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


@dataclass
class JointVAE:
    """The four parts of the model; the losses and the performer are built from them."""

    motion_encoder: keras.Model
    audio_encoder: keras.Model
    motion_decoder: keras.Model
    audio_decoder: keras.Model
    input_scale: float
    """Multiplier that brings motiongram values to unit scale, baked into the graph."""

    @property
    def parts(self) -> dict[str, keras.Model]:
        return {"motion_encoder": self.motion_encoder, "audio_encoder": self.audio_encoder,
                "motion_decoder": self.motion_decoder, "audio_decoder": self.audio_decoder}

    @property
    def trainable_variables(self) -> list:
        return [v for part in self.parts.values() for v in part.trainable_variables]


class _LogSpectrogram(keras.layers.Layer):
    """log(1 + |STFT|) of an audio segment, flattened: what the audio encoder sees."""

    def __init__(self, frame: int, step: int, **kwargs):
        super().__init__(**kwargs)
        self.frame, self.step = frame, step

    def call(self, audio):
        spec = tf.abs(tf.signal.stft(audio, self.frame, self.step, pad_end=True))
        return keras.ops.reshape(tf.math.log1p(10.0 * spec), (-1, _spec_size(audio.shape[-1], self.frame, self.step)))


def _spec_size(samples: int, frame: int, step: int) -> int:
    return -(-samples // step) * (frame // 2 + 1)


def _hidden(units: int, x, activation: str = "relu"):
    return keras.layers.Dense(units, activation=activation)(x)


PARTIALS_TOP = 0.4
"""The highest partial, as a share of the sample rate (8.8 kHz at 22050 Hz)."""


def partials_basis(segment_samples: int, hop_samples: int) -> np.ndarray:
    """(partials, segment_samples) float32: row k is a sine at (k + 1) cycles per hop,
    from phase 0 at the segment's start; up to ``PARTIALS_TOP`` of the sample rate."""
    count = int(PARTIALS_TOP * hop_samples)
    k = np.arange(1, count + 1)[:, None]
    n = np.arange(segment_samples)[None, :]
    # Reduce the phase to one cycle in integers first: float32 sines of large
    # arguments would drift from the exact grid.
    return np.sin(2 * np.pi * ((k * n) % hop_samples) / hop_samples).astype(np.float32)


def stand_in_partials(hop_samples: int) -> np.ndarray:
    """Indices (0-based rows of ``partials_basis``) of the partials that a decoder of
    partials alone learns to play as a stand-in for the sound above its highest one.

    The spectral loss compares the whole band, and partials cannot make the sound
    above ``PARTIALS_TOP``; but a partial within the main lobe of the loss's shortest
    Hann window (two bins) of the partials' reach (half a spacing over the top
    one) leaks into the bins above it, so the loss rewards a steady tone there.
    Factory runs played some of them up to 37 dB over the demo instrument at
    their frequencies, as a whistle (docs/model.md); ``export`` silences them in a
    model without noise bands.
    """
    count = int(PARTIALS_TOP * hop_samples)
    reach = (count + 0.5) / hop_samples
    lobe = 2.0 / min(frame for frame, _ in _STFT_RESOLUTIONS)
    k = np.arange(1, count + 1)
    return np.flatnonzero(k / hop_samples >= reach - lobe)


def build(*, window_frames: int, features: int, segment_samples: int, hop_samples: int,
          latent_size: int, hidden_units: int, input_scale: float,
          noise_bands: int = 0) -> JointVAE:
    """A freshly initialised model (call ``keras.utils.set_random_seed`` first);
    with ``noise_bands``, its audio decoder also gives noise band amplitudes."""
    dense = keras.layers.Dense
    motion = keras.Input((window_frames, features), name="motion")
    h = keras.layers.Rescaling(input_scale)(keras.layers.Flatten()(motion))
    h = _hidden(hidden_units, _hidden(hidden_units, h, "relu6"), "relu6")
    # Each encoder's expert is (mean of the expert times the prior, log-variance):
    # the performer's latent is then one dense layer's output, one int8 rounding.
    motion_encoder = keras.Model(motion, [dense(latent_size, name="mean")(h),
                                          dense(latent_size, name="logvar")(h)],
                                 name="motion_encoder")

    audio = keras.Input((segment_samples,), name="audio")
    frame = min(512, 1 << int(np.log2(segment_samples)))
    h = _LogSpectrogram(frame, frame // 2)(audio)
    h = _hidden(hidden_units, _hidden(hidden_units, h))
    audio_encoder = keras.Model(audio, [dense(latent_size, name="mean")(h),
                                        dense(latent_size, name="logvar")(h)],
                                name="audio_encoder")

    z = keras.Input((latent_size,), name="latent")
    h = _hidden(hidden_units, _hidden(hidden_units, z))
    # Linear outputs: int8 calibration fits each range to the values really met.
    basis = partials_basis(segment_samples, hop_samples)
    amplitudes = dense(len(basis), name="partials")(h)
    shape = dense(segment_samples, use_bias=False, trainable=False, name="shape",
                  kernel_initializer=keras.initializers.Constant(basis))(amplitudes)
    outputs = [shape, dense(1, name="level")(h)]
    if noise_bands:
        # Started quiet (a tenth of the usual initial weights): a model fine-tuned
        # into noise bands begins close to the partials-only model it was.
        outputs.append(dense(noise_bands, name="noise", kernel_initializer=keras.initializers
                             .VarianceScaling(0.01, "fan_avg", "uniform"))(h))
    audio_decoder = keras.Model(z, outputs, name="audio_decoder")
    h = _hidden(hidden_units, z)
    h = dense(window_frames * features)(h)
    motion_decoder = keras.Model(z, keras.layers.Reshape((window_frames, features))(h),
                                 name="motion_decoder")
    return JointVAE(motion_encoder, audio_encoder, motion_decoder, audio_decoder, input_scale)


def synthesize(shape, level):
    """The audio segment from the decoder's two outputs: ``shape`` times ``level``.

    ``device.runtime.Performer`` does the same on the box. The shape is kept near
    unit RMS by ``shape_level_penalty``, so the level carries the loudness.
    """
    return shape * level


class NoiseRenderer:
    """``device.noise.NoiseBands`` in TensorFlow, for training: the same filters
    and scale, fresh noise from a stateless seed. No overlap-add here (training
    sees single segments), so no stream gain either."""

    def __init__(self, bands: int, segment_samples: int, sample_rate: int):
        from device.noise import band_filters, spectrum_scale

        self.filters = tf.constant(band_filters(bands, segment_samples, sample_rate))
        self.scale = spectrum_scale(segment_samples)
        self.segment = segment_samples

    def __call__(self, amplitudes, seed):
        """(N, segment) noise for (N, bands) amplitudes; ``seed`` a stateless seed pair."""
        shape = tf.matmul(tf.abs(amplitudes), self.filters) * self.scale
        real = tf.random.stateless_normal(tf.shape(shape), seed=seed)
        imag = tf.random.stateless_normal(tf.shape(shape), seed=seed + tf.constant([0, 1],
                                                                                  seed.dtype))
        return tf.signal.irfft(tf.complex(real * shape, imag * shape), [self.segment])


def shape_level_penalty(shape):
    """The squared log of the shape's RMS: it keeps the shape tensor near unit level
    whether the segment is quiet or loud, so its int8 steps suit both."""
    rms = tf.sqrt(tf.reduce_mean(tf.square(shape), axis=-1) + 1e-6)
    return tf.reduce_mean(tf.square(tf.math.log(rms)))


def performer(vae: JointVAE, *, latent: bool = False) -> keras.Model:
    """The graph the box runs: motion window to the audio segment of its posterior
    mean (the audio decoder's outputs). With ``latent``, that posterior mean is a
    last output besides, for the box to send out (bundle version 6)."""
    motion = keras.Input(vae.motion_encoder.input_shape[1:], batch_size=1, name="motion")
    mean, _ = vae.motion_encoder(motion)
    outputs = list(vae.audio_decoder(mean))
    return keras.Model(motion, outputs + [mean] if latent else outputs, name="performer")


def _audio_decoder(model: keras.Model) -> keras.Model:
    """The audio decoder inside a performer graph, or ``model`` if it is one."""
    return next((layer for layer in model.layers if layer.name == "audio_decoder"), model)


def perform(model: keras.Model, motion: np.ndarray, noise=None) -> np.ndarray:
    """The float audio segments the performer graph gives for a batch of windows.

    A model with a noise output needs ``noise``, a ``device.noise.NoiseBands``
    (one segment's noise drawn per window, in order, as the box draws them).
    """
    given = model(motion, training=False)
    shape, level, *bands = [t.numpy() for t in given[:len(_audio_decoder(model).outputs)]]
    if bands:
        if noise is None:
            raise ValueError("this model has a noise output: pass its NoiseBands")
        shape = shape + np.stack([noise.render(a) for a in bands[0]])
    return shape * level


def box_voice(vae: JointVAE, sample_rate: int, seed: int):
    """What the box would play, in float: a function from a batch of windows to
    their segments through the performer graph, ``batch`` windows at a time, the
    noise bands (if any) drawn in order from one generator seeded ``seed``."""
    return graph_voice(performer(vae), sample_rate, seed)


def graph_voice(model: keras.Model, sample_rate: int, seed: int):
    """``box_voice`` for a performer graph already built (``performer``)."""
    from device.noise import NoiseBands

    bands = noise_bands(model)
    noise = (NoiseBands(bands, segment_samples=int(model.outputs[0].shape[-1]),
                        sample_rate=sample_rate, rng=np.random.default_rng(seed))
             if bands else None)

    def play(motion: np.ndarray, batch: int = 1) -> np.ndarray:
        return np.concatenate([perform(model, motion[i:i + batch], noise)
                               for i in range(0, len(motion), batch)])

    return play


def latent_output_size(model: keras.Model) -> int:
    """How many values a performer graph's latent output gives (0: it has none)."""
    extra = len(model.outputs) > len(_audio_decoder(model).outputs)
    return int(model.outputs[-1].shape[-1]) if extra else 0


def noise_bands(model: keras.Model) -> int:
    """How many noise bands the audio decoder or performer graph gives (0: none)."""
    outputs = _audio_decoder(model).outputs
    return int(outputs[2].shape[-1]) if len(outputs) == 3 else 0


def motion_latent(vae: JointVAE, motion: np.ndarray) -> np.ndarray:
    """Posterior means from motion alone, for style centroids and plots."""
    return vae.motion_encoder(motion, training=False)[0].numpy()


def expert(stats):
    """An encoder's expert as (m, logvar): m is the mean of the expert times the
    prior (what the performer plays from), logvar the expert's own, bounded."""
    m, logvar = stats
    return m, tf.clip_by_value(logvar, _LOGVAR_MIN, _LOGVAR_MAX)


def product_of_experts(*experts):
    """Posterior (mu, logvar) of the prior N(0, 1) times each expert.

    An expert (m, logvar) with precision P = exp(-logvar) has its own mean
    m (1 + P) / P, since m is its mean once multiplied by the prior; so its
    precision-weighted mean is m (1 + P). One expert alone gives back m.
    """
    precisions = [tf.exp(-lv) for _, lv in experts]
    precision = 1.0 + sum(precisions)
    mu = sum(m * (1.0 + p) for (m, _), p in zip(experts, precisions)) / precision
    return mu, -tf.math.log(precision)


def kl_divergence(mu, logvar):
    """KL(q || N(0, 1)) per example, summed over the latent."""
    return 0.5 * tf.reduce_sum(tf.exp(logvar) + mu * mu - 1.0 - logvar, axis=-1)


def loudness_loss(target, generated):
    """The mean absolute difference of the generated and true segments' log RMS.

    Where the motion does not say which sound comes, the waveform and spectral
    terms are least wrong for a quieter segment than the true one (a sound with
    the wrong notes is closer to the truth the fainter it is), and the model
    plays under the level of the takes it learned from. This term asks for the
    true level, whatever the notes.
    """
    def log_rms(x):
        return 0.5 * tf.math.log(tf.reduce_mean(tf.square(x), axis=-1) + 1e-8)

    return tf.reduce_mean(tf.abs(log_rms(generated) - log_rms(target)))


class LogMel:
    """The log-mel spectra of segments as ``train_host.evaluate.Spectra`` measures
    them (same STFT, window, power scale, filterbank and floor), in TensorFlow."""

    def __init__(self, sample_rate: int, segment_samples: int):
        from train_host.evaluate import FLOOR_DB, Spectra

        spectra = Spectra(sample_rate, segment_samples)
        self.n_fft, self.hop = spectra.n_fft, spectra.hop
        self.scale = float(spectra._power_scale)
        self.filterbank = tf.constant(spectra.filterbank.T)
        self.floor = float(10.0 ** (FLOOR_DB / 10))

    def __call__(self, audio):
        """(N, frames, n_mels) band power in dB, floored."""
        spectrum = tf.signal.stft(audio, self.n_fft, self.hop, window_fn=tf.signal.hann_window)
        power = tf.square(tf.abs(spectrum)) * self.scale
        mel = tf.tensordot(power, self.filterbank, axes=1)
        return 10.0 * tf.math.log(tf.maximum(mel, self.floor)) / tf.math.log(10.0)


def log_mel_loss(log_mel: LogMel, true, generated):
    """The mean absolute difference of the generated segments' log-mel spectra from
    ``true``, the true segments' (``log_mel(target)``, taken once a step), in tens
    of dB: ``evaluate``'s log-mel distance, divided by ten."""
    return tf.reduce_mean(tf.abs(log_mel(generated) - true)) / 10.0


class SegmentChroma:
    """Each segment's pitch-class profile, as ``evaluate``'s pitch-class movement
    takes a block's: STFT power (here one periodic Hann window over the whole
    segment) in the bins from 55 Hz (less half a semitone) to 5 kHz, summed by pitch
    class ``round(12 log2(f / 440)) mod 12``. A segment's profile is divided by its
    power plus the power of ``CHROMA_FLOOR_DB``, so a segment with no pitch to speak
    of has a profile near 0 rather than one drawn from its faintest partials."""

    def __init__(self, sample_rate: int, segment_samples: int):
        from train_host.evaluate import CHROMA_FLOOR_DB, pitch_classes

        n = segment_samples
        window = np.hanning(n + 1)[:-1].astype(np.float32)
        self.n = n
        self.window = tf.constant(window)
        self.to_class = tf.constant(pitch_classes(np.arange(n // 2 + 1) * sample_rate / n))
        self.scale = float(4.0 / float(window.sum()) ** 2)
        self.floor = float(10.0 ** (CHROMA_FLOOR_DB / 10))

    def __call__(self, audio):
        """(N, 12) profiles of (N, segment_samples) segments, each summing to at most 1."""
        spectrum = tf.signal.rfft(audio * self.window, fft_length=[self.n])
        power = tf.square(tf.abs(spectrum)) * self.scale
        classes = tf.matmul(power, self.to_class)
        return classes / (tf.reduce_sum(classes, axis=-1, keepdims=True) + self.floor)


def chroma_loss(chroma: SegmentChroma, true, generated):
    """How far each generated segment's pitch-class profile lies from ``true``, the
    true segments' (``chroma(target)``): half the summed absolute difference, 0 to 1,
    averaged over the segments.

    Where a window of motion could go with two chords, the spectral and waveform
    losses are least wrong for a blend of both, which moves little as the dance
    moves; this distance between profiles is least for the likelier chord alone.
    """
    return tf.reduce_mean(0.5 * tf.reduce_sum(tf.abs(chroma(generated) - true), axis=-1))


def kept_pitch_loss(chroma: SegmentChroma, kept, generated):
    """How far the way each generated segment's pitch-class profile differs from the
    batch's mean profile lies from the way ``kept``'s do (the profiles the model
    fine-tuned from plays for the same windows): half the summed absolute difference
    of the two departures from the mean, averaged over the segments.

    The pitch may move as a whole, to the chords the new takes' songs share, while
    which window of motion plays a higher or a lower chord than the others is kept:
    a song's chords are not in its dance, but the dance still moves the pitch.
    """
    made = chroma(generated)
    made = made - tf.reduce_mean(made, axis=0, keepdims=True)
    kept = kept - tf.reduce_mean(kept, axis=0, keepdims=True)
    return tf.reduce_mean(0.5 * tf.reduce_sum(tf.abs(made - kept), axis=-1))


def spread_loss(log_mel: LogMel, true, generated, takes, count: int):
    """How far the generated sound's spread within each take differs from the true
    sound's, in tens of dB: per take with two or more segments in the batch and per
    mel band, the standard deviation of the log-mel frames, generated against true,
    as a mean absolute difference. ``true``: the true segments' log-mel spectra
    (``log_mel(target)``); ``takes``: each segment's take, 0 to ``count``-1.

    The paired losses reward a sound that sits at the middle of what a dance might
    go with; where the motion says little, that is a steady sound. This asks the
    sound to move over a take as much as the music does (the spread the Fréchet
    distance of ``evaluate`` compares), leaving where it moves to the motion.
    """
    made = log_mel(generated)
    ids = tf.repeat(takes, tf.shape(true)[1])      # each frame's take

    def spread(x):
        x = tf.reshape(x, [-1, x.shape[-1]])
        mean = tf.math.unsorted_segment_mean(x, ids, count)
        square = tf.square(x - tf.gather(mean, ids))
        return tf.sqrt(tf.math.unsorted_segment_mean(square, ids, count) + 1e-3)

    present = tf.cast(tf.math.bincount(takes, minlength=count, maxlength=count) >= 2,
                      tf.float32)[:, None]
    difference = tf.abs(spread(made) - spread(true)) * present
    bands = tf.cast(tf.shape(difference)[1], tf.float32)
    return tf.reduce_sum(difference) / tf.maximum(tf.reduce_sum(present) * bands, 1.0) / 10.0


def onset_loss(log_mel: LogMel, true, true_before, generated, generated_before, follows,
               takes, count: int):
    """How far the generated sound's onsets within each take differ from the true
    sound's, in tens of dB: per take, the mean over its segments of the rise from
    the segment one camera frame earlier (``max(0, L_t - L_{t-1})`` per log-mel band
    and STFT frame, averaged: ``evaluate.onset_strength``'s flux, a hop apart),
    generated against true, as a mean absolute difference over the takes with two
    or more such segments in the batch. ``true``, ``true_before``: the true
    segments' log-mel spectra and their predecessors'; ``generated``,
    ``generated_before``: the box's segments for the window and for the window one
    frame earlier; ``follows``: 1 where a segment has a predecessor in its take.

    The paired losses ask each segment for the middle of what its window might
    sound with, which changes little from one frame to the next: a sound without
    attacks. This asks the sound to rise from frame to frame as often and as far
    as the music does, leaving where to the motion.
    """
    def rise(now, before):
        return tf.reduce_mean(tf.nn.relu(now - before), axis=[1, 2])

    pairs = tf.math.unsorted_segment_sum(follows, takes, count)    # per take

    def per_take(x):
        return tf.math.unsorted_segment_sum(x * follows, takes, count) / tf.maximum(pairs, 1.0)

    made = per_take(rise(log_mel(generated), log_mel(generated_before)))
    heard = per_take(rise(true, true_before))
    present = tf.cast(pairs >= 2, tf.float32)
    return tf.reduce_sum(tf.abs(made - heard) * present) / tf.maximum(
        tf.reduce_sum(present), 1.0) / 10.0


def level_db(level):
    """The decoder's level output, (N, 1), as (N,) dB."""
    return (20.0 / np.log(10.0)) * tf.math.log(tf.abs(level[:, 0]) + 1e-6)


def dynamics_loss(played_db, kept_db):
    """How far the levels the box plays for a batch of windows (``played_db``,
    ``level_db`` of its level output) move about their mean otherwise than
    ``kept_db`` (the starting model's, for the same windows) move about theirs:
    the mean absolute difference, in tens of dB. The overall level is left free.
    """
    played = played_db - tf.reduce_mean(played_db)
    kept = kept_db - tf.reduce_mean(kept_db)
    return tf.reduce_mean(tf.abs(played - kept)) / 10.0


def spectral_loss(target, generated):
    """Multi-resolution STFT loss: spectral convergence plus log-magnitude L1.

    Both signals are padded with half a frame of silence at each end, so the
    first and last samples sit under the middle of a window like every other:
    unpadded, the Hann windows barely see a segment's ends, and a model learns to
    park loud garbage there (which the box would play, and which would set the
    output's int8 range).
    """
    total = 0.0
    count = 0
    for frame, step in _STFT_RESOLUTIONS:
        if frame > target.shape[-1]:
            continue
        edges = [[0, 0], [frame // 2, frame // 2]]
        t = tf.abs(tf.signal.stft(tf.pad(target, edges), frame, step, pad_end=True))
        g = tf.abs(tf.signal.stft(tf.pad(generated, edges), frame, step, pad_end=True))
        convergence = tf.norm(t - g) / (tf.norm(t) + 1e-3)
        log_distance = tf.reduce_mean(tf.abs(tf.math.log(t + 1e-4) - tf.math.log(g + 1e-4)))
        total += convergence + log_distance
        count += 1
    return total / max(count, 1)
