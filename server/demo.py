"""`python -m server.demo` (what `scripts/demo` runs): the server on an embedded Redis,
a few live rooms filled with viewer bots, and the address of the live page.

Everything it starts stops with Ctrl-C, or by itself after `--minutes`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import httpx

from server.settings import Settings, SettingsError


def wait_healthy(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: the server exited at start (see the lines above)")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("demo: the server did not answer /healthz in time")


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

    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "GS_PORT": str(args.port)}
    # The children in sessions of their own: a Ctrl-C reaches only this process, which
    # stops the bots first and then the server (which stops its Redis).
    server = subprocess.Popen([sys.executable, "-m", "server"], env=env, start_new_session=True)
    bots: subprocess.Popen[bytes] | None = None
    try:
        wait_healthy(url, server)
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
            env=env,
            start_new_session=True,
        )
        print(
            f"\n  giftstream demo is live: open {url}/ in your browser\n"
            f"  ({args.rooms} rooms, {args.viewers} bot viewers; Ctrl-C stops everything)\n",
            flush=True,
        )
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop(bots)
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
