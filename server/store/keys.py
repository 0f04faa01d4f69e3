"""Key names. Every key one Lua script touches shares one hash tag (DESIGN section 3):
`{w<bucket>}` for a user's wallet bucket, `{r<room_id>}` for a room."""

from __future__ import annotations

from dataclasses import dataclass

from server.economy import wallet_bucket

PREFIX = "gs"
LIVE_ROOMS = f"{PREFIX}:rooms:live"


@dataclass(frozen=True, slots=True)
class UserKeys:
    user_id: str
    tag: str

    @classmethod
    def of(cls, user_id: str, buckets: int) -> UserKeys:
        return cls(user_id, bucket_tag(wallet_bucket(user_id, buckets)))

    @property
    def profile(self) -> str:
        return f"{PREFIX}:{self.tag}:user:{self.user_id}"

    @property
    def wallet(self) -> str:
        return f"{PREFIX}:{self.tag}:wallet:{self.user_id}"

    @property
    def ledger(self) -> str:
        return f"{PREFIX}:{self.tag}:ledger:{self.user_id}"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{PREFIX}:{self.tag}:idem:{self.user_id}:{scope}:{key}"

    def spent(self, period: str, value: str) -> str:
        return f"{PREFIX}:{self.tag}:spent:{self.user_id}:{period}:{value}"

    def cashout(self, cashout_id: str) -> str:
        return bucket_cashout(self.tag, cashout_id)

    def cashout_day(self, day: str) -> str:
        return f"{PREFIX}:{self.tag}:cashout_day:{self.user_id}:{day}"

    @property
    def pending(self) -> str:
        return bucket_pending(self.tag)

    @property
    def cashouts_due(self) -> str:
        return bucket_cashouts_due(self.tag)

    def credited(self, transfer_id: str) -> str:
        return f"{PREFIX}:{self.tag}:credited:{transfer_id}"

    def rate(self, action: str) -> str:
        """The user's token bucket for `action` (gift, chat), shared by every connection."""
        return f"{PREFIX}:{self.tag}:rate:{self.user_id}:{action}"

    @property
    def sockets(self) -> str:
        """The user's open sockets over every process: a sorted set, member -> expiry."""
        return f"{PREFIX}:{self.tag}:sockets:{self.user_id}"

    @classmethod
    def from_wallet_key(cls, key: str) -> UserKeys:
        """The keys of the user whose wallet hash is `key` (as the audit's scan finds it)."""
        head, _, user_id = key.rpartition(":wallet:")
        return cls(user_id, head.removeprefix(f"{PREFIX}:"))


def bucket_tag(bucket: int) -> str:
    return "{w" + str(bucket) + "}"


def bucket_pending(tag: str) -> str:
    return f"{PREFIX}:{tag}:pending"


def bucket_cashouts_due(tag: str) -> str:
    return f"{PREFIX}:{tag}:cashouts_due"


def bucket_cashout(tag: str, cashout_id: str) -> str:
    return f"{PREFIX}:{tag}:cashout:{cashout_id}"


def fence_key(tag: str) -> str:
    """A small key of hash tag `tag`, written to wait for (server.store.durability)."""
    return f"{PREFIX}:{tag}:fence"


# Patterns for whole-store scans (the audit): every wallet, pending hash, due set, room.
ALL_WALLETS = f"{PREFIX}:{{w*}}:wallet:*"
ALL_PENDING = f"{PREFIX}:{{w*}}:pending"
ALL_CASHOUTS_DUE = f"{PREFIX}:{{w*}}:cashouts_due"
ALL_ROOMS = f"{PREFIX}:{{r*}}:room"


def room_id_of(room_key: str) -> str:
    """The room id in a room hash's key (`gs:{r<id>}:room`)."""
    return room_key.removeprefix(f"{PREFIX}:{{r").removesuffix("}:room")


@dataclass(frozen=True, slots=True)
class RoomKeys:
    room_id: str

    @property
    def tag(self) -> str:
        return "{r" + self.room_id + "}"

    @property
    def room(self) -> str:
        return f"{PREFIX}:{self.tag}:room"

    @property
    def events(self) -> str:
        return f"{PREFIX}:{self.tag}:events"

    @property
    def top(self) -> str:
        return f"{PREFIX}:{self.tag}:top"

    @property
    def names(self) -> str:
        return f"{PREFIX}:{self.tag}:names"

    @property
    def combo(self) -> str:
        return f"{PREFIX}:{self.tag}:combo"

    @property
    def presence(self) -> str:
        return f"{PREFIX}:{self.tag}:presence"

    @property
    def channel(self) -> str:
        return f"{PREFIX}:{self.tag}:ch"

    def done(self, marker: str) -> str:
        return f"{PREFIX}:{self.tag}:done:{marker}"
