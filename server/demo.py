"""`python -m server.demo` (what `scripts/demo` runs): the server on an embedded Redis,
a few live rooms filled with viewer bots, and the address of the live page.

Everything it starts stops with Ctrl-C, SIGTERM or SIGHUP (the terminal closed), or by
itself after `--minutes`. It refuses to start on a port that is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from types import FrameType

from server.child import PortTaken, ServerProcess, ServerStartError, check_port_free
from server.settings import Settings, SettingsError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop(Exception):
    pass


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal during the stop must not cut the stop short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop


def say(text: str) -> None:
    """Print, if there is still a terminal to print to (after SIGHUP there may be none)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--port", type=int, default=settings.port, help="default: GS_PORT")
    parser.add_argument("--rooms", type=int, default=3, help="live rooms the bots open")
    parser.add_argument("--viewers", type=int, default=40, help="bot viewers in all")
    parser.add_argument("--minutes", type=float, default=60, help="stop by itself after this")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    try:
        check_port_free(args.port)
    except PortTaken as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    # The children in sessions of their own: a Ctrl-C (or the terminal's hang-up) reaches
    # only this process, which stops the bots first and then the server (which stops its
    # Redis).
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_signal)
    server = ServerProcess(port=args.port)
    url = server.url
    bots: subprocess.Popen[bytes] | None = None
    try:
        try:
            server.start()
        except ServerStartError as exc:
            print(f"demo: {exc} (see the lines above)", file=sys.stderr)
            return 1
        bots = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client_sim",
                "--url",
                url,
                "--rooms",
                str(args.rooms),
                "--viewers",
                str(args.viewers),
                "--duration",
                str(int(args.minutes * 60)),
                "--quiet",
            ],
            start_new_session=True,
        )
        say(
            f"\n  giftstream demo is live: open {url}/ in your browser\n"
            f"  ({args.rooms} rooms, {args.viewers} bot viewers; Ctrl-C stops everything)\n"
        )
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline and server.proc and server.proc.poll() is None:
            time.sleep(0.5)
    except _Stop:
        pass
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        stop(bots)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
