"""A fixed-size ring buffer of per-clip features and their stream times."""

from __future__ import annotations

import numpy as np


class FeatureRing:
    """The newest `capacity` clips: features (C, D) and [start, end) stream seconds (C, 2).

    Memory is allocated once; pushing past the capacity overwrites the oldest clips.

    Args:
        capacity: clips kept (window seconds x features per second).
        dim: feature dim D.
    """

    def __init__(self, capacity: int, dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"FeatureRing: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._features = np.zeros((capacity, dim), dtype=np.float32)  # (C, D)
        self._times_sec = np.zeros((capacity, 2), dtype=np.float64)  # (C, 2)
        self._next = 0  # slot the next clip goes to
        self._count = 0
        self.pushed = 0
        """Clips pushed in all (the ring holds the last min(pushed, capacity))."""

    def __len__(self) -> int:
        return self._count

    def push(self, features: np.ndarray, times_sec: np.ndarray) -> None:
        """Append clips in stream order.

        Args:
            features: (N, D).
            times_sec: (N, 2) [start, end) seconds, after the clips already held.
        """
        if len(features) != len(times_sec):
            raise ValueError(f"FeatureRing.push: {len(features)} features for {len(times_sec)} times")
        for row, times in zip(features, times_sec, strict=True):
            self._features[self._next] = row
            self._times_sec[self._next] = times
            self._next = (self._next + 1) % self.capacity
            self._count = min(self._count + 1, self.capacity)
            self.pushed += 1

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held clips, oldest first: features (n, D) and times (n, 2)."""
        order = (np.arange(self._count) + self._next - self._count) % self.capacity
        return self._features[order], self._times_sec[order]
