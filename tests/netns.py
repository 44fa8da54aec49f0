"""Throwaway network namespaces with a TAP device, for tests that put the guest on a network.

    from netns import netns, requires_netns

    @requires_netns
    def test_x():
        with netns() as ns:                      # xombtest-<pid>-<n>, tap inside it, host 10.0.2.1/24
            vm = ns.popen(sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}", ...)
            s = ns.packet_socket()               # AF_PACKET on the tap, inside the namespace
            ns.run("ping", "-c", "1", "10.0.2.15")

Everything lives inside the namespace: the TAP is created there (`ip tuntap add`), the VMM
runs there (`ns.popen`, through `ip netns exec`) and opens that TAP, and host-side sockets
are created there (`ns.socket`: a helper thread setns()es into it first, since Python 3.11
has no os.setns).  No address, route or packet ever touches the host's own namespace.
The namespace (and with it the TAP) is removed on exit, also when the body fails.

Skips with a reason when not root, or `ip` or /dev/net/tun is missing, or the kernel
refuses network namespaces.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import ipaddress
import os
import shutil
import socket
import subprocess
import threading

import pytest

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
_seq = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stdout.strip()}")
    return r


@functools.lru_cache(maxsize=None)
def skip_reason() -> str | None:
    """Why netns tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if not shutil.which("ip"):
        return "needs the ip command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    name = f"xombtest-{os.getpid()}-probe"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stdout.strip()}"
    try:                                # what the fixture does: a TAP inside, exec inside
        r = _ip("netns", "exec", name, "ip", "tuntap", "add", "dev", "xprobe0", "mode", "tap",
                check=False)
        if r.returncode != 0:
            return f"cannot create a TAP inside a network namespace: {r.stdout.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


requires_netns = pytest.mark.skipif(skip_reason() is not None,
                                    reason=f"netns: {skip_reason()}")


class NetNs:
    """A live namespace: its name, the TAP's name and the host side's address."""

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


@contextlib.contextmanager
def netns(host: str = "10.0.2.1/24"):
    """A namespace with a TAP (admin up, host address `host`) and lo up; removed after."""
    reason = skip_reason()
    if reason:
        pytest.skip(f"netns: {reason}")
    n = next(_seq)
    name = f"xombtest-{os.getpid()}-{n}"
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
