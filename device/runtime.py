"""Running the int8 performance graph on the box.

The TFLite runtime is imported here and nowhere else: ``ai_edge_litert`` (LiteRT,
the maintained successor) or ``tflite_runtime`` (2.14, what Raspberry Pi OS
Bookworm's numpy<2 allows), whichever is installed, or the one the config or the
``DANCESAMPLER_RUNTIME`` environment variable names.

The interpreter is created once per model, never per frame. Inputs are quantized
and outputs dequantized with the scale and zero point read from the tensor
details, never from constants, so a re-exported model with other scales just
works. The batch size is fixed at 1.

A graph has one input, the motion window, and one or two outputs. With one, that
output is the audio segment. With two, they are the segment's shape (batch x
segment samples) and its level (batch x 1), and the segment is their product
(train_host.vae.synthesize): the shape stays near unit RMS and the level carries
the loudness, each with its own int8 range, so a quiet segment is as finely
quantized as a loud one (docs/bundle.md). With three, the third gives the
amplitudes of the segment's noise bands (batch x bands): the noise they shape,
drawn afresh each call (``device.noise``), is added to the shape before the
level scales it. A graph may also give its latent (bundle version 6): the
posterior mean the sound is decoded from, which the box sends over OSC and the
sound does not use. The bundle's manifest says so and how big it is, and it is
the output the graph's signature names last (the Keras model's order).

A graph from outside (a bundle flashed or picked by the model button) is first
loaded and run once in a child process (``probe_graph``): the runtimes' graph
readers trust their input, and a crafted or damaged graph can crash them
(segmentation faults in tflite-runtime 2.14), which must take down the child,
not the box or ``flash-model``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from device.errors import BundleError, ModelRuntimeError
from device.noise import NoiseBands

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")
PROBE_TIMEOUT_S = 60.0
"""Longest a child may take to load a graph and run it once."""
_probed: set[tuple[str, str, int]] = set()   # (graph SHA-256, runtime, latent size) that ran


def interpreter_class(runtime: str = "auto"):
    """The ``Interpreter`` class of the runtime asked for (``auto``: the first installed)."""
    runtime = os.environ.get("DANCESAMPLER_RUNTIME", runtime)
    names = RUNTIMES if runtime == "auto" else (runtime,)
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ModelRuntimeError(f"model runtime {runtime!r}: expected 'auto' or one of "
                                f"{', '.join(RUNTIMES)}")
    for name in names:
        try:
            module = importlib.import_module(f"{name}.interpreter")
        except ImportError:
            continue
        return module.Interpreter
    raise ModelRuntimeError(f"no TFLite runtime installed (looked for {', '.join(names)}); "
                            "install ai-edge-litert or tflite-runtime")


class Performer:
    """One motion window in, one audio segment out, through one interpreter.

    ``__call__`` takes a float32 (window_frames, features) array and returns a
    float32 (segment_samples,) array. It reuses its input buffer; it is called
    from the model thread, one call at a time.
    """

    def __init__(self, model: bytes, *, runtime="auto", threads: int = 1,
                 where: str = "model", audio=None, noise_rng: np.random.Generator | None = None,
                 latent_size: int = 0):
        # ``runtime`` may also be an Interpreter-like class (the host passes
        # TensorFlow's own, to run the reference kernels); its ``runtime_name``
        # then names it.
        Interpreter = runtime if callable(runtime) else interpreter_class(runtime)
        self.runtime = getattr(Interpreter, "runtime_name", Interpreter.__module__.split(".")[0])
        try:
            self._interpreter = Interpreter(model_content=model, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{where}: the graph does not load in {self.runtime} ({exc})") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self._latent = self._latent_output(outputs, latent_size, where) if latent_size else None
        if self._latent is not None:
            outputs = [d for d in outputs if d["index"] != self._latent["index"]]
        if len(inputs) != 1 or len(outputs) not in (1, 2, 3):
            raise BundleError(f"{where}: expected one input and one to three output tensors, "
                              f"got {len(inputs)} and {len(outputs)}")
        self._in = inputs[0]
        # By size: the shape (a segment), the noise bands, the level (one value).
        outputs.sort(key=lambda d: int(np.prod(d["shape"])), reverse=True)
        self._out = outputs[0]
        self._level = outputs[-1] if len(outputs) >= 2 else None
        self._noise = outputs[1] if len(outputs) == 3 else None
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        self.output_shape = tuple(int(d) for d in self._out["shape"])
        if self.input_shape[0] != 1 or self.output_shape[0] != 1:
            raise BundleError(f"{where}: batch size must be 1, got input {list(self.input_shape)}")
        if self._level is not None and tuple(self._level["shape"]) != (1, 1):
            raise BundleError(f"{where}: the level output must be [1, 1], got "
                              f"{list(self._level['shape'])}")
        self.noise = None
        if self._noise is not None:
            bands = int(np.prod(self._noise["shape"]))
            if audio is None:
                raise BundleError(f"{where}: the graph has a noise output; its audio "
                                  "parameters are needed to play it")
            if tuple(self._noise["shape"]) != (1, bands) or \
                    not 2 <= bands <= self.output_shape[-1] // 2:
                raise BundleError(f"{where}: the noise output must be [1, bands], got "
                                  f"{list(self._noise['shape'])}")
            self.noise = NoiseBands(bands, segment_samples=audio.segment_samples,
                                    sample_rate=audio.sample_rate, rng=noise_rng)
            if self.output_shape != (1, audio.segment_samples):
                raise BundleError(f"{where}: the graph makes {list(self.output_shape)} "
                                  f"where its audio parameters say [1, {audio.segment_samples}]")
        self._in_scale, self._in_zero = _quantization(self._in)
        self._out_quantization = _quantization(self._out)
        self._level_quantization = _quantization(self._level) if self._level else None
        self._noise_quantization = _quantization(self._noise) if self._noise else None
        self._latent_quantization = _quantization(self._latent) if self._latent else None
        self._buffer = np.zeros(self.input_shape, self._in["dtype"])
        log.info("model: %s, input %s %s, output %s %s%s%s%s", self.runtime,
                 list(self.input_shape), np.dtype(self._in["dtype"]).name,
                 list(self.output_shape), np.dtype(self._out["dtype"]).name,
                 " with level" if self._level else "",
                 f" and {self.noise.bands} noise bands" if self.noise else "",
                 f", latent {latent_size}" if latent_size else "")

    @classmethod
    def of(cls, bundle, *, runtime: str = "auto", threads: int = 1) -> Performer:
        """The performer of a ``device.bundle.Bundle``, checked against its manifest."""
        m = bundle.manifest
        performer = cls(bundle.performer, runtime=runtime, threads=threads,
                        where=str(bundle.path), audio=m.audio,
                        latent_size=m.latent_output_size)
        for what, said, has in (("level", m.level is not None, performer.has_level),
                                ("noise", m.noise is not None, performer.noise is not None)):
            if said != has:
                raise BundleError(f"{bundle.path}: the manifest says the graph has "
                                  f"{'a' if said else 'no'} {what} output, "
                                  f"the graph has {'one' if has else 'none'}")
        return performer

    def _latent_output(self, outputs: list[dict], size: int, where: str) -> dict:
        """The latent among ``outputs``: the one the graph's signature names last."""
        try:
            named = self._interpreter.get_signature_runner().get_output_details()
        except (ValueError, RuntimeError, AttributeError) as exc:
            raise BundleError(f"{where}: the graph has no signature naming its outputs, "
                              f"so its latent cannot be found ({exc})") from None
        if len(outputs) < 3:
            raise BundleError(f"{where}: the manifest says the graph gives its latent, but "
                              f"the graph has only {len(outputs)} outputs")
        if len(named) != len(outputs):
            raise BundleError(f"{where}: the graph's signature names {len(named)} of its "
                              f"{len(outputs)} outputs")
        order = sorted(named, key=lambda name: (len(name), name))   # output_0 … output_10
        latent = next((d for d in outputs if d["index"] == named[order[-1]]["index"]), None)
        if latent is None or tuple(latent["shape"]) != (1, size):
            got = list(latent["shape"]) if latent is not None else "no output tensor"
            raise BundleError(f"{where}: the latent output must be [1, {size}], got {got}")
        return latent

    def latent(self) -> np.ndarray | None:
        """The latent of the last window played (float32, a fresh array), or None
        where the graph does not give it."""
        if self._latent is None:
            return None
        return self._read(self._latent, self._latent_quantization)[0]

    @property
    def has_level(self) -> bool:
        """Whether the graph gives the segment as shape and level (bundle version 2)."""
        return self._level is not None

    def __call__(self, window: np.ndarray) -> np.ndarray:
        if self._in_scale:
            info = np.iinfo(self._buffer.dtype)
            q = np.round(window / self._in_scale) + self._in_zero
            np.clip(q, info.min, info.max, out=q)
            self._buffer[0] = q
        else:
            self._buffer[0] = window
        self._interpreter.set_tensor(self._in["index"], self._buffer)
        self._interpreter.invoke()
        segment = self._read(self._out, self._out_quantization)[0]
        if self._level is None:
            return segment
        if self.noise is not None:
            segment += self.noise.render(self._read(self._noise, self._noise_quantization)[0])
        segment *= self._read(self._level, self._level_quantization)[0, 0]
        return segment

    def _read(self, detail: dict, quantization: tuple[float, int]) -> np.ndarray:
        """An output tensor as float32 (a fresh array), dequantized if it is integer."""
        out = self._interpreter.get_tensor(detail["index"])
        scale, zero = quantization
        if scale:
            return (out.astype(np.float32) - zero) * np.float32(scale)
        return out.astype(np.float32)


