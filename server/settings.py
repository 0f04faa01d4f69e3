"""Configuration from the environment: the only module that reads it.

Every tunable has a default that runs on a laptop. `Settings.from_env()` is
called once at start; everything else receives the `Settings` it needs.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


class SettingsError(Exception):
    """The environment asks for something that cannot run; the message says what."""


_ACK_DURABILITY = re.compile(r"^(primary|aof|replicas:([1-9][0-9]*))$")


@dataclass(frozen=True, slots=True)
class AckDurability:
    """When a gift is acked (GS_ACK_DURABILITY): `primary`, `aof` or `replicas:N`; what
    each means and does is `server.store.durability`'s."""

    level: str = "primary"
    replicas: int = 0

    @classmethod
    def parse(cls, raw: str) -> AckDurability:
        """`ValueError` with the accepted forms for anything else."""
        match = _ACK_DURABILITY.match(raw.strip().lower())
        if match is None:
            raise ValueError(f"expected primary, aof or replicas:N (N >= 1), got {raw!r}")
        if match.group(2):
            return cls("replicas", int(match.group(2)))
        return cls(match.group(1))

    def __str__(self) -> str:
        return f"replicas:{self.replicas}" if self.level == "replicas" else self.level

    @property
    def waits(self) -> bool:
        return self.level != "primary"


def _ack_durability(env: Mapping[str, str], name: str) -> AckDurability:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return AckDurability()
    try:
        return AckDurability.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


