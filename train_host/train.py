"""Training the joint VAE: the loop, the run folder, and loading a run back.

A run folder holds everything needed to export or continue it: ``config.yaml``
(the training config as used), ``weights/`` (the last epoch's weights of each
part), ``best/`` and ``checkpoint/`` (the epoch with the lowest validation loss
and the latest one, kept as training goes), ``run.json`` (input scale, loss history, data summary, style
centroids, config hash) and the motion windows the exporter calibrates and checks
the int8 model with. Runs are named after a hash of their config unless a folder
is given.

Training is reproducible: seeded initialisation, seeded shuffling, stateless
noise and TensorFlow's deterministic ops; the same config and data on the same
kind of machine give the same weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from device.errors import ConfigError
from train_host.config import TrainConfig, TrainingConfig
from train_host.dataset import Examples, consecutive, even_levels

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CALIBRATION_FILE = "calibration.npz"
# Weight of each sub-sampled posterior in the loss. Motion alone is what the box
# runs, so it counts as much as the joint posterior.
_POSTERIORS = (("joint", 1.0), ("motion", 1.0), ("audio", 0.5))
_CALIBRATION_WINDOWS = 1000
# Validation windows scored after each epoch, evenly spread over the held-out
# takes: enough for a steady figure, and an hour of takes still trains in minutes.
_VALIDATION_WINDOWS = 4096
# Weight of the term that keeps the audio decoder's shape output near unit RMS;
# small, since the sound does not depend on it (only its int8 resolution does).
_SHAPE_WEIGHT = 0.1


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
    """Seed everything and make TensorFlow's CPU ops deterministic.

    ``threads`` serve both within an op and between ops: the three posteriors'
    decoders and spectra are independent, and running them side by side took a
    step of the factory recipe from 0.12 to 0.08 s on two cores. Every op is
    deterministic and the graph fixes the order of every sum, so the result does
    not depend on which runs first.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process: keep what it has


