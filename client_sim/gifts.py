"""Which gift a viewer sends: cheap ones often, dear ones rarely, never one it cannot
afford. Shared by the bot and the Locust users."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from giftstream_client.models import Gift

# Tapping a cheap gift again and again is how real viewers build combos ("x12").
COMBO_MAX_COINS = 5


@dataclass(frozen=True, slots=True)
class GiftInfo:
    gift_id: str
    name: str
    coins: int


class GiftPicker:
    """Weighted choice over the catalog: a gift's weight falls with its price
    (coins ** -`steepness`), so 1-coin gifts dominate and a Universe is rare."""

    def __init__(self, gifts: list[GiftInfo], *, steepness: float = 0.8) -> None:
        if not gifts:
            raise ValueError("the gift catalog is empty")
        self.gifts = sorted(gifts, key=lambda g: g.coins)
        self._weights = [max(g.coins, 1) ** -steepness for g in self.gifts]
        self.names = {g.gift_id: g.name for g in self.gifts}

    @classmethod
    def from_gifts(cls, gifts: Iterable[Gift]) -> GiftPicker:
        """From the catalog as the client reads it (`GiftstreamClient.gifts()`)."""
        return cls([GiftInfo(g.id, g.name, g.coins) for g in gifts])

    def pick(self, rng: random.Random, balance: int) -> GiftInfo | None:
        """A gift costing at most `balance`, or None when not even the cheapest fits."""
        affordable = sum(1 for g in self.gifts if g.coins <= balance)
        if affordable == 0:
            return None
        return rng.choices(self.gifts[:affordable], weights=self._weights[:affordable])[0]

    def cheapest(self) -> GiftInfo:
        return self.gifts[0]