def _quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero point) of a tensor; scale 0.0 means the tensor is float."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def probe_graph(model: bytes, *, runtime: str = "auto", where: str = "model",
                audio=None, latent_size: int = 0, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Load ``model`` and run it once on a still window in a child process; a
    ``BundleError`` (one line) if that fails, crashes or hangs. A graph that passed
    once in this process is not probed again. ``audio`` (the bundle's
    ``AudioParams``) lets a graph with a noise output play; ``latent_size``, that
    of a latent output the manifest declares."""
    key = (hashlib.sha256(model).hexdigest(), runtime, latent_size)
    if key in _probed:
        return
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    try:
        audio_arg = (f"{audio.sample_rate},{audio.segment_samples},{audio.hop_samples}"
                     if audio is not None else "")
        result = subprocess.run([sys.executable, "-m", "device.runtime", runtime, where,
                                 audio_arg, str(latent_size)],
                                input=model, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{where}: the graph did not load and run within {timeout:g} s") from None
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise BundleError(f"{where}: the graph crashed the model runtime ({name})")
    if result.returncode != 0:
        said = result.stdout.decode(errors="replace").strip()
        raise BundleError(said or f"{where}: the graph failed in a test run "
                                  f"(exit {result.returncode})")
    _probed.add(key)


def _probe(argv: list[str]) -> int:
    """The child of ``probe_graph``: the graph on stdin; runtime, name, the audio
    parameters (``rate,segment,hop``, or empty) and the latent size as arguments."""
    from device.bundle import AudioParams

    defaults = ["auto", "model", "", "0"]
    runtime, where, audio_arg, latent_arg = (list(argv) + defaults[len(argv):])[:4]
    model = sys.stdin.buffer.read()
    try:
        audio = AudioParams(*map(int, audio_arg.split(","))) if audio_arg else None
        performer = Performer(model, runtime=runtime, where=where, audio=audio,
                              latent_size=int(latent_arg))
        window = np.zeros(performer.input_shape[1:], np.float32)
        if not np.isfinite(performer(window)).all():
            raise BundleError(f"{where}: the graph gives samples that are not finite")
        latent = performer.latent()
        if latent is not None and not np.isfinite(latent).all():
            raise BundleError(f"{where}: the graph gives a latent that is not finite")
    except (BundleError, ModelRuntimeError) as exc:
        said = str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises is the answer
        said = f"{where}: the graph fails in a test run ({type(exc).__name__}: {exc})"
    else:
        return 0
    print(" ".join(said.split()))   # the answer: one line on stdout
    return 1


if __name__ == "__main__":
    logging.disable(logging.INFO)
    sys.exit(_probe(sys.argv[1:]))
