"""Room popularity like a real platform's: a few huge rooms and a long tail of small ones.

Room `k` (1-based rank) is chosen with weight 1 / k**s (Zipf). With 20 rooms and s = 1.2
the first room draws about a third of the viewers and the last about 1%.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def zipf_weights(n: int, s: float) -> list[float]:
    """Normalised weights of ranks 1..n; s = 0 is uniform."""
    if n < 1:
        raise ValueError("need at least one room")
    if s < 0:
        raise ValueError("the Zipf exponent must not be negative")
    raw = [1.0 / (rank**s) for rank in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


class RoomChooser:
    """Picks a room for each arriving viewer by Zipf popularity of the rooms' order."""

    def __init__(self, room_ids: Sequence[str], *, s: float) -> None:
        self.room_ids = list(room_ids)
        self.weights = zipf_weights(len(self.room_ids), s)

    def choose(self, rng: random.Random) -> str:
        return rng.choices(self.room_ids, weights=self.weights)[0]
