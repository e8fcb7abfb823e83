"""Overlap-add: turns one generated segment per camera frame into a continuous stream.

Each frame the model gives a segment of S samples that starts at that frame; the
stream advances by one hop H (one camera frame of audio, S >= H). Every segment
is weighted and added at the current position, and the hop that is now complete
is emitted. The weight rises over a few milliseconds (no step where a segment
starts) and then decays as a half Hann over the segment, so the newest segment,
made from the freshest motion, dominates each hop and older ones fade behind it:
the sound reacts within the hop of the frame that moved. The gain that makes the
overlapping weights sum to one is computed from the window itself (not assumed
from S/H), so any segment length works without a ripple.

``push`` runs in the model thread once per frame: a few vector operations of
segment length, into buffers made once.
"""

from __future__ import annotations

import numpy as np


# The rise at a segment's start, as a share of the hop: short enough that the
# newest segment is heard at once, long enough that its first sample is no step.
_ATTACK_SHARE = 0.125


class OverlapAdd:
    """Overlap-add at a fixed hop, newest segment weighted most, unit gain."""

    def __init__(self, segment_samples: int, hop_samples: int):
        if not 0 < hop_samples <= segment_samples:
            raise ValueError(f"hop_samples {hop_samples} must be in 1..segment_samples "
                             f"({segment_samples})")
        self.segment, self.hop = segment_samples, hop_samples
        n = np.arange(segment_samples) + 0.5
        attack = max(1.0, hop_samples * _ATTACK_SHARE)
        self.window = np.minimum(1.0, n / attack)
        if segment_samples > hop_samples:
            self.window *= 0.5 + 0.5 * np.cos(np.pi * n / segment_samples)
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
