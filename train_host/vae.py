"""The joint motion/audio VAE, in Keras.

Two encoders (motion window, audio segment) each give a Gaussian expert over one
shared latent; the posterior is the product of the experts that are present and a
standard-normal prior (Wu & Goodman's MVAE). Two decoders give back both
modalities from a latent. Training sub-samples the posteriors (both, motion
alone, audio alone), so the path the box runs, motion alone to latent to audio,
is trained directly rather than hoped for.

The performer graph that is exported to the box is motion encoder, product with
the prior, posterior mean, audio decoder: deterministic, batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

# Bounds on the experts' log-variance keep their precisions finite in float32 and int8.
_LOGVAR_LIMIT = 6.0
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


class _PriorProduct(keras.layers.Layer):
    """Mean of the product of one Gaussian expert with the N(0, 1) prior.

    precision = 1 + exp(-logvar), so mean = mu * sigmoid(-logvar): one logistic,
    which quantizes cleanly to int8.
    """

    def call(self, stats):
        mu, logvar = keras.ops.split(stats, 2, axis=-1)
        logvar = keras.ops.clip(logvar, -_LOGVAR_LIMIT, _LOGVAR_LIMIT)
        return mu * keras.ops.sigmoid(-logvar)


def _spec_size(samples: int, frame: int, step: int) -> int:
    return -(-samples // step) * (frame // 2 + 1)


def build(*, window_frames: int, features: int, segment_samples: int, latent_size: int,
          hidden_units: int, input_scale: float) -> JointVAE:
    """A freshly initialised model (call ``keras.utils.set_random_seed`` first)."""
    dense = keras.layers.Dense
    motion = keras.Input((window_frames, features), name="motion")
    h = keras.layers.Rescaling(input_scale)(keras.layers.Flatten()(motion))
    h = dense(hidden_units, activation="relu")(h)
    h = dense(hidden_units, activation="relu")(h)
    motion_encoder = keras.Model(motion, dense(2 * latent_size)(h), name="motion_encoder")

    audio = keras.Input((segment_samples,), name="audio")
    frame = min(512, 1 << int(np.log2(segment_samples)))
    h = _LogSpectrogram(frame, frame // 2)(audio)
    h = dense(hidden_units, activation="relu")(h)
    h = dense(hidden_units, activation="relu")(h)
    audio_encoder = keras.Model(audio, dense(2 * latent_size)(h), name="audio_encoder")

    z = keras.Input((latent_size,), name="latent")
    h = dense(hidden_units, activation="relu")(z)
    h = dense(hidden_units, activation="relu")(h)
    # Linear output: int8 calibration then fits the output's range to the real
    # signal level (tanh's fixed 1/128 step would waste it); the box clips.
    audio_decoder = keras.Model(z, dense(segment_samples)(h), name="audio_decoder")
    h = dense(hidden_units, activation="relu")(z)
    h = dense(window_frames * features)(h)
    motion_decoder = keras.Model(z, keras.layers.Reshape((window_frames, features))(h),
                                 name="motion_decoder")
    return JointVAE(motion_encoder, audio_encoder, motion_decoder, audio_decoder, input_scale)


def performer(vae: JointVAE) -> keras.Model:
    """The graph the box runs: motion window to the audio segment of its posterior mean."""
    motion = keras.Input(vae.motion_encoder.input_shape[1:], batch_size=1, name="motion")
    latent = _PriorProduct(name="posterior_mean")(vae.motion_encoder(motion))
    return keras.Model(motion, vae.audio_decoder(latent), name="performer")


def motion_latent(vae: JointVAE, motion: np.ndarray) -> np.ndarray:
    """Posterior means from motion alone, for style centroids and plots."""
    return _PriorProduct()(vae.motion_encoder(motion, training=False)).numpy()


def _split(stats):
    mu, logvar = tf.split(stats, 2, axis=-1)
    return mu, tf.clip_by_value(logvar, -_LOGVAR_LIMIT, _LOGVAR_LIMIT)


def product_of_experts(*experts):
    """Posterior (mu, logvar) of the prior N(0, 1) times each (mu, logvar) expert."""
    precision = 1.0 + sum(tf.exp(-lv) for _, lv in experts)
    mu = sum(m * tf.exp(-lv) for m, lv in experts) / precision
    return mu, -tf.math.log(precision)


def kl_divergence(mu, logvar):
    """KL(q || N(0, 1)) per example, summed over the latent."""
    return 0.5 * tf.reduce_sum(tf.exp(logvar) + mu * mu - 1.0 - logvar, axis=-1)


def spectral_loss(target, generated):
    """Multi-resolution STFT loss: spectral convergence plus log-magnitude L1."""
    total = 0.0
    count = 0
    for frame, step in _STFT_RESOLUTIONS:
        if frame > target.shape[-1]:
            continue
        t = tf.abs(tf.signal.stft(target, frame, step))
        g = tf.abs(tf.signal.stft(generated, frame, step))
        convergence = tf.norm(t - g) / (tf.norm(t) + 1e-3)
        log_distance = tf.reduce_mean(tf.abs(tf.math.log(t + 1e-4) - tf.math.log(g + 1e-4)))
        total += convergence + log_distance
        count += 1
    return total / max(count, 1)
