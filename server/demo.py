"""`python -m server.demo` (what `scripts/demo` runs): the server on an embedded Redis,
a few live rooms filled with viewer bots, and the address of the live page.

Everything it starts stops with Ctrl-C, or by itself after `--minutes`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from server.child import ServerProcess, ServerStartError
from server.settings import Settings, SettingsError


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

    # The children in sessions of their own: a Ctrl-C reaches only this process, which
    # stops the bots first and then the server (which stops its Redis).
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
        print(
            f"\n  giftstream demo is live: open {url}/ in your browser\n"
            f"  ({args.rooms} rooms, {args.viewers} bot viewers; Ctrl-C stops everything)\n",
            flush=True,
        )
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline and server.proc and server.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop(bots)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
