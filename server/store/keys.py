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
        return f"{PREFIX}:{self.tag}:cashout:{cashout_id}"

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


def bucket_tag(bucket: int) -> str:
    return "{w" + str(bucket) + "}"


def bucket_pending(tag: str) -> str:
    return f"{PREFIX}:{tag}:pending"


def bucket_cashouts_due(tag: str) -> str:
    return f"{PREFIX}:{tag}:cashouts_due"


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
