"""Running the int8 performance graph on the box.

The TFLite runtime is imported here and nowhere else: ``ai_edge_litert`` (LiteRT,
the maintained successor) or ``tflite_runtime`` (2.14, what Raspberry Pi OS
Bookworm's numpy<2 allows), whichever is installed, or the one the config or the
``DANCESAMPLER_RUNTIME`` environment variable names.

The interpreter is created once per model, never per frame. Inputs are quantized
and outputs dequantized with the scale and zero point read from the tensor
details, never from constants, so a re-exported model with other scales just
works. The batch size is fixed at 1.
"""

from __future__ import annotations

import importlib
import logging
import os

import numpy as np

from device.errors import BundleError, ModelRuntimeError

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")


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

    def __init__(self, model: bytes, *, runtime: str = "auto", threads: int = 1,
                 where: str = "model"):
        Interpreter = interpreter_class(runtime)
        self.runtime = Interpreter.__module__.split(".")[0]
        try:
            self._interpreter = Interpreter(model_content=model, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{where}: the graph does not load in {self.runtime} ({exc})") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{where}: expected one input and one output tensor, got "
                              f"{len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        self.output_shape = tuple(int(d) for d in self._out["shape"])
        if self.input_shape[0] != 1 or self.output_shape[0] != 1:
            raise BundleError(f"{where}: batch size must be 1, got input {list(self.input_shape)}")
        self._in_scale, self._in_zero = _quantization(self._in)
        self._out_scale, self._out_zero = _quantization(self._out)
        self._buffer = np.zeros(self.input_shape, self._in["dtype"])
        log.info("model: %s, input %s %s, output %s %s", self.runtime, list(self.input_shape),
                 np.dtype(self._in["dtype"]).name, list(self.output_shape),
                 np.dtype(self._out["dtype"]).name)

    @property
    def output_step(self) -> float:
        """The size of one int8 step of the output (0.0 for a float output)."""
        return self._out_scale

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
        out = self._interpreter.get_tensor(self._out["index"])[0]
        if self._out_scale:
            return (out.astype(np.float32) - self._out_zero) * np.float32(self._out_scale)
        return out.astype(np.float32)


def _quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero point) of a tensor; scale 0.0 means the tensor is float."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)
