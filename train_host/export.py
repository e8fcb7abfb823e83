"""int8 export: a trained run becomes a bundle the box can play.

Quantization is its own stage. The performer graph (motion window to audio
segment) is converted with full-integer quantization, int8 in and out, calibrated
on motion windows from the training set and on the same windows with stronger
motion (``export.headroom``): calibrated on training windows alone, the int8
ranges clip the louder moments of takes the model never saw. Before conversion
the partials' amplitudes are brought nearer one int8 scale (``balance_partials``)
and the weights put on the int8 grid by GPTQ (``round_weights``) rather than
left to the converter's rounding to nearest. The int8 graph is then run through
the device's own ``Performer`` (the runtime the box uses) on held-out windows and
compared with the float Keras model; that parity figure goes into the manifest.
A model without noise bands is exported without its highest partials
(``train_host.vae.stand_in_partials``), which it learned as a whistle in place
of the sound above them. The graph also gives the model's latent, its last
output (bundle version 6), which the box sends over OSC; its own parity is
measured beside the sound's.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from device.bundle import (LATENT_VERSION, PERFORMER, AudioParams, Manifest, TensorSpec,
                           write_bundle)
from device.runtime import Performer
from train_host.console import Progress, quiet
from train_host.train import CALIBRATION_FILE, Run, config_hash, load_run

log = logging.getLogger(__name__)


def to_int8_tflite(model, representative: np.ndarray) -> bytes:
    """Convert a batch-1 Keras model to a full-integer (int8 in and out) TFLite graph."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8

    def calibration():
        for window in representative:
            yield [window[None].astype(np.float32)]

    converter.representative_dataset = calibration
    return converter.convert()


def gptq(weights: np.ndarray, inputs: np.ndarray, damping: float = 0.01) -> np.ndarray:
    """One dense layer's ``(in, out)`` weights put on TFLite's int8 grid by GPTQ.

    TFLite quantizes a dense layer's weights per output channel, symmetric, in steps
    of the channel's largest magnitude / 127. Rounding each weight to its nearest step
    ignores what the layer is fed: a level head that sums 384 inputs with much
    cancelling lost more to it than every other rounding in the graph together.
    GPTQ (Frantar et al., 2022) rounds one input row at a time and moves the error
    onto the rows not yet rounded, weighted by the inverse Hessian ``inputs.T @
    inputs``, so the layer's output on ``inputs`` changes least. Each channel's
    largest weight is held where it is, so the converter finds the same step and
    its own rounding leaves these values as they are.
    """
    w = weights.astype(np.float64)
    steps = np.abs(w).max(axis=0) / 127
    steps[steps == 0] = 1.0
    held = np.abs(w).argmax(axis=0)         # the row of each channel's largest weight
    kept = w[held, np.arange(w.shape[1])]
    x = inputs.reshape(len(inputs), -1).astype(np.float64)
    hessian = x.T @ x / len(x)
    dead = np.diag(hessian) == 0            # inputs never active: their weights do nothing
    hessian[dead, dead] = 1.0
    hessian += damping * np.mean(np.diag(hessian)) * np.eye(len(w))
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T
    for i in range(len(w)):
        # The errors moved onto this row must not shift a held weight.
        mine = held == i
        w[i, mine] = kept[mine]
        rounded = np.clip(np.round(w[i] / steps), -127, 127) * steps
        error = (w[i] - rounded) / upper[i, i]
        w[i + 1:] -= np.outer(upper[i, i + 1:], error)
        w[i] = rounded
        w[i, mine] = kept[mine]
    return w.astype(weights.dtype)


def dense_layers(part) -> list:
    """The dense layers of one of the performer's sub-models, in the order they run:
    what ``round_weights`` rounds."""
    import keras

    return [layer for layer in part.layers if isinstance(layer, keras.layers.Dense)]


