"""Training the joint VAE: the loop, the run folder, and loading a run back.

A run folder holds everything needed to export or continue it: ``config.yaml``
(the training config as used), the weights of each part, ``run.json`` (input
scale, shapes, loss history, data summary, style centroids) and the motion
windows the exporter calibrates and checks the int8 model with. Runs are named
after a hash of their config, so the same config lands in the same folder.

Training is reproducible: seeded initialisation, seeded shuffling, stateless
noise and TensorFlow's deterministic ops; the same config and data on the same
kind of machine give the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from device.config import TrainConfig
from train_host.dataset import Examples

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CALIBRATION_FILE = "calibration.npz"
# Weight of each sub-sampled posterior in the loss. Motion alone is what the box
# runs, so it counts as much as the joint posterior.
_POSTERIORS = (("joint", 1.0), ("motion", 1.0), ("audio", 0.5))
_CALIBRATION_WINDOWS = 1000


@dataclass
class Run:
    """A trained (or loaded) run."""

    path: Path
    config: TrainConfig
    vae: object  # train_host.vae.JointVAE; TensorFlow loads only with this module
    info: dict


def config_hash(cfg: TrainConfig) -> str:
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def set_determinism(seed: int, threads: int) -> None:
    """Seed everything and make TensorFlow's CPU ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process: keep what it has


def train(cfg: TrainConfig, train_set: Examples, validation: Examples, out: Path,
          *, data_summary: dict | None = None) -> Run:
    """Train a fresh model on ``train_set``; write the run folder ``out``."""
    import tensorflow as tf

    from train_host import vae as vae_mod

    set_determinism(cfg.seed, cfg.training.threads)
    data, t = cfg.data, cfg.training
    scale = float(1.0 / max(train_set.motion.std(), 1e-4))
    model = vae_mod.build(window_frames=data.window_frames, features=cfg.motiongram.features,
                          segment_samples=data.segment_samples,
                          latent_size=cfg.model.latent_size,
                          hidden_units=cfg.model.hidden_units, input_scale=scale)
    variables = model.trainable_variables
    optimizer = tf.keras.optimizers.Adam(t.learning_rate)

    def losses(x, y, beta, seed, training):
        em = vae_mod._split(model.motion_encoder(x, training=training))
        ea = vae_mod._split(model.audio_encoder(y, training=training))
        experts = {"joint": (em, ea), "motion": (em,), "audio": (ea,)}
        terms = {}
        total = 0.0
        for i, (name, weight) in enumerate(_POSTERIORS):
            mu, logvar = vae_mod.product_of_experts(*experts[name])
            noise = tf.random.stateless_normal(tf.shape(mu), seed=tf.stack([seed, i]))
            z = mu + tf.exp(0.5 * logvar) * noise if training else mu
            audio = model.audio_decoder(z, training=training)
            motion = model.motion_decoder(z, training=training)
            spectral = vae_mod.spectral_loss(y, audio)
            waveform = tf.reduce_mean(tf.square(y - audio))
            motion_error = tf.reduce_mean(tf.square(x * scale - motion))
            kl = tf.reduce_mean(vae_mod.kl_divergence(mu, logvar))
            total += weight * (t.spectral_weight * spectral + t.waveform_weight * waveform
                               + t.motion_weight * motion_error + beta * kl)
            terms[f"{name}_spectral"] = spectral
            terms[f"{name}_kl"] = kl
        terms["total"] = total
        return terms

    @tf.function(reduce_retracing=True)
    def step(x, y, beta, seed):
        with tf.GradientTape() as tape:
            terms = losses(x, y, beta, seed, True)
        optimizer.apply_gradients(zip(tape.gradient(terms["total"], variables), variables))
        return terms

    @tf.function(reduce_retracing=True)
    def evaluate(x, y):
        return losses(x, y, 0.0, tf.constant(0, tf.int64), False)

    rng = np.random.default_rng(cfg.seed)
    history = []
    steps = 0
    started = time.monotonic()
    for epoch in range(t.epochs):
        beta = t.kl_weight * min(1.0, (epoch + 1) / t.kl_anneal_epochs) if t.kl_anneal_epochs \
            else t.kl_weight
        order = rng.permutation(len(train_set))
        sums: dict[str, float] = {}
        batches = 0
        for first in range(0, len(order), t.batch_size):
            index = np.sort(order[first:first + t.batch_size])
            terms = step(tf.constant(train_set.motion[index]), tf.constant(train_set.audio[index]),
                         tf.constant(beta, tf.float32), tf.constant(steps, tf.int64))
            steps += 1
            batches += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        record = {"epoch": epoch + 1, "beta": beta,
                  **{f"train_{k}": v / batches for k, v in sums.items()}}
        if len(validation):
            record.update({f"val_{k}": v for k, v in
                           _mean_terms(evaluate, validation, t.batch_size).items()})
        history.append(record)
        log.info("epoch %d/%d  train %.4f  motion-only spectral %.4f  val %.4f  (%.0f s)",
                 epoch + 1, t.epochs, record["train_total"], record["train_motion_spectral"],
                 record.get("val_motion_spectral", float("nan")), time.monotonic() - started)

    latents = vae_mod.motion_latent(model, train_set.motion)
    centroids = {str(label): latents[train_set.labels == label].mean(axis=0).round(6).tolist()
                 for label in sorted(set(train_set.labels.tolist())) if label}
    info = {"input_scale": scale, "history": history, "style_centroids": centroids,
            "train_seconds": round(time.monotonic() - started, 1),
            "data": data_summary or {}, "examples": {"train": len(train_set),
                                                    "validation": len(validation)}}
    run = Run(out, cfg, model, info)
    _save(run, train_set, validation)
    return run


def _mean_terms(evaluate, examples: Examples, batch_size: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    for first in range(0, len(examples), batch_size):
        terms = evaluate(examples.motion[first:first + batch_size],
                         examples.audio[first:first + batch_size])
        n = min(batch_size, len(examples) - first)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
    return {k: v / len(examples) for k, v in sums.items()}


def _save(run: Run, train_set: Examples, validation: Examples) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(run.config),
                                                         sort_keys=False))
    for name, part in run.vae.parts.items():
        part.save_weights(run.path / f"{name}.weights.h5")
    (run.path / RUN_FILE).write_text(json.dumps(run.info, indent=1) + "\n")
    rng = np.random.default_rng(run.config.seed)
    pick = lambda ex: ex.motion[np.sort(rng.permutation(len(ex))[:_CALIBRATION_WINDOWS])]
    np.savez_compressed(run.path / CALIBRATION_FILE, train=pick(train_set),
                        validation=pick(validation) if len(validation) else pick(train_set))


def load_run(path: str | Path) -> Run:
    """Load a run folder written by ``train``."""
    from device.config import load_config
    from train_host import vae as vae_mod

    path = Path(path)
    cfg = load_config(path / "config.yaml", TrainConfig)
    info = json.loads((path / RUN_FILE).read_text())
    model = vae_mod.build(window_frames=cfg.data.window_frames,
                          features=cfg.motiongram.features,
                          segment_samples=cfg.data.segment_samples,
                          latent_size=cfg.model.latent_size,
                          hidden_units=cfg.model.hidden_units, input_scale=info["input_scale"])
    for name, part in model.parts.items():
        part.load_weights(path / f"{name}.weights.h5")
    return Run(path, cfg, model, info)
