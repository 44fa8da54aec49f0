"""Throwaway network namespaces with a TAP device (or a veth pair between two of them):
the benchmark's (vmm/netbench_host.py) and the tests' (tests/netns.py) common part.

    from vmm import netns
    if netns.skip_reason() is None:
        with netns.netns(prefix="xombbench") as ns:     # <prefix>-<pid>-<n>, a TAP inside
            vm = ns.popen(sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}", ...)
            s = ns.socket()                             # a socket of that namespace
        with netns.veth_pair() as (a, b):               # two namespaces joined by a veth pair

Everything lives inside the namespaces: the TAP is created there (`ip tuntap add`), the VMM
runs there (`ns.popen`, through `ip netns exec`) and opens that TAP, and host-side sockets
are created there (`ns.socket`: a helper thread setns()es into it first, since Python 3.11
has no os.setns).  No address, route or packet ever touches the host's own namespace.
The namespaces (and with them the TAP or the veth pair) are removed on exit, also when the
body fails.  `skip_reason()` says why none can be made here (not root, no `ip`, no
/dev/net/tun, the kernel refuses network namespaces), or None.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
_seq = itertools.count()


class NetnsUnavailable(RuntimeError):
    """No network namespace can be made here (the reason is the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stdout.strip()}")
    return r


@functools.lru_cache(maxsize=None)
def skip_reason() -> str | None:
    """Why namespaces with a TAP cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if not shutil.which("ip"):
        return "needs the ip command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    name = f"xombprobe-{os.getpid()}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stdout.strip()}"
    try:                                # what netns() does: a TAP inside, exec inside
        r = _ip("netns", "exec", name, "ip", "tuntap", "add", "dev", "xprobe0", "mode", "tap",
                check=False)
        if r.returncode != 0:
            return f"cannot create a TAP inside a network namespace: {r.stdout.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


class NetNs:
    """A live namespace: its name, its device (TAP or veth end) and the address on it."""

    def __init__(self, name: str, tap: str, host: str):
        self.name, self.tap = name, tap
        self.host_if = ipaddress.IPv4Interface(host)
        self.host_ip = str(self.host_if.ip)

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(*argv), timeout=timeout, **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*argv), **kw)

    def socket(self, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto=0) -> socket.socket:
        """A socket of this namespace (created by a thread that entered it)."""
        box: dict = {}

        def enter():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                box["s"] = socket.socket(family, type, proto)
            except Exception as exc:        # reported in the caller's thread
                box["e"] = exc
        t = threading.Thread(target=enter)  # the thread dies: its namespace goes with it
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box["s"]

    def packet_socket(self) -> socket.socket:
        """Raw Ethernet frames on the TAP (AF_PACKET, every protocol)."""
        s = self.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((self.tap, 0))
        return s

    def set_mtu(self, mtu: int) -> None:
        _ip("-n", self.name, "link", "set", self.tap, "mtu", str(mtu))

    def link_packets(self) -> int:
        """Frames through this namespace's device so far, both directions."""
        r = _ip("-n", self.name, "-s", "-j", "link", "show", "dev", self.tap)
        st = json.loads(r.stdout)[0]["stats64"]
        return int(st["rx"]["packets"]) + int(st["tx"]["packets"])


def _names(prefix: str) -> tuple[str, int]:
    n = next(_seq)
    return f"{prefix}-{os.getpid()}-{n}", n


@contextlib.contextmanager
def netns(host: str = "10.0.2.1/24", prefix: str = "xombtest"):
    """A namespace with a TAP (admin up, host address `host`) and lo up; removed after.
    Raises NetnsUnavailable when skip_reason() says none can be made."""
    reason = skip_reason()
    if reason:
        raise NetnsUnavailable(reason)
    name, n = _names(prefix)
    tap = f"xt{os.getpid() % 100000}n{n}"[:15]
    _ip("netns", "add", name)
    try:
        _ip("netns", "exec", name, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
        _ip("-n", name, "addr", "add", host, "dev", tap)
        _ip("-n", name, "link", "set", tap, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield NetNs(name, tap, host)
    finally:
        _ip("-n", name, "tuntap", "del", "dev", tap, "mode", "tap", check=False)
        _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def veth_pair(a: str = "10.0.3.1/24", b: str = "10.0.3.2/24", prefix: str = "xombtest"):
    """Two namespaces joined by a veth pair (addresses `a` and `b`, up, lo up); removed
    after.  Yields (NetNs, NetNs); each one's .tap is its end of the pair."""
    reason = skip_reason()
    if reason:
        raise NetnsUnavailable(reason)
    (na, n), (nb, _) = _names(prefix), _names(prefix)
    ea, eb = f"xva{os.getpid() % 100000}n{n}"[:15], f"xvb{os.getpid() % 100000}n{n}"[:15]
    made = []
    try:
        for name in (na, nb):
            _ip("netns", "add", name)
            made.append(name)
        _ip("-n", na, "link", "add", ea, "type", "veth", "peer", "name", eb, "netns", nb)
        for name, dev, addr in ((na, ea, a), (nb, eb, b)):
            _ip("-n", name, "addr", "add", addr, "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield NetNs(na, ea, a), NetNs(nb, eb, b)
    finally:
        for name in made:               # deleting a namespace deletes its veth end, and so both
            _ip("netns", "del", name, check=False)
