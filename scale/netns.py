"""Several server hosts on one machine: network namespaces, veth links and addresses made
here and removed here (`ip` from iproute2, as root).

    with HostNetwork(hosts=3, slowable=(3,)) as net:
        net.redis_ip          # where the Redis nodes listen, in namespace net.redis_ns
        net.hosts[0].front_ip # where clients reach host 1 (from this namespace)
        net.partition(net.hosts[1]); net.heal(net.hosts[1])
        net.slow(net.hosts[2], rtt_ms=200); net.slow(net.hosts[2], rtt_ms=0)

The layout, per run (`<pid>` keeps two runs apart and lets a later run remove what a
killed one left):

    namespace gs-cluster-<pid>-db   bridge br0, the Redis address; the Redis nodes run here
    namespace gs-cluster-<pid>-hN   "front": a veth to this namespace (clients reach the
                                    server here); "back": a veth to the db bridge (the
                                    server reaches Redis here)
    this namespace                  a veth to the db bridge (control, audit), one per host
                                    front; nothing else is touched

Every address is inside 10.231.<n>.0/24 (Redis side) and 10.232.<n>.0/24 (fronts), for an
<n> no address of this namespace is in. A host's back link is its link to Redis: down is a
partition; a slowable host's link can be given an added round-trip time, by `tc netem`
where the kernel has it, else by a delaying relay in the host's namespace (`scale.delay`)
that all its Redis connections are redirected through from the start (nftables), at no
added delay until `slow`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PREFIX = "gs-cluster-"
_LOCK = Path("/tmp/gs-cluster-netns.lock")
# The relay's mark on its own connections, which the redirect must let through.
_RELAY_MARK = 0x6773
_RELAY_PORT = 6399


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _tc(netns: str, *args: str, check: bool = True) -> int:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "tc", *args], capture_output=True, text=True, timeout=10
    )
    if check and result.returncode != 0:
        raise NetworkError(f"tc {' '.join(args)}: {result.stderr.strip()}")
    return result.returncode


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can): not root, no `ip`, or the
    kernel or sandbox refuses `ip netns add`."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` refused: {result.stderr.strip()}"
    try:
        made = _ip(
            "-n",
            probe,
            "link",
            "add",
            "name",
            "p0",
            "type",
            "veth",
            "peer",
            "name",
            "p1",
            check=False,
        )
        if made.returncode != 0:
            return f"veth links cannot be made: {made.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone (a run killed before
    it could clean up); their veths go with them. Returns their names."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name.removeprefix(PREFIX).split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


@dataclass(frozen=True)
class Host:
    index: int  # 1-based
    netns: str
    front_ip: str  # clients reach it here
    back_ip: str  # it reaches Redis from here

    @property
    def name(self) -> str:
        return f"h{self.index}"


class HostNetwork:
    """The namespaces and links of one run (see the module's docstring). `remove()` (also
    on leaving the `with`, on failure too) stops whatever still runs inside them and
    deletes them."""

    def __init__(
        self, *, hosts: int = 3, slowable: tuple[int, ...] = (), tag: str | None = None
    ) -> None:
        if not 1 <= hosts <= 50:
            raise ValueError("1 to 50 hosts")
        self.tag = tag or str(os.getpid())
        self.redis_ns = f"{PREFIX}{self.tag}-db"
        self._hosts = hosts
        self.hosts: list[Host] = []
        self.redis_ip = ""
        self.control_ip = ""
        self._subnet = -1
        self._slowable = set(slowable)
        self.slow_by = ""
        self._delays: dict[int, float] = {}
        self._relays: dict[int, subprocess.Popen[bytes]] = {}
        self._relay_dir: Path | None = None
        self._made: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [self.redis_ns, *(host.netns for host in self.hosts)]

    # --- lifetime ---------------------------------------------------------------------------

    def create(self) -> HostNetwork:
        reason = unavailable_reason()
        if reason:
            raise NetworkError(reason)
        remove_stale()
        try:
            with _LOCK.open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._subnet = self._free_subnet()
                self._build()
            if self._slowable:
                self._start_relays()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        self._stop_relays()
        for netns in reversed(self._made):
            _kill_inside(netns)
            _ip("netns", "del", netns, check=False)
        self._made = []
        # Their veths went with the namespaces; a root-side one left alone means a peer
        # that never moved: remove it by name.
        for name in self._root_links():
            _ip("link", "del", name, check=False)

    def __enter__(self) -> HostNetwork:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # --- faults -------------------------------------------------------------------------

    def partition(self, host: Host) -> None:
        """Cut `host` off from Redis: its back link goes down (its clients still reach it)."""
        _ip("-n", host.netns, "link", "set", "back", "down")

    def heal(self, host: Host) -> None:
        _ip("-n", host.netns, "link", "set", "back", "up")

    def slow(self, host: Host, *, rtt_ms: float) -> None:
        """Add `rtt_ms` to every round trip between `host` (one of `slowable`) and Redis,
        at once for its open connections too; 0 takes the delay away."""
        if host.index not in self._slowable:
            raise NetworkError(f"{host.name} was not made slowable")
        if self.slow_by == "tc netem":
            verb = "change" if self._delays.get(host.index) else "add"
            for netns, dev in ((host.netns, "back"), (self.redis_ns, f"h{host.index}")):
                if rtt_ms > 0:
                    _tc(netns, "qdisc", verb, "dev", dev, "root", "netem", "delay",
                        f"{rtt_ms / 2:g}ms")  # fmt: skip
                elif verb == "change":
                    _tc(netns, "qdisc", "del", "dev", dev, "root")
        else:
            relay = self._relays[host.index]
            assert self._relay_dir is not None
            (self._relay_dir / f"h{host.index}").write_text(f"{rtt_ms:g}\n")
            relay.send_signal(signal.SIGUSR1)
        self._delays[host.index] = rtt_ms

    def _start_relays(self) -> None:
        """Where the kernel has no netem: each slowable host's Redis connections are
        redirected through a relay in its namespace (no delay until `slow`)."""
        if _tc(self.hosts[0].netns, "qdisc", "add", "dev", "lo", "root", "netem",
               "delay", "0ms", check=False) == 0:  # fmt: skip
            _tc(self.hosts[0].netns, "qdisc", "del", "dev", "lo", "root", check=False)
            self.slow_by = "tc netem"
            return
        self.slow_by = "relay (no tc netem in this kernel)"
        self._relay_dir = Path(tempfile.mkdtemp(prefix="gs-cluster-relay-"))
        for index in sorted(self._slowable):
            host = self.hosts[index - 1]
            rtt_file = self._relay_dir / f"h{index}"
            rtt_file.write_text("0\n")
            relay = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, sys.executable, "-m", "scale.delay",
                 "--port", str(_RELAY_PORT), "--mark", str(_RELAY_MARK),
                 "--rtt-file", str(rtt_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
            self._relays[index] = relay
            assert relay.stdout is not None
            if relay.stdout.readline().strip() != b"ready":
                raise NetworkError(f"the delaying relay of {host.name} did not start")
            rules = (
                "table ip gs_slow {\n"
                "  chain out {\n"
                "    type nat hook output priority -100;\n"
                f"    meta mark != {_RELAY_MARK} ip daddr {self.redis_ip} meta l4proto tcp"
                f" redirect to :{_RELAY_PORT}\n"
                "  }\n"
                "}\n"
            )
            subprocess.run(
                ["ip", "netns", "exec", host.netns, "nft", "-f", "-"],
                input=rules.encode(),
                check=True,
                capture_output=True,
                timeout=10,
            )

    def _stop_relays(self) -> None:
        for relay in self._relays.values():
            if relay.poll() is None:
                relay.terminate()
        for relay in self._relays.values():
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
            if relay.stdout is not None:
                relay.stdout.close()
        self._relays = {}
        if self._relay_dir is not None:
            shutil.rmtree(self._relay_dir, ignore_errors=True)
            self._relay_dir = None

    # --- how --------------------------------------------------------------------------

    def _free_subnet(self) -> int:
        taken = _ip("-4", "-o", "addr", "show", check=False).stdout
        networks = []
        for line in taken.splitlines():
            parts = line.split()
            if "inet" in parts:
                networks.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
        start = int(self.tag) % 200 if self.tag.isdigit() else 0
        for offset in range(200):
            n = (start + offset) % 200 + 20
            ours = [
                ipaddress.ip_network(f"10.231.{n}.0/24"),
                ipaddress.ip_network(f"10.232.{n}.0/24"),
            ]
            if not any(a.overlaps(b) for a in ours for b in networks):
                return n
        raise NetworkError("no free 10.231.x.0/24 and 10.232.x.0/24 for the host network")

    def _root_links(self) -> list[str]:
        links = [f"gsc{self.tag}db"]
        links += [f"gsc{self.tag}h{i}" for i in range(1, self._hosts + 1)]
        return [name for name in links if len(name) <= 15]

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        n = self._subnet
        db = self.redis_ns
        self.redis_ip = f"10.231.{n}.1"
        self.control_ip = f"10.231.{n}.254"
        control_link = f"gsc{self.tag}db"
        if len(control_link) > 15:
            raise NetworkError(f"tag {self.tag!r} too long for interface names")
        self._netns(db)
        _ip("-n", db, "link", "add", "name", "br0", "type", "bridge")
        _ip("-n", db, "addr", "add", f"{self.redis_ip}/24", "dev", "br0")
        _ip("-n", db, "link", "set", "br0", "up")
        # This namespace's own way in, for control and the audit.
        _ip("link", "add", "name", control_link, "type", "veth", "peer", "name", "ctl", "netns", db)
        _ip("-n", db, "link", "set", "ctl", "master", "br0", "up")
        _ip("addr", "add", f"{self.control_ip}/24", "dev", control_link)
        _ip("link", "set", control_link, "up")
        for i in range(1, self._hosts + 1):
            netns = f"{PREFIX}{self.tag}-h{i}"
            self._netns(netns)
            back_ip = f"10.231.{n}.{10 + i}"
            _ip("-n", netns, "link", "add", "name", "back", "type", "veth", "peer", "name", f"h{i}",
                "netns", db)  # fmt: skip
            _ip("-n", db, "link", "set", f"h{i}", "master", "br0", "up")
            _ip("-n", netns, "addr", "add", f"{back_ip}/24", "dev", "back")
            _ip("-n", netns, "link", "set", "back", "up")
            front = f"gsc{self.tag}h{i}"
            front_ip, gateway = f"10.232.{n}.{4 * i + 2}", f"10.232.{n}.{4 * i + 1}"
            _ip(
                "link",
                "add",
                "name",
                front,
                "type",
                "veth",
                "peer",
                "name",
                "front",
                "netns",
                netns,
            )
            _ip("addr", "add", f"{gateway}/30", "dev", front)
            _ip("link", "set", front, "up")
            _ip("-n", netns, "addr", "add", f"{front_ip}/30", "dev", "front")
            _ip("-n", netns, "link", "set", "front", "up")
            self.hosts.append(Host(i, netns, front_ip, back_ip))
        self._wait_reachable()

    def _wait_reachable(self, timeout: float = 10.0) -> None:
        """Until every host reaches the Redis address (the bridge forwards once its ports
        are up; duplicate address detection is not involved for IPv4)."""
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while True:
                code = (
                    "import socket, sys; s = socket.socket(); s.settimeout(1);"
                    f" r = s.connect_ex(('{self.redis_ip}', 9));"
                    " sys.exit(0 if r in (0, 111) else 1)"  # 111: refused, so reached
                )
                probe = subprocess.run(
                    ["ip", "netns", "exec", host.netns, sys.executable, "-c", code],
                    capture_output=True,
                    timeout=10,
                )
                if probe.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise NetworkError(f"{host.name} does not reach {self.redis_ip}")
                time.sleep(0.1)