def train(cfg: TrainConfig, train_set: Examples, validation: Examples, out: Path,
          *, data_summary: dict | None = None, init_from: Run | None = None) -> Run:
    """Train on ``train_set`` and write the run folder ``out``.

    A fresh model, or with ``init_from`` a copy of that run's model fine-tuned on
    the new takes (same architecture and parameters required, but for noise bands a
    model without them may gain: the new output starts from scratch; its input
    scale is kept, so the motion it learned still means the same). Training ends after
    ``training.epochs`` or ``training.max_steps``, whichever comes first. The run
    keeps the last epoch's weights: the spectral loss's log floor makes the
    validation loss a poor judge of which epoch sounds best, so the epoch with
    the lowest validation loss is kept beside it, in ``best/``, to compare.
    With ``training.even_levels``, the audio of ``train_set`` and ``validation``
    is first scaled in place, one gain per take (``dataset.even_levels``).
    """
    import tensorflow as tf

    from train_host import vae as vae_mod

    set_determinism(cfg.seed, cfg.training.threads)
    data, t = cfg.data, cfg.training
    if t.even_levels:
        gains = even_levels(train_set, validation)
        log.info("evened the takes' levels: gains %s dB", ", ".join(
            f"{g:+.1f}" for g in gains.values()))
    if init_from is not None:
        _check_same_model(cfg, init_from)
        scale = float(init_from.info["input_scale"])
    else:
        scale = float(1.0 / max(train_set.motion.std(), 1e-4))
    model = vae_mod.build(window_frames=data.window_frames, features=cfg.motiongram.features,
                          segment_samples=data.segment_samples,
                          hop_samples=data.hop_samples,
                          latent_size=cfg.model.latent_size,
                          hidden_units=cfg.model.hidden_units, input_scale=scale,
                          noise_bands=cfg.model.noise_bands)
    if init_from is not None:
        _copy_weights(init_from.vae, model)
        log.info("fine-tuning %s%s", init_from.path,
                 f" (its noise output of {cfg.model.noise_bands} bands is new)"
                 if cfg.model.noise_bands != init_from.config.model.noise_bands else "")
    variables = model.trainable_variables
    optimizer = tf.keras.optimizers.Adam(t.learning_rate)
    log_mel = (vae_mod.LogMel(data.sample_rate, data.segment_samples)
               if t.mel_weight or t.spread_weight or t.onset_weight else None)
    chroma = (vae_mod.SegmentChroma(data.sample_rate, data.segment_samples)
              if t.chroma_weight or t.kept_pitch_weight else None)
    # Each training example's take as 0 .. takes-1, for the spread and onset losses.
    take_ids, take_index = np.unique(train_set.take, return_inverse=True)
    take_index = take_index.astype(np.int32)
    follows = consecutive(train_set) if t.onset_weight else None
    kept_db = None
    if t.dynamics_weight:
        if init_from is None:
            raise ConfigError("training.dynamics_weight: keeps the dynamics of the model "
                              "fine-tuned from; set it to 0 or give --init-from")
        kept_db = kept_levels_db(init_from.vae, train_set.motion, t)
    kept_pitch = None
    if t.kept_pitch_weight:
        if init_from is None:
            raise ConfigError("training.kept_pitch_weight: keeps the pitch classes of the "
                              "model fine-tuned from; set it to 0 or give --init-from")
        kept_pitch = kept_pitch_classes(init_from.vae, train_set.motion, chroma, t.batch_size)
    noise_renderer = (vae_mod.NoiseRenderer(cfg.model.noise_bands, data.segment_samples,
                                            data.sample_rate) if cfg.model.noise_bands else None)

    def losses(x, y, beta, seed, training, takes=None, before=None, kept=None, pitch=None):
        # In training the motion encoder sees the window with noise on it (in
        # units of the input scale); the motion decoder is still asked for the
        # clean window.
        heard = x
        if training and t.motion_noise:
            noise = tf.random.stateless_normal(tf.shape(x), seed=tf.stack([seed, len(_POSTERIORS)]))
            heard = x + (t.motion_noise / scale) * noise
        # The true segments' log-mel spectra, once for every term that compares with them.
        true_mel = log_mel(y) if log_mel is not None else None
        true_chroma = chroma(y) if t.chroma_weight else None
        em = vae_mod.expert(model.motion_encoder(heard, training=training))
        ea = vae_mod.expert(model.audio_encoder(y, training=training))
        experts = {"joint": (em, ea), "motion": (em,), "audio": (ea,)}
        terms = {}
        total = 0.0
        for i, (name, weight) in enumerate(_POSTERIORS):
            mu, logvar = vae_mod.product_of_experts(*experts[name])
            noise = tf.random.stateless_normal(tf.shape(mu), seed=tf.stack([seed, i]))
            z = mu + tf.exp(0.5 * logvar) * noise if training else mu
            shape, level, *bands = model.audio_decoder(z, training=training)
            sound = shape
            if noise_renderer is not None:
                # Fresh noise for every segment and step, as the box draws it.
                sound = shape + noise_renderer(bands[0], tf.stack([seed, 10 + 2 * i]))
            audio = vae_mod.synthesize(sound, level)
            motion = model.motion_decoder(z, training=training)
            spectral = vae_mod.spectral_loss(y, audio)
            waveform = tf.reduce_mean(tf.square(y - audio))
            motion_error = tf.reduce_mean(tf.square(x * scale - motion))
            kl = tf.reduce_mean(vae_mod.kl_divergence(mu, logvar))
            chord = (vae_mod.chroma_loss(chroma, true_chroma, audio) if t.chroma_weight
                     else 0.0)
            total += weight * (t.spectral_weight * spectral + t.waveform_weight * waveform
                               + t.loudness_weight * vae_mod.loudness_loss(y, audio)
                               + t.motion_weight * motion_error + beta * kl
                               + (t.mel_weight * vae_mod.log_mel_loss(log_mel, true_mel, audio)
                                  if t.mel_weight else 0.0)
                               + t.chroma_weight * chord
                               + _SHAPE_WEIGHT * vae_mod.shape_level_penalty(shape))
            terms[f"{name}_spectral"] = spectral
            terms[f"{name}_kl"] = kl
            if t.chroma_weight:
                # The pitch-class term as it enters the loss: over the posteriors, weighted.
                terms["chroma"] = terms.get("chroma", 0.0) + weight * chord

        def decoded(window):
            # What the box plays from: the motion expert's mean for the window as
            # it is, no noise on the motion and no sampled latent, whose own
            # scatter would otherwise pass for the sound moving.
            return model.audio_decoder(model.motion_encoder(window)[0], training=training)

        def box(outputs, stream):
            # The segment the box plays for the decoder's ``outputs``.
            shape, level, *bands = outputs
            if noise_renderer is not None:
                shape = shape + noise_renderer(bands[0], tf.stack([seed, stream]))
            return vae_mod.synthesize(shape, level)

        box_terms = takes is not None and (t.spread_weight or before is not None)
        here = decoded(x) if kept is not None or pitch is not None or box_terms else None
        if kept is not None:
            dynamics = vae_mod.dynamics_loss(vae_mod.level_db(here[1]), kept)
            total += t.dynamics_weight * dynamics
            terms["box_dynamics"] = dynamics
        if pitch is not None:
            # The partials alone: the pitch is theirs, and the noise is drawn afresh.
            held = vae_mod.kept_pitch_loss(chroma, pitch, vae_mod.synthesize(here[0], here[1]))
            total += t.kept_pitch_weight * held
            terms["box_pitch"] = held
        if box_terms:
            played = box(here, 99)
            if t.spread_weight:
                spread = vae_mod.spread_loss(log_mel, true_mel, played, takes, len(take_ids))
                total += t.spread_weight * spread
                terms["box_spread"] = spread
            if before is not None:
                x_before, y_before, has_before = before
                onset = vae_mod.onset_loss(log_mel, true_mel, log_mel(y_before), played,
                                           box(decoded(x_before), 98), has_before, takes,
                                           len(take_ids))
                total += t.onset_weight * onset
                terms["box_onset"] = onset
        terms["total"] = total
        return terms

    @tf.function(reduce_retracing=True)
    def step(x, y, beta, seed, takes, before, kept, pitch):
        with tf.GradientTape() as tape:
            terms = losses(x, y, beta, seed, True, takes, before, kept, pitch)
        optimizer.apply_gradients(zip(tape.gradient(terms["total"], variables), variables))
        return terms

    @tf.function(reduce_retracing=True)
    def evaluate(x, y):
        return losses(x, y, 0.0, tf.constant(0, tf.int64), False)

    rng = np.random.default_rng(cfg.seed)
    batches_per_epoch = -(-len(train_set) // t.batch_size)
    total_steps = t.epochs * batches_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    # The KL weight rises linearly over kl_anneal_epochs' worth of steps, and
    # always within the first third of training, so a step budget that ends
    # training early still trains with the full weight for a while.
    anneal = min(t.kl_anneal_epochs * batches_per_epoch, total_steps // 3)
    log.info("training: %d examples, %d steps of %d (%.1f epochs), %d validation examples",
             len(train_set), total_steps, t.batch_size, total_steps / batches_per_epoch,
             len(validation))
    scored = validation.subset(np.unique(np.linspace(0, len(validation) - 1,
                                                    _VALIDATION_WINDOWS).astype(int))) \
        if len(validation) > _VALIDATION_WINDOWS else validation
    progress = _progress_bar(batches_per_epoch)
    history = []
    steps = 0
    best = float("inf")
    started = time.monotonic()
    checkpoint = out / "checkpoint"
    for epoch in range(t.epochs):
        if steps >= total_steps:
            break
        order = rng.permutation(len(train_set))
        sums: dict[str, float] = {}
        batches = 0
        bar = progress(epoch)
        for first in range(0, len(order), t.batch_size):
            if steps >= total_steps:
                break
            beta = t.kl_weight * min(1.0, (steps + 1) / anneal) if anneal else t.kl_weight
            index = np.sort(order[first:first + t.batch_size])
            before = None
            if follows is not None:
                # Each example's predecessor (itself where it has none: masked out).
                prior = np.where(follows[index], index - 1, index)
                before = (tf.constant(train_set.motion[prior]),
                          tf.constant(train_set.audio[prior]),
                          tf.constant(follows[index], tf.float32))
            terms = step(tf.constant(train_set.motion[index]), tf.constant(train_set.audio[index]),
                         tf.constant(beta, tf.float32), tf.constant(steps, tf.int64),
                         tf.constant(take_index[index]), before,
                         None if kept_db is None else tf.constant(kept_db[index]),
                         None if kept_pitch is None else tf.constant(kept_pitch[index]))
            steps += 1
            batches += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            if bar is not None:
                bar.update(batches, [("loss", float(terms["total"]))])
        record = {"epoch": epoch + 1, "steps": steps, "beta": beta,
                  **{f"train_{k}": v / batches for k, v in sums.items()}}
        if len(validation):
            record.update({f"val_{k}": v for k, v in
                           _mean_terms(evaluate, scored, t.batch_size).items()})
        history.append(record)
        elapsed = time.monotonic() - started
        log.info("epoch %d/%d  train %.4f  motion-only spectral %.4f  val %.4f  (%.0f s; "
                 "step %d of %d, about %s left)",
                 epoch + 1, t.epochs, record["train_total"], record["train_motion_spectral"],
                 record.get("val_motion_spectral", float("nan")), elapsed, steps, total_steps,
                 _minutes(elapsed / steps * (total_steps - steps)))
        # Keep the latest epoch (to look at, or to continue from) and the best one.
        _save_weights(model, checkpoint)
        score = record.get("val_motion_spectral", record["train_motion_spectral"])
        if score < best:
            best, best_epoch = score, epoch + 1
            _save_weights(model, out / "best")
    log.info("lowest validation loss at epoch %d of %d (%.4f, kept in best/); the run "
             "keeps the last epoch", best_epoch, len(history), best)

    level_db = None
    if t.calibrate_level:
        level_db = calibrate_level(model, train_set, cfg)
        log.info("the box's level on the training takes set to theirs: %+.1f dB", level_db)
    latents = vae_mod.motion_latent(model, train_set.motion)
    centroids = {str(label): latents[train_set.labels == label].mean(axis=0).round(6).tolist()
                 for label in sorted(set(train_set.labels.tolist())) if label}
    info = {"input_scale": scale, "history": history, "style_centroids": centroids,
            "best_epoch": best_epoch, "steps": steps, "config_hash": config_hash(cfg),
            "level_calibration_db": level_db,
            "init_from": str(init_from.path) if init_from is not None else None,
            "train_seconds": round(time.monotonic() - started, 1),
            "data": data_summary or {}, "examples": {"train": len(train_set),
                                                    "validation": len(validation)}}
    run = Run(out, cfg, model, info)
    _save(run, train_set, validation)
    from train_host.plots import write_plots

    # Held-out takes where there are any: the spectrograms then show sound the
    # model never heard.
    write_plots(out, history, model, validation if len(validation) else train_set,
                motiongram_params=cfg.motiongram, sample_rate=cfg.data.sample_rate,
                seed=cfg.seed)
    return run


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _progress_bar(batches: int):
    """A per-epoch progress bar on a terminal; nothing in a log file (epoch lines suffice)."""
    import sys

    if not sys.stderr.isatty():
        return lambda epoch: None
    import keras

    return lambda epoch: keras.utils.Progbar(batches, stateful_metrics=["loss"])


def _save_weights(model, folder: Path) -> None:
    """All parts' weights into ``folder``, replaced as a whole (never half old, half new)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, part in model.parts.items():
        part.save_weights(tmp / f"{name}.weights.h5")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_weights(model, folder: Path) -> None:
    from device.errors import DanceSamplerError

    for name, part in model.parts.items():
        try:
            part.load_weights(folder / f"{name}.weights.h5")
        except ValueError as exc:
            raise DanceSamplerError(f"{folder / (name + '.weights.h5')}: these weights do not fit "
                               f"this version's model layout ({str(exc).splitlines()[0]}); "
                               "train the run again") from None


def _copy_weights(base, model) -> None:
    """Every layer's weights from ``base``'s model into ``model``'s, part by part and
    layer by layer in order; a noise output ``base`` lacks keeps its fresh weights."""
    for name, part in model.parts.items():
        given = [layer for layer in base.parts[name].layers if layer.weights]
        wanted = [layer for layer in part.layers if layer.weights]
        if len(wanted) == len(given) + 1 and wanted[-1].name == "noise":
            wanted = wanted[:-1]
        for source, target in zip(given, wanted, strict=True):
            target.set_weights(source.get_weights())


def _check_same_model(cfg: TrainConfig, base: Run) -> None:
    """Fine-tuning needs the same architecture and the same motion and audio; a
    model without noise bands may gain them."""
    keys = ("motiongram", "motion_gain")
    differ = [k for k in keys if getattr(cfg, k) != getattr(base.config, k)]
    mine, theirs = cfg.model, base.config.model
    if dataclasses.replace(mine, noise_bands=0) != dataclasses.replace(theirs, noise_bands=0) \
            or theirs.noise_bands not in (0, mine.noise_bands):
        differ.append("model")
    for k in ("fps", "sample_rate", "segment_seconds", "window_frames"):
        if getattr(cfg.data, k) != getattr(base.config.data, k):
            differ.append(f"data.{k}")
    if differ:
        raise ConfigError(f"{base.path}: cannot fine-tune it with this config: "
                          f"{', '.join(differ)} differ")


def _box_outputs(vae, motion: np.ndarray, batch_size: int):
    """``vae``'s box path (the motion expert's mean into the audio decoder) over
    ``motion``: the decoder's outputs, a batch at a time."""
    from train_host import vae as vae_mod

    for i in range(0, len(motion), batch_size):
        yield vae.audio_decoder(vae_mod.motion_latent(vae, motion[i:i + batch_size]))


def _box_level_db(vae, motion: np.ndarray, batch_size: int) -> np.ndarray:
    """The level (dB) that ``vae``'s box path gives each window, float32."""
    from train_host import vae as vae_mod

    return np.concatenate([vae_mod.level_db(outputs[1]).numpy()
                           for outputs in _box_outputs(vae, motion, batch_size)]
                          ).astype(np.float32)


def kept_levels_db(vae, motion: np.ndarray, t: TrainingConfig) -> np.ndarray:
    """The level (dB) the dynamics loss keeps for each window: ``vae``'s own
    (``_box_level_db``), its movement scaled by ``t.dynamics_depth``, and none
    deeper than ``t.dynamics_floor_db`` under their median (0: no floor)."""
    kept = t.dynamics_depth * _box_level_db(vae, motion, t.batch_size)
    if t.dynamics_floor_db:
        kept = np.maximum(kept, np.float32(np.median(kept) - t.dynamics_floor_db))
    return kept


def kept_pitch_classes(vae, motion: np.ndarray, chroma, batch_size: int) -> np.ndarray:
    """The pitch-class profile (``chroma``, a ``vae.SegmentChroma``) of the partials
    ``vae``'s box path plays for each window, (N, 12) float32: what the kept
    pitch-class loss keeps."""
    from train_host import vae as vae_mod

    return np.concatenate([chroma(vae_mod.synthesize(shape, level)).numpy()
                           for shape, level, *_ in _box_outputs(vae, motion, batch_size)]
                          ).astype(np.float32)


def box_level_offset_db(model, examples: Examples, cfg: TrainConfig) -> float:
    """How much louder (dB) the box plays the takes of ``examples`` than their sound:
    per take, the median over its audible segments of the motion-only segment's
    level minus the true one's (``evaluate.level_offset_error``), then the median
    over the takes, each counting once as in ``dataset.even_levels``."""
    from train_host.evaluate import level_offset_error, loudness_db
    from train_host.vae import box_voice

    play = box_voice(model, cfg.data.sample_rate, cfg.seed)
    offsets = []
    for take in np.unique(examples.take):
        rows = np.flatnonzero(examples.take == take)
        offset, _, _ = level_offset_error(loudness_db(play(examples.motion[rows], 512)),
                                          loudness_db(examples.audio[rows]))
        if offset is not None:
            offsets.append(offset)
    return float(np.median(offsets)) if offsets else 0.0


def calibrate_level(model, examples: Examples, cfg: TrainConfig) -> float:
    """Scale the audio decoder's level output so the box plays the takes of
    ``examples`` at their own level; returns the gain, dB.

    The waveform and spectral-convergence losses are least wrong for a fainter
    segment wherever the motion does not say which notes come, so a model trained
    on songs it cannot predict note for note plays under their level even with the
    loudness loss. The level output is linear and multiplies the whole segment
    (``vae.synthesize``), so scaling its weights and bias scales the sound and
    nothing else."""
    gain_db = -box_level_offset_db(model, examples, cfg)
    layer = model.audio_decoder.get_layer("level")
    layer.set_weights([w * np.float32(10.0 ** (gain_db / 20.0)) for w in layer.get_weights()])
    return gain_db


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
    _save_weights(run.vae, run.path / "weights")
    (run.path / RUN_FILE).write_text(json.dumps(run.info, indent=1) + "\n")
    rng = np.random.default_rng(run.config.seed)
    pick = lambda ex: ex.motion[np.sort(rng.permutation(len(ex))[:_CALIBRATION_WINDOWS])]
    np.savez_compressed(run.path / CALIBRATION_FILE, train=pick(train_set),
                        validation=pick(validation) if len(validation) else pick(train_set))


def load_run(path: str | Path) -> Run:
    """Load a run folder written by ``train``."""
    from device.config import load_config
    from device.errors import DanceSamplerError
    from train_host import vae as vae_mod

    path = Path(path)
    missing = [name for name in ("config.yaml", RUN_FILE, "weights") if not (path / name).exists()]
    if missing:
        raise DanceSamplerError(f"{path}: not a run folder (no {', '.join(missing)}); pass a "
                                "folder that train wrote, or a bundle exported from one")
    cfg = load_config(path / "config.yaml", TrainConfig)
    info = json.loads((path / RUN_FILE).read_text())
    model = vae_mod.build(window_frames=cfg.data.window_frames,
                          features=cfg.motiongram.features,
                          segment_samples=cfg.data.segment_samples,
                          hop_samples=cfg.data.hop_samples,
                          latent_size=cfg.model.latent_size,
                          hidden_units=cfg.model.hidden_units, input_scale=info["input_scale"],
                          noise_bands=cfg.model.noise_bands)
    _load_weights(model, path / "weights")
    return Run(path, cfg, model, info)


def find_run(path: str | Path, runs: Path = Path("runs")) -> Run:
    """A run folder, or the run a bundle was exported from: one in ``runs`` with the
    bundle's config hash whose float model the bundle's int8 graph plays
    (``train_host.export.snr_against_run_db``). A run trained again from the same config,
    on another processor say, has other weights, and is refused, not fine-tuned from
    in the bundle's name."""
    from device.bundle import SUFFIX, read_bundle
    from device.errors import BundleError
    from train_host.export import least_snr_of_its_run_db, snr_against_run_db

    path = Path(path)
    if path.is_dir():
        return load_run(path)
    if path.suffix != SUFFIX:
        raise BundleError(f"{path}: expected a run folder or a {SUFFIX} bundle")
    bundle = read_bundle(path)
    if not bundle.has_graph:
        raise BundleError(f"{path}: a {bundle.manifest.voice} voice was never trained, so "
                          "nothing can be fine-tuned from it; pass a model bundle or a run folder")
    digest = bundle.manifest.training.get("config_hash")
    found = sorted(p for p in runs.glob(f"*{digest}*") if (p / RUN_FILE).exists()) if digest else []
    if not found:
        raise BundleError(f"{path}: the run it was exported from (config {digest}) is not in "
                          f"{runs}/; pass that run folder instead")
    needed = least_snr_of_its_run_db(bundle)
    others = []
    for folder in reversed(found):
        run = load_run(folder)
        played = snr_against_run_db(bundle, run)
        if played >= needed:
            return run
        others.append(f"{folder} ({played:.1f} dB)")
    raise BundleError(f"{path}: {runs}/ holds runs of its config {digest} but not its weights "
                      f"(its int8 graph against their float models: {', '.join(others)}; "
                      f"{needed:.0f} dB or more expected): trained again since it was exported; "
                      "pass the run folder it came from, or one of these to fine-tune from "
                      "its own weights")
