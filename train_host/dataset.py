"""Training examples from a take: motion windows paired with audio segments.

Example ``t`` pairs the motiongram window that ends at frame ``t`` (the last
``window_frames`` frames, as the live loop sees it) with the audio segment that
ends where frame ``t`` ends: samples ``(t + 1) * hop - segment`` up to
``(t + 1) * hop``. The device plays a window's segment starting at once, so the
model learns the sound of the motion that just happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    """Aligned training examples from one or more takes."""

    motion: np.ndarray
    """float32 (N, window_frames, features): motiongram windows."""
    audio: np.ndarray
    """float32 (N, segment_samples): the audio segment each window sounds with."""
    labels: np.ndarray
    """str (N,): the label of the frame each window ends on."""
    take: np.ndarray
    """int (N,): which take each example came from, for splitting by take."""

    def __len__(self) -> int:
        return len(self.motion)

    def subset(self, index: np.ndarray) -> Examples:
        return Examples(self.motion[index], self.audio[index], self.labels[index],
                        self.take[index])

    @staticmethod
    def concatenate(parts: list[Examples]) -> Examples:
        return Examples(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("motion", "audio", "labels", "take")))


def make_examples(motion: np.ndarray, audio: np.ndarray, *, window_frames: int,
                  segment_samples: int, hop_samples: int, labels=None, take: int = 0,
                  stride: int = 1) -> Examples:
    """Every ``stride``-th window of a take whose segment lies wholly inside the audio."""
    frames = len(motion)
    if len(audio) < frames * hop_samples:
        raise ValueError(f"audio has {len(audio)} samples, fewer than {frames} frames "
                         f"of {hop_samples}")
    first = max(window_frames - 1, -(-segment_samples // hop_samples) - 1)
    ends = np.arange(first, frames, stride)
    padded = motion.astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window_frames, axis=0)
    x = np.ascontiguousarray(windows[ends - window_frames + 1].transpose(0, 2, 1))
    starts = (ends + 1) * hop_samples - segment_samples
    y = np.stack([audio[s:s + segment_samples] for s in starts]).astype(np.float32)
    labels = np.asarray(labels if labels is not None else [""] * frames)[ends]
    return Examples(x, y, labels, np.full(len(ends), take))
