"""Operator actions on accounts: `python -m server.admin suspend|reinstate USER_ID`.

A suspended account can no longer gift, chat, buy coins, cash out or go live, also on
sockets it opened before (every such step checks the account's standing atomically in
Redis). Exit codes: 0 done, 1 no such user, 2 could not reach Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from server.economy import load_catalog
from server.errors import Unauthorized
from server.settings import Settings, SettingsError
from server.store.connection import STORE_ERRORS, connect, load_scripts
from server.store.wallets import WalletStore

STATUS_OF = {"suspend": "suspended", "reinstate": "active"}


async def _run(settings: Settings, url: str | None, action: str, user_id: str) -> int:
    client = connect(settings, url)
    try:
        wallets = WalletStore(client, load_scripts(client), settings, load_catalog())
        await wallets.profile(user_id)  # Unauthorized: no such user
        await wallets.set_status(user_id, STATUS_OF[action])
    except Unauthorized:
        print(f"admin: no user {user_id!r}", file=sys.stderr)
        return 1
    except STORE_ERRORS as exc:
        print(f"admin: could not reach Redis ({exc})", file=sys.stderr)
        return 2
    finally:
        await client.aclose()
    print(f"{user_id}: {STATUS_OF[action]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.admin",
        description="Suspend or reinstate an account. Exit 0: done; 1: no such user; "
        "2: could not reach Redis.",
    )
    parser.add_argument("action", choices=sorted(STATUS_OF))
    parser.add_argument("user_id")
    parser.add_argument("--redis-url", help="the store (default: REDIS_URL)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 2
    url = args.redis_url or settings.redis_url
    if url is None and not settings.redis_cluster_urls:
        print("admin: give --redis-url or set REDIS_URL", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, url, args.action, args.user_id))


if __name__ == "__main__":
    sys.exit(main())
