"""Presence and room_state for the rooms with viewers in this process (DESIGN section 5).

Presence: the number of local viewers per room is written with an expiry
(`RoomStore.set_presence`) when it changes and on a heartbeat, so a dead process's viewers
vanish with the expiry. room_state: viewers summed over every process and the top
gifters, sent to a room's started viewers when either changed since the last one they
were shown (their welcome, or the last room_state), at most every
`room_state_interval_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from server.protocol import Outgoing, room_state_frame
from server.settings import Settings
from server.store.cancellation import reraise_lost_cancellation
from server.store.rooms import RoomStore

log = logging.getLogger(__name__)

# A room's state as a room_state (or welcome) shows it: viewers and top gifters.
RoomState = tuple[int, list[dict[str, Any]]]


class _Shown:
    __slots__ = ("top", "top_dirty", "state_sent")

    def __init__(self) -> None:
        self.top: list[dict[str, Any]] | None = None
        self.top_dirty = False
        self.state_sent: RoomState | None = None


class RoomPresence:
    """Writes this process's presence and sends room_state frames.

    `local_viewers(room_id)` counts the room's local viewers, `rooms()` names the rooms
    that have any, and `send_state(room_id, frame)` hands a room_state frame to the room's
    started viewers (without waiting)."""

    def __init__(
        self,
        *,
        store: RoomStore,
        settings: Settings,
        process_id: str,
        local_viewers: Callable[[str], int],
        rooms: Callable[[], Iterable[str]],
        send_state: Callable[[str, Outgoing], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._process_id = process_id
        self._local_viewers = local_viewers
        self._rooms = rooms
        self._send_state = send_state
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._shown: dict[str, _Shown] = {}

    # --- what the hub tells it ----------------------------------------------------------

    def viewers_changed(self, room_id: str) -> None:
        self._dirty.add(room_id)
        self._wake.set()

    def gift_seen(self, room_id: str) -> None:
        """The room's top gifters may have changed."""
        shown = self._shown.get(room_id)
        if shown is not None:
            shown.top_dirty = True

    def welcomed(self, room_id: str, state: RoomState) -> None:
        """A viewer's welcome showed `state`; the first one is what later states are
        compared with."""
        shown = self._shown.setdefault(room_id, _Shown())
        if shown.state_sent is None:
            shown.state_sent = state

    def forget(self, room_id: str) -> None:
        """The room has no local viewers any more."""
        self._shown.pop(room_id, None)

    # --- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._presence_loop(), name="hub-presence")
            tg.create_task(self._room_state_loop(), name="hub-room-state")

    async def withdraw(self, room_ids: Iterable[str]) -> None:
        """This process's viewers out of presence (on the way out)."""
        for room_id in room_ids:
            await self._store.set_presence(room_id, self._process_id, 0)

    async def _presence_loop(self) -> None:
        loop = asyncio.get_running_loop()
        heartbeat = max(0.5, self._settings.presence_ttl_s / 3)
        next_beat = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            due = self._dirty
            if loop.time() >= next_beat:
                due = due | set(self._rooms())
                next_beat = loop.time() + heartbeat
            self._dirty = set()
            for room_id in due:
                try:
                    await self._store.set_presence(
                        room_id, self._process_id, self._local_viewers(room_id)
                    )
                except Exception as exc:  # noqa: BLE001 - retried on the next round
                    log.warning("presence not written (%s)", exc)
                    self._dirty |= due
                    await asyncio.sleep(0.5)
                    break
                finally:
                    reraise_lost_cancellation()

    async def _room_state_loop(self) -> None:
        interval = self._settings.room_state_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send_room_states()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("room_state round failed (%s)", exc)
            reraise_lost_cancellation()

    async def _send_room_states(self) -> None:
        rooms = [(room_id, s) for room_id, s in self._shown.items() if s.state_sent is not None]
        if not rooms:
            return
        counts = await self._store.viewers([room_id for room_id, _ in rooms])
        for room_id, shown in rooms:
            if shown.top_dirty or shown.top is None:
                shown.top_dirty = False
                try:
                    shown.top = await self._store.top(room_id)
                except BaseException:
                    shown.top_dirty = True
                    raise
            state: RoomState = (counts.get(room_id, 0), shown.top)
            if state == shown.state_sent or self._shown.get(room_id) is not shown:
                continue
            shown.state_sent = state
            self._send_state(room_id, Outgoing(room_state_frame(viewers=state[0], top=state[1])))
