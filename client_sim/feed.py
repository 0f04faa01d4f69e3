"""The live feed: what a person watching the rooms would see, printed as it happens.

Every viewer hands it what it receives; each room event is printed once (the first
viewer to deliver a `seq` wins), at most `lines_per_s` lines a second so a busy room
does not flood the terminal (the rest are counted in the next status line).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TextIO

from giftstream_client.frames import Event, RoomState, Welcome
from giftstream_client.models import TopGifter


@dataclass
class _RoomView:
    label: str
    last_seq: int = 0
    viewers: int = 0
    top: tuple[TopGifter, ...] = field(default_factory=tuple)
    gifts: int = 0
    coins: int = 0
    chats: int = 0
    ended: bool = False


class LiveFeed:
    def __init__(
        self,
        out: TextIO,
        *,
        rooms: dict[str, str],
        gift_names: dict[str, str],
        enabled: bool = True,
        lines_per_s: int = 12,
    ) -> None:
        self.out = out
        self.enabled = enabled
        self.gift_names = gift_names
        self.lines_per_s = lines_per_s
        self._rooms = {room_id: _RoomView(label) for room_id, label in rooms.items()}
        self._started = time.monotonic()
        self._window = 0
        self._lines_in_window = 0
        self.suppressed = 0

    def event(self, room_id: str, event: Event) -> None:
        view = self._rooms.get(room_id)
        if view is None or event.seq <= view.last_seq:
            return
        view.last_seq = event.seq
        sender = event.sender.name if event.sender is not None else "?"
        if event.kind == "gift":
            view.gifts += 1
            view.coins += event.coins
            name = self.gift_names.get(event.gift_id, event.gift_id)
            what = name if event.count == 1 else f"{event.count} {name}"
            suffix = f"  x{event.combo}" if event.combo > event.count else ""
            self._line(view, f"gift  {sender} sent {what}{suffix}")
        elif event.kind == "chat":
            view.chats += 1
            self._line(view, f"chat  {sender}: {event.text}")
        elif event.kind == "room_ended":
            view.ended = True
            self._line(view, "----  the live has ended", force=True)

    def room_state(self, room_id: str, frame: RoomState | Welcome) -> None:
        view = self._rooms.get(room_id)
        if view is not None:
            view.viewers = frame.viewers
            view.top = frame.top

    def welcome(self, room_id: str, frame: Welcome) -> None:
        view = self._rooms.get(room_id)
        if view is not None:
            view.last_seq = max(view.last_seq, frame.seq)
            self.room_state(room_id, frame)

    def status(self, extra: str = "") -> None:
        """One line per room: viewers, gifts and coins so far, top gifters."""
        if not self.enabled:
            return
        for view in self._rooms.values():
            top = ", ".join(f"{t.name} {t.coins}" for t in view.top[:3])
            self._print(
                view,
                f"====  {view.viewers} watching | {view.gifts} gifts, {view.coins} coins, "
                f"{view.chats} chat | top: {top or '-'}",
            )
        if self.suppressed:
            self._print(None, f"      (+{self.suppressed} more events not shown) {extra}".rstrip())
            self.suppressed = 0
        elif extra:
            self._print(None, f"      {extra}")
        self.out.flush()

    def _line(self, view: _RoomView, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        window = int(now)
        if window != self._window:
            self._window, self._lines_in_window = window, 0
        if self._lines_in_window >= self.lines_per_s and not force:
            self.suppressed += 1
            return
        self._lines_in_window += 1
        self._print(view, text)

    def _print(self, view: _RoomView | None, text: str) -> None:
        elapsed = time.monotonic() - self._started
        label = f"[{view.label}] " if view is not None and len(self._rooms) > 1 else ""
        print(f"{elapsed:7.1f}s {label}{text}", file=self.out)
