"""`python -m client_sim`: fill live rooms with bot viewers that watch, chat and gift.

    python -m client_sim --url http://127.0.0.1:8000 --viewers 50 --rooms 2 --duration 30

It signs the viewers up (adults in the US) and buys them coins with the approving test
card, connects them, prints the room's live feed, and stops by itself after --duration
seconds with a summary: viewers connected, gifts sent/acked/refused by code, events
received (each checked by its seq: gaps, duplicates), ack latency (a gift's send to its
ack) and broadcast latency (a gift event's server time to a viewer's receipt of it: the
bot and the server share a clock when they share a machine). Every viewer stays under
the rate limits the server's welcome names, reconnects with since=<last seq> whenever
the server drops it, and gives up only after 8 failed reconnects in a row. Traffic goes
only to --url.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from client_sim.crowd import CrowdConfig, SetupError, run_crowd
from client_sim.viewer import ViewerPlan

MAX_VIEWERS = 5000
MAX_DURATION_S = 24 * 3600.0
# Sanity bounds only: the server's own limits (named in its welcome) pace every viewer.
MAX_GIFT_RATE = 100.0
MAX_CHAT_RATE = 100.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m client_sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)"
    )
    p.add_argument(
        "--viewers", type=int, default=20, help="bot viewers in all (default %(default)s)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--room", help="fill this live room (default: open rooms of our own)")
    where.add_argument(
        "--rooms", type=int, default=1, help="rooms to open, each with a creator (default 1)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds to stay, then stop by itself (default %(default)s)",
    )
    p.add_argument(
        "--gift-rate",
        type=float,
        default=0.3,
        help="gifts per second per signed-in viewer, paced under the server's limit "
        "(default %(default)s)",
    )
    p.add_argument(
        "--chat-rate",
        type=float,
        default=0.05,
        help="chat lines per second per signed-in viewer, paced under the server's limit "
        "(default %(default)s)",
    )
    p.add_argument(
        "--anonymous-share",
        type=float,
        default=0.2,
        help="share of viewers that watch without signing in, 0..1 (default %(default)s)",
    )
    p.add_argument("--package", default="p1000", help="coin package each viewer buys")
    p.add_argument("--quiet", action="store_true", help="no live feed, only the summary")
    p.add_argument("--summary-json", type=Path, help="also write the summary here as JSON")
    p.add_argument("--keep-rooms", action="store_true", help="leave our rooms live at the end")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable crowd")
    return p


def config_from(args: argparse.Namespace) -> CrowdConfig:
    """Validated settings; `ValueError` says what is out of range."""
    if not 1 <= args.viewers <= MAX_VIEWERS:
        raise ValueError(f"--viewers must be 1..{MAX_VIEWERS}")
    if args.room is None and not 1 <= args.rooms <= args.viewers:
        raise ValueError("--rooms must be 1..--viewers")
    if not 0 < args.duration <= MAX_DURATION_S:
        raise ValueError(f"--duration must be more than 0 and at most {MAX_DURATION_S:g} s")
    if not 0 <= args.gift_rate <= MAX_GIFT_RATE:
        raise ValueError(f"--gift-rate must be 0..{MAX_GIFT_RATE:g}")
    if not 0 <= args.chat_rate <= MAX_CHAT_RATE:
        raise ValueError(f"--chat-rate must be 0..{MAX_CHAT_RATE:g}")
    if not 0 <= args.anonymous_share <= 1:
        raise ValueError("--anonymous-share must be 0..1")
    config = CrowdConfig(
        url=args.url.rstrip("/"),
        viewers=args.viewers,
        room_id=args.room,
        rooms=1 if args.room else args.rooms,
        duration_s=args.duration,
        anonymous_share=args.anonymous_share,
        plan=ViewerPlan(
            gift_rate=args.gift_rate, chat_rate=args.chat_rate, package_id=args.package
        ),
        feed=not args.quiet,
        end_rooms=not args.keep_rooms,
        seed=args.seed,
    )
    config.ws_base  # noqa: B018 - validates the URL's scheme
    return config


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"client_sim: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(run_crowd(config, sys.stdout))
    except SetupError as exc:
        print(f"client_sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during setup; once viewers run, Ctrl-C stops them gracefully
        print("client_sim: interrupted", file=sys.stderr)
        return 130
    print(summary.render(), flush=True)
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
    return 0 if summary.stats.viewers_connected > 0 else 1
