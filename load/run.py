"""`python -m load.run`: one load test of giftstream, from start to report.

    python -m load.run --users 200 --spawn-rate 20 --duration 60 --workers 2 --processes 2

With no --url it starts an embedded Redis and the server (`python -m server`, with
--workers server processes) on 127.0.0.1, waits for /healthz, runs Locust headless
(load/locustfile.py) while sampling the CPU and memory of the server, Redis and every
Locust process, stops the server, runs the conservation audit (`python -m server.audit`)
on the store, writes summary.json and summary.md (and Locust's HTML report and CSV) to
--out, prints the summary, stops everything it started, and exits 1 when the audit
finds a breach.

Locust runs as one process, or with --processes N as a master and N worker processes
(one core each); with --remote-workers M the master also waits for M workers from other
machines (`locust -f load/locustfile.py --worker --master-host THIS_HOST --master-port
PORT`, see the README). The rooms are opened once, by the master, and handed to the
workers.

With --url it loads that deployment instead and starts nothing; it audits only when
--redis-url is given. Everything is bounded: the users, the run time, and every wait.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from giftstream_client.errors import GiftstreamError
from load.report import build_summary, render_markdown, render_text
from load.resources import ResourceSampler
from load.rooms import end_rooms, open_rooms
from server.child import ServerProcess, ServerStartError
from server.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
MAX_USERS = 50_000
MAX_DURATION_S = 3600
MAX_PROCESSES = 256
# How long the master waits for its workers to connect before it gives up.
WORKERS_WAIT_S = 60
# Server counters worth a delta over the run (Prometheus names, all labels summed apart).
SERVER_COUNTERS = (
    "giftstream_gifts_total",
    "giftstream_broadcast_frames_total",
    "giftstream_broadcast_bytes_total",
    "giftstream_slow_readers_closed_total",
    "giftstream_redis_errors_total",
    "giftstream_gift_ack_seconds_sum",
    "giftstream_gift_ack_seconds_count",
    "giftstream_fanout_flush_seconds_sum",
    "giftstream_fanout_flush_seconds_count",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--users", type=int, default=100, help="Locust users (default 100)")
    p.add_argument("--spawn-rate", type=float, default=20, help="users started per second")
    p.add_argument("--duration", type=int, default=30, help="seconds of load (default 30)")
    p.add_argument("--workers", type=int, default=1, help="server processes (GS_WORKERS)")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="Locust worker processes under a master (-1: one per core; default 0: "
        "Locust runs as one process)",
    )
    p.add_argument(
        "--remote-workers",
        type=int,
        default=0,
        help="workers from other machines the master waits for as well (see the README)",
    )
    p.add_argument(
        "--master-bind-host",
        default="127.0.0.1",
        help="where the master listens for workers (0.0.0.0 for remote workers)",
    )
    p.add_argument(
        "--master-port", type=int, help="the master's port for workers (default: a free one)"
    )
    p.add_argument("--url", help="an existing deployment to load (then nothing is started)")
    p.add_argument("--redis-url", help="with --url: its Redis, to audit after the run")
    p.add_argument("--out", type=Path, help="report folder (default reports/load-<time>)")
    p.add_argument("--rooms", type=int, default=20, help="rooms to open (default 20)")
    p.add_argument("--zipf", type=float, default=1.2, help="room popularity exponent")
    p.add_argument("--gift-rate", type=float, default=0.5, help="gifts/s per gifting user")
    p.add_argument("--chat-rate", type=float, default=0.05, help="chat lines/s per gifting user")
    p.add_argument(
        "--anonymous-share", type=float, default=0.2, help="share of users that only watch"
    )
    p.add_argument("--package", default="p10000", help="coin package gifting users buy")
    p.add_argument(
        "--timed-share",
        type=float,
        default=0.01,
        help="share of viewers that time every event (broadcast latency); the others only "
        "check seqs (default 0.01)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server started here (repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"load.run: {problem}", file=sys.stderr)
        return 2
    out: Path = args.out or REPO / "reports" / time.strftime("load-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = _run(args, out.resolve())
    except (ServerStartError, OSError, RuntimeError, GiftstreamError) as exc:
        print(f"load.run: {exc}", file=sys.stderr)
        return 2
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render_markdown(summary))
    print(render_text(summary))
    print(f"  report         {out}/summary.md, {out}/report.html")
    audit = summary["audit"]
    return 1 if audit.get("ran") and not audit.get("ok") else 0


def _check(args: argparse.Namespace) -> str | None:
    if not 1 <= args.users <= MAX_USERS:
        return f"--users must be 1..{MAX_USERS}"
    if not 1 <= args.duration <= MAX_DURATION_S:
        return f"--duration must be 1..{MAX_DURATION_S} seconds"
    if args.spawn_rate <= 0:
        return "--spawn-rate must be positive"
    if args.workers < 1:
        return "--workers must be at least 1"
    if args.processes == -1:
        args.processes = os.cpu_count() or 1
    if not 0 <= args.processes <= MAX_PROCESSES:
        return f"--processes must be -1 or 0..{MAX_PROCESSES}"
    if not 0 <= args.remote_workers <= MAX_PROCESSES:
        return f"--remote-workers must be 0..{MAX_PROCESSES}"
    if args.remote_workers and args.master_port is None:
        return "--remote-workers needs --master-port (the port the remote workers dial)"
    if args.remote_workers and args.master_bind_host in ("127.0.0.1", "localhost", "::1"):
        return "--remote-workers needs --master-bind-host 0.0.0.0 (or this machine's address)"
    if not 0 <= args.timed_share <= 1:
        return "--timed-share must be 0..1"
    if args.redis_url and not args.url:
        return "--redis-url goes with --url (without --url, Redis is started here)"
    if args.server_env and args.url:
        return "--server-env is for the server started here, not for --url"
    if any("=" not in item for item in args.server_env):
        return "--server-env takes NAME=VALUE"
    return None


def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from server.embedded import EmbeddedRedis

    sampler = ResourceSampler()
    with contextlib.ExitStack() as stack:
        server: ServerProcess | None = None
        if args.url is None:
            print("load.run: starting an embedded Redis and the server ...", flush=True)
            redis = stack.enter_context(EmbeddedRedis(data_dir=out / "redis"))
            redis_url: str | None = redis.url
            server = ServerProcess(
                env={
                    "REDIS_URL": redis.url,
                    "GS_WORKERS": str(args.workers),
                    "GS_DATA_DIR": str(out / "server-data"),
                    **dict(item.split("=", 1) for item in args.server_env),
                },
                log_path=out / "server.log",
                cwd=REPO,
            )
            stack.enter_context(server)
            url = server.url
            sampler.watch("server", server.pid)
            sampler.watch("redis", redis.pid)
        else:
            url = args.url.rstrip("/")
            redis_url = args.redis_url
            _check_alive(url)
        stack.callback(sampler.stop)
        # Opened here, before Locust starts (Locust's run time would count the setup),
        # handed to its master, which hands them to the workers; ended once Locust is done.
        rooms = open_rooms(url, args.rooms)
        sampler.start()
        before = _scrape(url)
        started = time.time()
        try:
            locust_rc = _locust(args, url, out, sampler, rooms.room_ids)
        finally:
            end_rooms(url, rooms)
        elapsed = time.time() - started
        sampler.stop()
        after = _scrape(url)
        if server is not None:
            server.stop()  # the audit wants a quiet store: no server, no gifts in flight
        elif redis_url:
            time.sleep(3.0)  # a deployment keeps running: give gifts in flight a moment
        audit = _audit(redis_url)
    sampler.write_csv(out / "resources.csv")
    run_info = {
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "wall_s": round(elapsed, 1),
        "locust_processes": _processes_label(args),
        "server_workers": args.workers if args.url is None else "n/a (--url)",
        "url": url,
        "rooms": args.rooms,
        "zipf": args.zipf,
        "gift_rate_per_user": args.gift_rate,
        "chat_rate_per_user": args.chat_rate,
        "anonymous_share": args.anonymous_share,
        "timed_share": args.timed_share,
        "locust_exit_code": locust_rc,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "cpus": os.cpu_count(),
    }
    report_path = out / "locust.json"
    if not report_path.exists():
        raise RuntimeError(f"Locust wrote no report; see {out}/locust.log")
    return build_summary(
        run=run_info,
        locust=json.loads(report_path.read_text()),
        # Locust starts a few seconds after the sampler; the ramp-up is users/spawn rate.
        resources=sampler.summary(steady_after_s=args.users / args.spawn_rate + 10.0),
        server_metrics={
            k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)
        },
        audit=audit,
    )


def _processes_label(args: argparse.Namespace) -> str:
    if not args.processes and not args.remote_workers:
        return "one Locust process"
    remote = f" + {args.remote_workers} remote" if args.remote_workers else ""
    return f"Locust master + {args.processes} worker(s){remote}"


def locust_commands(
    args: argparse.Namespace, url: str, out: Path, room_ids: list[str]
) -> list[list[str]]:
    """The Locust processes to start: one, or a master and its local workers."""
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    master = [
        *base,
        "--headless",
        "-u", str(args.users),
        "-r", str(args.spawn_rate),
        "-t", f"{args.duration}s",
        "--host", url,
        "--html", str(out / "report.html"),
        "--csv", str(out / "locust"),
        "--only-summary",
        "--stop-timeout", "0",
        "--gs-room-ids", ",".join(room_ids),
        "--gs-zipf", str(args.zipf),
        "--gs-gift-rate", str(args.gift_rate),
        "--gs-chat-rate", str(args.chat_rate),
        "--gs-anonymous-share", str(args.anonymous_share),
        "--gs-package", args.package,
        "--gs-timed-share", str(args.timed_share),
        "--gs-report", str(out / "locust.json"),
    ]  # fmt: skip
    if not args.processes and not args.remote_workers:
        return [master]
    port = args.master_port or free_port()
    master += [
        "--master",
        "--master-bind-host", args.master_bind_host,
        "--master-bind-port", str(port),
        "--expect-workers", str(args.processes + args.remote_workers),
        "--expect-workers-max-wait", str(WORKERS_WAIT_S),
    ]  # fmt: skip
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    return [master] + [list(worker) for _ in range(args.processes)]


def _locust(
    args: argparse.Namespace, url: str, out: Path, sampler: ResourceSampler, room_ids: list[str]
) -> int:
    commands = locust_commands(args, url, out, room_ids)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Waiting for workers, spawning, the run, and Locust's own shutdown; past this it is
    # stopped.
    limit = (
        args.duration
        + args.users / args.spawn_rate
        + 60
        + (WORKERS_WAIT_S if len(commands) > 1 else 0)
    )
    print(
        f"load.run: Locust ({_processes_label(args)}), {args.users} users at "
        f"{args.spawn_rate}/s for {args.duration} s against {url} ...",
        flush=True,
    )
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as logs:
        try:
            for i, command in enumerate(commands):
                name = "locust" if i == 0 else f"locust-worker-{i}"
                log = logs.enter_context((out / f"{name}.log").open("wb"))
                proc = subprocess.Popen(
                    command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
                procs.append(proc)
                label = "locust" if len(commands) == 1 else (
                    "locust master" if i == 0 else f"locust worker {i}"
                )  # fmt: skip
                sampler.watch(label, proc.pid)
            master = procs[0]
            try:
                return master.wait(limit)
            except subprocess.TimeoutExpired:
                return -1
        finally:
            # The workers leave when the master quits; whoever is left is stopped here.
            deadline = time.monotonic() + 15
            for proc in procs:
                if proc is procs[0] and proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def _check_alive(url: str) -> None:
    try:
        status = httpx.get(url + "/healthz", timeout=5.0).status_code
    except httpx.HTTPError as exc:
        raise ServerStartError(f"{url} does not answer: {exc}") from exc
    if status != 200:
        raise ServerStartError(f"{url}/healthz answered {status}")


def _scrape(url: str) -> dict[str, float]:
    """The server's counters of interest from /metrics (empty if it has none)."""
    try:
        text = httpx.get(url + "/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(SERVER_COUNTERS):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def _audit(redis_url: str | None) -> dict[str, Any]:
    if redis_url is None:
        return {"ran": False, "reason": "an existing deployment without --redis-url"}
    print("load.run: auditing the store ...", flush=True)
    env = {**os.environ, "REDIS_URL": redis_url}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "server.audit", "--redis-url", redis_url],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return {"ran": True, "ok": False, "output": "the audit did not finish in 600 s"}
    output = done.stdout + (("\n" + done.stderr) if done.stderr.strip() else "")
    return {"ran": True, "ok": done.returncode == 0, "exit_code": done.returncode, "output": output}


if __name__ == "__main__":
    sys.exit(main())
