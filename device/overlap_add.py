"""Overlap-add: turns one generated segment per camera frame into a continuous stream.

Each frame the model gives a segment of S samples; the stream advances by one hop
H (one camera frame of audio, S >= H). Every segment is weighted by a Hann window
and added at the current position; the hop that is now complete is emitted. The
gain that makes overlapping windows sum to one is computed from the window itself
(not assumed from S/H), so any segment length works without a ripple.

The newest segment starts sounding in the very hop it was made for: the delay
from a frame to its sound is one hop, not a whole segment.

``push`` runs in the model thread once per frame: a few vector operations of
segment length, into buffers made once.
"""

from __future__ import annotations

import numpy as np


class OverlapAdd:
    """Hann-windowed overlap-add at a fixed hop, normalised to unit gain."""

    def __init__(self, segment_samples: int, hop_samples: int):
        if not 0 < hop_samples <= segment_samples:
            raise ValueError(f"hop_samples {hop_samples} must be in 1..segment_samples "
                             f"({segment_samples})")
        self.segment, self.hop = segment_samples, hop_samples
        n = np.arange(segment_samples)
        # Periodic Hann; where S == H it would mute the hop's edges, so use a flat window.
        self.window = (np.ones(segment_samples) if segment_samples == hop_samples
                       else 0.5 - 0.5 * np.cos(2 * np.pi * (n + 0.5) / segment_samples))
        # Sum of all windows that overlap each position of a hop, in steady state.
        overlap = np.zeros(hop_samples)
        for start in range(0, segment_samples, hop_samples):
            part = self.window[start:start + hop_samples]
            overlap[:len(part)] += part
        self.window = (self.window / np.tile(overlap, -(-segment_samples // hop_samples))
                       [:segment_samples]).astype(np.float32)
        self._acc = np.zeros(segment_samples + hop_samples, np.float32)
        self._out = np.zeros(hop_samples, np.float32)
        self._weighted = np.zeros(segment_samples, np.float32)

    def push(self, segment: np.ndarray) -> np.ndarray:
        """Add one segment; return the next hop of the stream (a reused buffer)."""
        acc, s, h = self._acc, self.segment, self.hop
        np.multiply(segment, self.window, out=self._weighted)
        acc[:s] += self._weighted
        self._out[:] = acc[:h]
        acc[:s] = acc[h:h + s]
        acc[s:] = 0.0
        return self._out

    def reset(self) -> None:
        self._acc[:] = 0.0