# ASCII only: int() and float() also take other scripts' digits ("١٢") and underscores.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _raw(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def _in_range(name: str, value: float, minimum: float, maximum: float | None) -> None:
    if maximum is not None and not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum:g} and {maximum:g}, got {value:g}")
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {value:g}")


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise SettingsError(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    _in_range(name, value, minimum, maximum)
    return value


def _float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    if not _FLOAT.fullmatch(raw):
        raise SettingsError(f"{name} must be a number, got {raw!r}")
    value = float(raw)
    _in_range(name, value, minimum, maximum)
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not 0 < value <= 1:
        raise SettingsError(f"{name} must be above 0 and at most 1, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """1/0, true/false, yes/no or on/off, in any case."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be one of 1, true, yes, on or 0, false, no, off; got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw in choices:
        return raw
    close = [c for c in choices if c.startswith(raw.lower()) or raw.lower().startswith(c)]
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SettingsError(f"{name} must be {' or '.join(choices)}, got {raw!r}{hint}")


def _masked(raw: str) -> str:
    """`raw` with any password in it replaced by ***, fit for a message."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", raw)


def redis_url(
    name: str, raw: str, *, schemes: tuple[str, ...] = ("redis", "rediss", "unix")
) -> str:
    """`raw` if it is a URL redis-py can connect to (one of `schemes`), else
    `SettingsError` saying what is wrong with it (any password in it masked)."""
    shown = repr(_masked(raw))
    example = f"{name} must be a URL like redis://host:6379/0"
    try:
        url = urlsplit(raw)
        port = url.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise SettingsError(f"{example}, got {shown} ({exc})") from None
    if url.scheme not in schemes:
        others = ", ".join(f"{s}://" for s in schemes if s != "redis")
        raise SettingsError(f"{example} (or {others}), got {shown}")
    if url.scheme == "unix":
        if not url.path:
            raise SettingsError(f"{name} needs a socket path, like unix:///run/redis.sock")
        return raw
    if not url.hostname:
        raise SettingsError(f"{example}: {shown} names no host")
    if port == 0:
        raise SettingsError(f"{name}: port 0 is no Redis port, in {shown}")
    database = url.path.strip("/")
    if database and not _INT.fullmatch(database):
        raise SettingsError(f"{name}: the database after the / must be a number, in {shown}")
    return raw


ENVIRONMENTS = ("development", "production")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, kw_only=True)
class Settings:
    environment: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # None: start an embedded Redis-compatible server in `data_dir`.
    redis_url: str | None = None
    redis_cluster_urls: tuple[str, ...] = ()
    data_dir: Path = Path(".data")
    token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    token_ttl_s: int = 7 * 24 * 3600
    wallet_buckets: int = 1024
    diamonds_per_coin: int = 1
    cashout_min_diamonds: int = 2000
    cashout_daily_limit_diamonds: int = 1_000_000
    payout_delay_ms: int = 2000
    idempotency_ttl_s: int = 24 * 3600
    sweep_interval_s: float = 2.0
    sweep_min_age_ms: int = 3000
    # Rooms and fan-out (server.sequencing.FlushPacer): a quiet room's event goes out at
    # once; a busy room's flushes are spaced so that writing them takes at most this share
    # of a core (divided among the rooms that flushed in the last second), measured from
    # what its last flushes cost, and at most `fanout_max_window_ms` apart.
    fanout_cpu_share: float = 0.7
    fanout_max_window_ms: int = 1000
    # A big room is written in slices of about this long, so reads and acks go on between.
    fanout_slice_ms: float = 2.0
    # What a socket may hold unsent before its reader counts as too slow and is closed
    # (1008): about four seconds of a busy room's frames.
    socket_buffer_bytes: int = 1024 * 1024
    # How long a too-slow reader's 1008 close may wait behind what it has not read; a
    # peer that reads nothing meanwhile is dropped (reset), and its buffers freed.
    slow_close_timeout_s: float = 10.0
    # A room socket's kernel send buffer (SO_SNDBUF; 0: the kernel's own, which grows to
    # megabytes): small, so what a peer has not read is counted in `socket_buffer_bytes`.
    socket_sndbuf_bytes: int = 64 * 1024
    # A socket that has held more than 64 KiB unsent for this long is a stalled reader:
    # closed (1008) long before a ping goes unanswered (0: only the byte bound).
    stalled_reader_s: float = 5.0
    # A room whose live feed (its subscription) has been lost this long closes its local
    # viewers with 1013, so they reconnect elsewhere (0: never).
    feed_lost_close_s: float = 10.0
    max_frame_bytes: int = 64 * 1024
    # An HTTP request must arrive whole (headers and body) this soon after its first
    # byte, or the connection is closed (408): slow clients hold no connection. 0: off.
    http_read_timeout_s: float = 20.0
    history_events: int = 1000
    presence_ttl_s: int = 10
    gift_rate_per_s: float = 20.0
    gift_burst: int = 50
    chat_rate_per_s: float = 2.0
    chat_burst: int = 5
    combo_gap_ms: int = 5000
    room_state_interval_ms: int = 250
    # Rooms' sockets: browser origins allowed to open one (empty: the server's own origin
    # only; "*": any); a handshake without Origin (a native app, a bot) is always allowed.
    allowed_origins: tuple[str, ...] = ()
    max_sockets_per_user: int = 20
    # At shutdown, how long the gift steps in flight may take to finish.
    drain_gift_steps_s: float = 5.0
    # permessage-deflate compresses every frame once per connection, which undoes
    # encoding a room's flush once for all its viewers: off unless asked for.
    ws_compression: bool = False
    # When a gift is acked (server.store.durability): after the primary applied its debit,
    # after its append-only file is fsynced (aof), or after N replicas have it.
    ack_durability: AckDurability = field(default_factory=AckDurability)
    ack_durability_timeout_ms: int = 1000
    # Logs: plain lines or one JSON object a line, for the server and uvicorn alike.
    log_format: str = "text"
    log_level: str = "info"
    # The embedded server when there is no REDIS_URL: "auto" (the one that wrote the data
    # folder, else redis-server on PATH, else the bundled Valkey), or a command or path.
    redis_server: str = "auto"
    # On SIGTERM: the WebSockets are closed (1012) in batches spread over this long, so
    # their clients reconnect elsewhere spread out; then requests and gift steps in flight
    # get `shutdown_timeout_s` to finish.
    drain_s: float = 5.0
    shutdown_timeout_s: float = 5.0

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read `GS_*` variables (and `REDIS_URL`, `REDIS_CLUSTER_URLS`).

        Raises `SettingsError` with a clear message for a malformed value, or
        when `GS_ENV=production` and no `GS_TOKEN_SECRET` is set.
        """
        env = os.environ if env is None else env
        d = cls()
        environment = _choice(env, "GS_ENV", "development", ENVIRONMENTS)
        secret = env.get("GS_TOKEN_SECRET", "")
        if not secret:
            if environment == "production":
                raise SettingsError(
                    "GS_ENV=production needs GS_TOKEN_SECRET: a long random string shared "
                    "by every server process (tokens signed by one must verify on all)"
                )
            secret = secrets.token_urlsafe(32)
        elif environment == "production" and len(secret) < 32:
            raise SettingsError(
                f"GS_TOKEN_SECRET must be at least 32 characters in production, "
                f"got {len(secret)} (e.g. openssl rand -hex 32)"
            )
        url = _raw(env, "REDIS_URL")
        cluster = tuple(
            redis_url("REDIS_CLUSTER_URLS", u.strip(), schemes=("redis", "rediss"))
            for u in env.get("REDIS_CLUSTER_URLS", "").split(",")
            if u.strip()
        )
        if url is not None and cluster:
            raise SettingsError("REDIS_URL and REDIS_CLUSTER_URLS are both set: set only one")
        host = env.get("GS_HOST", "").strip() or d.host
        if any(c.isspace() for c in host) or "/" in host:
            raise SettingsError(f"GS_HOST must be a host name or address, got {host!r}")
        return cls(
            environment=environment,
            host=host,
            port=_int(env, "GS_PORT", d.port, minimum=0, maximum=65535),
            workers=_int(env, "GS_WORKERS", d.workers, minimum=1, maximum=256),
            redis_url=None if url is None else redis_url("REDIS_URL", url),
            redis_cluster_urls=cluster,
            data_dir=Path(_raw(env, "GS_DATA_DIR") or d.data_dir),
            token_secret=secret,
            token_ttl_s=_int(env, "GS_TOKEN_TTL_S", d.token_ttl_s, minimum=1),
            wallet_buckets=_int(env, "WALLET_BUCKETS", d.wallet_buckets, minimum=1),
            diamonds_per_coin=_int(env, "DIAMONDS_PER_COIN", d.diamonds_per_coin, minimum=1),
            cashout_min_diamonds=_int(
                env, "GS_CASHOUT_MIN_DIAMONDS", d.cashout_min_diamonds, minimum=1
            ),
            cashout_daily_limit_diamonds=_int(
                env, "GS_CASHOUT_DAILY_LIMIT_DIAMONDS", d.cashout_daily_limit_diamonds, minimum=1
            ),
            payout_delay_ms=_int(env, "GS_PAYOUT_DELAY_MS", d.payout_delay_ms),
            idempotency_ttl_s=_int(env, "GS_IDEMPOTENCY_TTL_S", d.idempotency_ttl_s, minimum=60),
            sweep_interval_s=_float(env, "GS_SWEEP_INTERVAL_S", d.sweep_interval_s),
            sweep_min_age_ms=_int(env, "GS_SWEEP_MIN_AGE_MS", d.sweep_min_age_ms),
            fanout_cpu_share=_share(env, "GS_FANOUT_CPU_SHARE", d.fanout_cpu_share),
            fanout_max_window_ms=_int(
                env, "GS_FANOUT_MAX_WINDOW_MS", d.fanout_max_window_ms, minimum=1
            ),
            fanout_slice_ms=_float(env, "GS_FANOUT_SLICE_MS", d.fanout_slice_ms),
            socket_buffer_bytes=_int(
                env, "GS_SOCKET_BUFFER_BYTES", d.socket_buffer_bytes, minimum=1024
            ),
            slow_close_timeout_s=_float(env, "GS_SLOW_CLOSE_TIMEOUT_S", d.slow_close_timeout_s),
            socket_sndbuf_bytes=_int(env, "GS_SOCKET_SNDBUF_BYTES", d.socket_sndbuf_bytes),
            stalled_reader_s=_float(env, "GS_STALLED_READER_S", d.stalled_reader_s),
            feed_lost_close_s=_float(env, "GS_FEED_LOST_CLOSE_S", d.feed_lost_close_s),
            max_frame_bytes=_int(env, "GS_MAX_FRAME_BYTES", d.max_frame_bytes, minimum=256),
            http_read_timeout_s=_float(env, "GS_HTTP_READ_TIMEOUT_S", d.http_read_timeout_s),
            history_events=_int(env, "GS_HISTORY_EVENTS", d.history_events, minimum=1),
            presence_ttl_s=_int(env, "GS_PRESENCE_TTL_S", d.presence_ttl_s, minimum=2),
            gift_rate_per_s=_float(env, "GS_GIFT_RATE_PER_S", d.gift_rate_per_s),
            gift_burst=_int(env, "GS_GIFT_BURST", d.gift_burst, minimum=1),
            chat_rate_per_s=_float(env, "GS_CHAT_RATE_PER_S", d.chat_rate_per_s),
            chat_burst=_int(env, "GS_CHAT_BURST", d.chat_burst, minimum=1),
            combo_gap_ms=_int(env, "GS_COMBO_GAP_MS", d.combo_gap_ms),
            room_state_interval_ms=_int(env, "GS_ROOM_STATE_INTERVAL_MS", d.room_state_interval_ms),
            ws_compression=_bool(env, "GS_WS_COMPRESSION", d.ws_compression),
            allowed_origins=tuple(
                o.strip().rstrip("/")
                for o in env.get("GS_ALLOWED_ORIGINS", "").split(",")
                if o.strip()
            ),
            max_sockets_per_user=_int(
                env, "GS_MAX_SOCKETS_PER_USER", d.max_sockets_per_user, minimum=1
            ),
            drain_gift_steps_s=_float(env, "GS_DRAIN_GIFT_STEPS_S", d.drain_gift_steps_s),
            ack_durability=_ack_durability(env, "GS_ACK_DURABILITY"),
            ack_durability_timeout_ms=_int(
                env, "GS_ACK_DURABILITY_TIMEOUT_MS", d.ack_durability_timeout_ms, minimum=1
            ),
            log_format=_choice(env, "GS_LOG_FORMAT", d.log_format, LOG_FORMATS),
            log_level=_choice(env, "GS_LOG_LEVEL", d.log_level, LOG_LEVELS),
            redis_server=_raw(env, "GS_REDIS_SERVER") or d.redis_server,
            drain_s=_float(env, "GS_DRAIN_S", d.drain_s, maximum=3600),
            shutdown_timeout_s=_float(
                env, "GS_SHUTDOWN_TIMEOUT_S", d.shutdown_timeout_s, maximum=3600
            ),
        )
