"""``python -m tests.platform.int8_outputs BUNDLE WINDOWS OUT``: the raw int8
outputs (shape, level and, where the graph has them, noise and latent tensors) of a
bundle's graph in tflite-runtime for each motion window in the ``.npy`` file
WINDOWS, saved to the ``.npz`` file OUT. Run on this machine and inside the arm64
root, to compare the two platforms."""

from __future__ import annotations

import sys

import numpy as np

from device.bundle import read_bundle
from device.runtime import Performer


def main(bundle: str, windows: str, out: str) -> int:
    performer = Performer.of(read_bundle(bundle), runtime="tflite_runtime")
    interpreter = performer._interpreter
    tensors = {"shape": performer._out, "level": performer._level}
    if performer.noise is not None:
        tensors["noise"] = performer._noise
    if performer._latent is not None:
        tensors["latent"] = performer._latent
    outputs = {name: [] for name in tensors}
    for window in np.load(windows):
        performer(window)
        for name, detail in tensors.items():
            outputs[name].append(interpreter.get_tensor(detail["index"])[0].copy())
    np.savez(out, **{name: np.stack(values) for name, values in outputs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
