"""Filtered noise the model controls: the sound above and between its partials.

The partials decoder (train_host.vae) plays sines up to 8.8 kHz at whole
multiples of the frame rate; the noise of real music (cymbals, breath, the air
of a recording, everything above 8.8 kHz) it cannot play. A model with a noise
output gives, per segment, one amplitude for each of ``bands`` frequency bands;
the segment's noise is white noise shaped by those amplitudes (DDSP's filtered
noise), drawn afresh every segment on the box: noise fixed inside the graph
would repeat every frame, a 30 Hz buzz.

The bands' centres are evenly spaced on the mel scale from 0 Hz to the Nyquist
frequency, and the amplitude of each frequency between two centres is
interpolated linearly between theirs (the filters sum to one at every
frequency). A band's amplitude is taken as its magnitude (``abs``), so the
output may take either sign without a dead range. With every amplitude 1 a
segment's noise has unit RMS, the scale of the partials' shape.

Training renders it the same way in TensorFlow (``train_host.vae``) from the
same filters. On the box the segments are overlap-added (``device.overlap_add``)
and independent noise in overlapping segments adds in power, not in amplitude:
the engine has ``NoiseBands`` scale the noise by ``stream_gain``
(``for_stream``), so the stream carries the noise power one segment had in
training. Segments scored one by one (``train_host.evaluate``, the int8 parity)
keep a single segment's level.
"""

from __future__ import annotations

import numpy as np

from device.overlap_add import OverlapAdd


def mel(hz):
    """Frequency in Hz on the mel scale (HTK's formula)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def band_filters(bands: int, segment_samples: int, sample_rate: int) -> np.ndarray:
    """(bands, segment_samples // 2 + 1) float32: each band's share of each FFT bin."""
    if bands < 2:
        raise ValueError(f"noise bands {bands}: expected at least 2")
    bins = np.fft.rfftfreq(segment_samples, 1.0 / sample_rate)
    centres = np.linspace(0.0, float(mel(sample_rate / 2)), bands)
    position = np.interp(mel(bins), centres, np.arange(bands, dtype=np.float64))
    filters = np.maximum(0.0, 1.0 - np.abs(position[None, :] - np.arange(bands)[:, None]))
    return filters.astype(np.float32)


def stream_gain(segment_samples: int, hop_samples: int) -> float:
    """The amplitude that gives overlap-added independent noise the power of one
    segment's: 1 / sqrt(mean over a hop of the sum of the squared weights)."""
    window = OverlapAdd(segment_samples, hop_samples).window.astype(np.float64)
    power = np.zeros(hop_samples)
    for start in range(0, segment_samples, hop_samples):
        part = window[start:start + hop_samples]
        power[:len(part)] += part ** 2
    return float(1.0 / np.sqrt(power.mean()))


def spectrum_scale(segment_samples: int) -> float:
    """The scale of a complex Gaussian spectrum (unit-variance real and imaginary
    parts) whose inverse real FFT has unit variance."""
    return float(np.sqrt(segment_samples / 2.0))


class NoiseBands:
    """Renders a segment's noise from a model's band amplitudes, on the box and for
    the host's float reference alike."""

    def __init__(self, bands: int, *, segment_samples: int, sample_rate: int,
                 rng: np.random.Generator | None = None):
        self.bands, self.segment = bands, segment_samples
        self.filters = band_filters(bands, segment_samples, sample_rate)
        self.gain = 1.0
        """1: a single segment's level; ``for_stream`` sets the overlap-add's."""
        self._scale = np.float32(spectrum_scale(segment_samples))
        self.rng = rng if rng is not None else np.random.default_rng()
        self._bins = self.filters.shape[1]

    def for_stream(self, hop_samples: int) -> None:
        """Segments overlap-added at ``hop_samples`` from now on: scale the noise so
        the stream carries one segment's noise power."""
        self.gain = stream_gain(self.segment, hop_samples)
        self._scale = np.float32(spectrum_scale(self.segment) * self.gain)

    def render(self, amplitudes: np.ndarray) -> np.ndarray:
        """(segment_samples,) float32 noise for one segment's (bands,) amplitudes."""
        shape = np.abs(amplitudes.astype(np.float32)) @ self.filters
        spectrum = self.rng.standard_normal((2, self._bins), np.float32)
        spectrum *= shape * self._scale
        return np.fft.irfft(spectrum[0] + 1j * spectrum[1], self.segment).astype(np.float32)