def sub_models(model) -> list:
    """The performer's chain of sub-models (motion encoder, audio decoder)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


# How far ``balance_partials`` evens the partials' int8 steps: each partial's
# amplitude is divided by its calibration range to this power. 0 leaves one step
# for all (the loud low partials set it, the quiet upper ones round to a step or
# two); 1 gives each its own range, but then the fixed sine basis carries the
# partials' levels and its int8 grid, one step per output sample, rounds the
# quiet rows instead. Between the two, both roundings stay small (docs/model.md).
_PARTIAL_BALANCE = 0.75


def partial_amplitudes(model, windows: np.ndarray) -> np.ndarray:
    """(N, partials): the amplitudes a performer graph gives its sine basis for
    ``windows``, the tensor ``balance_partials`` evens."""
    import keras

    encoder, decoder = sub_models(model)
    latent = encoder.predict(windows.astype(np.float32), verbose=0)[0]
    return keras.Model(decoder.input, decoder.get_layer("partials").output).predict(
        latent, verbose=0)


def balance_partials(model, windows: np.ndarray):
    """A copy of the performer graph that plays the same sound in float, with each
    partial's amplitude brought nearer one int8 scale.

    The audio decoder gives its partial amplitudes as one int8 tensor (one scale)
    and multiplies them by a fixed sine basis. Fine-tuned on real songs, a model
    plays a few low partials far louder than the rest (one fold: mean magnitude
    0.47 for the loudest, 0.008 for the median partial, an int8 step of 0.016), so
    int8 rounds most partials to 0 or one step. Here partial *k*'s amplitude is
    divided by ``g_k`` (its largest magnitude on ``windows``, relative to the
    loudest partial's, to the power ``_PARTIAL_BALANCE``) and its basis row
    multiplied by ``g_k``: the product is unchanged, the bundle's format too.
    """
    import keras

    balanced = keras.models.clone_model(model)
    balanced.set_weights(model.get_weights())
    decoder = sub_models(balanced)[1]
    partials, basis = decoder.get_layer("partials"), decoder.get_layer("shape")
    reach = np.abs(partial_amplitudes(balanced, windows)).max(axis=0)
    gain = (np.maximum(reach / max(float(reach.max()), 1e-12), 1e-4) ** _PARTIAL_BALANCE
            ).astype(np.float32)
    kernel, bias = partials.get_weights()
    partials.set_weights([kernel / gain, bias / gain])
    (rows,) = basis.get_weights()
    basis.set_weights([rows * gain[:, None]])
    return balanced


def silenced_partials(run: Run) -> np.ndarray:
    """Rows of the sine basis that the bundle of ``run`` never plays: a model without
    noise bands learned its highest partials as a whistle in place of the sound
    above them (``train_host.vae.stand_in_partials``); one with them keeps all."""
    from train_host.vae import stand_in_partials

    cfg = run.config
    return (np.zeros(0, int) if cfg.model.noise_bands
            else stand_in_partials(cfg.data.hop_samples))


def exported_model(run: Run, *, latent: bool = False):
    """The float graph that the bundle of ``run`` is the int8 form of: the run's
    performer, its ``silenced_partials`` silent."""
    from train_host.vae import performer

    model = performer(run.vae, latent=latent)
    rows = silenced_partials(run)
    return silence_partials(model, rows) if len(rows) else model


def silence_partials(model, rows: np.ndarray):
    """A copy of the performer graph whose audio decoder never plays the partials
    ``rows`` (rows of its sine basis): their amplitudes' weights and biases are 0."""
    import keras

    silent = keras.models.clone_model(model)
    silent.set_weights(model.get_weights())
    partials = sub_models(silent)[1].get_layer("partials")
    kernel, bias = partials.get_weights()
    kernel[:, rows] = 0.0
    bias[rows] = 0.0
    partials.set_weights([kernel, bias])
    return silent


def round_weights(model, windows: np.ndarray, progress=None):
    """A copy of the performer graph with every dense layer's weights rounded by
    ``gptq`` on the activations ``windows`` give, one layer after another in the
    order they run (each layer sees what the already rounded layers before it give).

    The performer is a chain of sub-models (motion encoder, audio decoder); the
    first output of each feeds the next.
    """
    import keras

    rounded = keras.models.clone_model(model)
    rounded.set_weights(model.get_weights())
    given = windows.astype(np.float32)
    for part in sub_models(rounded):
        for layer in dense_layers(part):
            inputs = keras.Model(part.input, layer.input).predict(given, verbose=0)
            kernel, *rest = layer.get_weights()
            layer.set_weights([gptq(kernel, inputs), *rest])
            if progress is not None:
                progress.advance()
        given = part.predict(given, verbose=0)
        given = given[0] if isinstance(given, (list, tuple)) else given
    return rounded


PARITY_TARGET_DB = 30.0
"""The int8 graph's SNR against the float model that a bundle should reach."""

# An activation whose int8 scale is this small never varied on the calibration
# windows: every unit of that layer gives the same value whatever the motion.
_COLLAPSED_SCALE = 1e-6


def refuse_collapsed(graph: bytes, where: str, windows: np.ndarray,
                     audio: AudioParams | None = None, latent_size: int = 0) -> None:
    """Refuse a graph that plays one sound whatever the dancer does.

    Two signs, both checked in TensorFlow's own interpreter without delegates: an
    int8 tensor whose scale is degenerate (every unit of that layer gave the same
    value on every calibration window; LiteRT's XNNPACK delegate fails to prepare
    such a graph, or aborts the process), and the same sound from the box's
    ``Performer`` for every one of ``windows``.
    """
    from device.errors import BundleError

    def refuse(what: str):
        raise BundleError(f"{where}: the model has collapsed: {what}; train again "
                          "(other seed, more data or a lower learning rate)")

    interpreter = reference_interpreter(model_content=graph)
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        name = detail["name"]
        if detail["dtype"] != np.int8 or not len(scales) or name.startswith("tfl.pseudo_qconst"):
            continue
        if float(scales.max()) < _COLLAPSED_SCALE:
            refuse(f"layer {name.split(';')[0]} gives the same output for every motion window")
    performer = Performer(graph, runtime=reference_interpreter, where=where, audio=audio,
                          latent_size=latent_size)
    outputs = []
    for window in windows:
        if performer.noise is not None:   # the same noise each time: compare the model
            performer.noise.rng = np.random.default_rng(0)
        outputs.append(performer(window))
    if len(outputs) > 1 and all(np.array_equal(outputs[0], o) for o in outputs[1:]):
        refuse(f"it gives the same sound for all {len(outputs)} calibration windows")


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of ``test`` against ``reference``, in dB."""
    noise = np.sum((reference - test) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / max(noise, 1e-20)))


def reference_interpreter(**kwargs):
    """TensorFlow's interpreter with its plain built-in kernels, no delegate.

    These are the kernels tflite-runtime 2.14 runs int8 graphs with (its XNNPACK
    delegate takes float graphs only), so this is the box's arithmetic to the
    bit; LiteRT's XNNPACK delegate fuses some int8 steps and rounds less.
    """
    import tensorflow as tf

    return tf.lite.Interpreter(**kwargs, experimental_op_resolver_type=tf.lite.experimental
                               .OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


reference_interpreter.runtime_name = "reference kernels"


def parity(model, graph: bytes, windows: np.ndarray, audio: AudioParams,
           progress=None) -> dict:
    """Float Keras against the int8 graph, one window at a time, in the reference
    kernels (tflite-runtime 2.14 on the box) and in the installed LiteRT runtime.
    A model with noise bands plays the same noise, drawn in the same order, in both.

    ``int8_snr_db`` is the lower of the two: what a box may play. A graph that gives
    its latent has it measured the same way, ``latent_snr_db``.
    """
    from train_host.vae import graph_voice, latent_output_size

    def each(run):
        for w in windows:
            yield run(w)
            if progress is not None:
                progress.advance()

    floats = graph_voice(model, audio.sample_rate, seed=0)
    reference = np.stack(list(each(lambda w: floats(w[None])[0])))
    latent_size = latent_output_size(model)
    if latent_size:
        latent = np.concatenate([model(w[None], training=False)[-1].numpy() for w in windows])
    by_kernels, latent_by_kernels = {}, {}
    for runtime in (reference_interpreter, "auto"):
        performer = Performer(graph, runtime=runtime, where="exported graph", audio=audio,
                              noise_rng=np.random.default_rng(0), latent_size=latent_size)
        quantized, latents = [], []
        for segment in each(performer):
            quantized.append(segment)
            latents.append(performer.latent())   # the window just played
        by_kernels[performer.runtime] = round(snr_db(reference, np.stack(quantized)), 2)
        if latent_size:
            latent_by_kernels[performer.runtime] = round(snr_db(latent, np.stack(latents)), 2)
    worst = min(by_kernels, key=by_kernels.get)
    metrics = {"int8_snr_db": by_kernels[worst], "int8_runtime": worst,
               "int8_snr_db_by_runtime": by_kernels}
    if latent_size:
        metrics["latent_snr_db"] = min(latent_by_kernels.values())
    return metrics


def calibration_windows(run: Run) -> dict[str, np.ndarray]:
    """The motion windows ``train`` kept in the run folder for export: ``train`` and
    ``validation``, or one line saying they are missing or unreadable."""
    from device.errors import DanceSamplerError

    path = run.path / CALIBRATION_FILE
    try:
        with np.load(path) as saved:
            return {part: saved[part] for part in ("train", "validation")}
    except (OSError, KeyError, ValueError) as exc:
        raise DanceSamplerError(f"{path}: cannot read the run's calibration windows ({exc}); "
                                "a run folder written by train has them") from None


_PLAYS_RUN_WINDOWS = 16


def snr_against_run_db(bundle, run: Run) -> float:
    """``parity``'s ``int8_snr_db`` of ``bundle``'s graph against ``run``'s float model,
    on the run's first held-out calibration windows: the measure export recorded in
    the bundle, taken again. Another run of the same config, trained elsewhere or
    again, gives about 0 dB."""
    windows = calibration_windows(run)["validation"][:_PLAYS_RUN_WINDOWS]
    return parity(exported_model(run, latent=True), bundle.performer, windows,
                  bundle.manifest.audio)["int8_snr_db"]


def least_snr_of_its_run_db(bundle) -> float:
    """The least ``snr_against_run_db`` that says ``bundle`` is the int8 form of a run:
    10 dB under what export measured, or under ``PARITY_TARGET_DB`` if that was more."""
    exported = bundle.manifest.training.get("metrics", {}).get("int8_snr_db", PARITY_TARGET_DB)
    return min(exported, PARITY_TARGET_DB) - 10.0


def export(run: Run | str | Path, out: str | Path, *, name: str | None = None,
           created: str | None = None) -> Path:
    """Write the int8 bundle for a run. ``created`` fixes the timestamp (reproducible builds)."""
    run = run if isinstance(run, Run) else load_run(run)
    cfg, data = run.config, run.config.data
    calibration = calibration_windows(run)
    # The bundle, and its parity, are of the model without its silenced partials.
    model = exported_model(run, latent=True)
    audio = AudioParams(data.sample_rate, data.segment_samples, data.hop_samples)
    bands = cfg.model.noise_bands
    silenced_hz = [round((int(k) + 1) * data.fps, 3) for k in silenced_partials(run)]
    if silenced_hz:
        log.info("silenced the %d highest partials, the loss's stand-ins for the sound "
                 "above them (%s Hz)", len(silenced_hz), ", ".join(f"{f:g}" for f in silenced_hz))
    started = time.monotonic()
    windows = calibration["train"][:cfg.export.representative_windows]
    stronger = np.clip(windows * np.float32(cfg.export.headroom), 0.0, 1.0)
    representative = np.concatenate([windows, stronger]) if cfg.export.headroom > 1 else windows
    log.info("rounding the weights (GPTQ) and converting to int8 …")
    with quiet() as screen:
        rounded = round_weights(balance_partials(model, representative), representative, Progress(
            "rounding the weights", sum(len(dense_layers(part)) for part in sub_models(model)),
            screen))
        graph = to_int8_tflite(rounded, representative)
        refuse_collapsed(graph, str(run.path), representative, audio, cfg.model.latent_size)
    log.info("measuring the int8 graph against the float model in both runtimes …")
    with quiet() as screen:
        held_out = calibration["validation"]
        metrics = parity(model, graph, held_out, audio,
                         Progress("int8 against float", 3 * len(held_out), screen))
    log.info("exported %d bytes in %.1f s; int8 against float: %s dB SNR",
             len(graph), time.monotonic() - started,
             ", ".join(f"{v:.1f} ({k})" for k, v in metrics["int8_snr_db_by_runtime"].items()))
    if metrics["int8_snr_db"] < PARITY_TARGET_DB:
        log.warning("the int8 graph is only %.1f dB from the float model (a bundle should "
                    "reach %.0f dB): it will sound audibly unlike the model that was trained",
                    metrics["int8_snr_db"], PARITY_TARGET_DB)
    history = run.info["history"][-1] if run.info["history"] else {}
    manifest = Manifest(
        name=name or Path(out).stem,
        created=created or _created(),
        fps=data.fps,
        motiongram=cfg.motiongram,
        motion_gain=cfg.motion_gain,
        audio=audio,
        window_frames=data.window_frames,
        latent_size=cfg.model.latent_size,
        input=TensorSpec((1, data.window_frames, cfg.motiongram.features), "int8"),
        output=TensorSpec((1, data.segment_samples), "int8"),
        level=TensorSpec((1, 1), "int8"),
        noise=TensorSpec((1, bands), "int8") if bands else None,
        latent=TensorSpec((1, cfg.model.latent_size), "int8"),
        format_version=LATENT_VERSION,
        style_centroids=run.info["style_centroids"],
        # Nothing here may vary between two builds of the same config (no wall
        # times, no folder names): a rebuilt bundle must be byte-identical.
        training={
            "config_hash": config_hash(cfg),
            "data": run.info["data"],
            "examples": run.info["examples"],
            "epochs": cfg.training.epochs,
            "silenced_partials_hz": silenced_hz,
            "metrics": {**metrics,
                        **{k: round(v, 4) for k, v in history.items()
                           if k in ("val_motion_spectral", "train_motion_spectral")}},
        },
    )
    return write_bundle(out, manifest, {PERFORMER: graph})


def _created() -> str:
    """Now, or SOURCE_DATE_EPOCH where a reproducible build sets it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (datetime.fromtimestamp(int(epoch), timezone.utc) if epoch
              else datetime.now(timezone.utc))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
