"""The NIC's uplinks: where frames for unknown MACs go (devices/nic.py).

    --net none                              no uplink: the VFs only reach each other
    --net tap:NAME                          a Linux TAP device (root, or a tap the user owns)
    --net udp:LOCALPORT:REMOTEHOST:REMOTEPORT   one Ethernet frame per UDP datagram: a
                                            socket tunnel, needs no privileges

An uplink has fileno() (for select), recv_batch(n) (frames waiting now, without
blocking), send(frame), describe() and close().  No dependencies beyond the standard
library: the TAP is opened with fcntl.ioctl(TUNSETIFF).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536                       # read whole datagrams; the NIC drops the oversized


class UplinkError(ValueError):
    """A bad --net specification or an uplink that cannot be opened."""


class TapUplink:
    def __init__(self, name: str, path: str = "/dev/net/tun"):
        if not name or len(name.encode()) > 15 or "/" in name:
            raise UplinkError(f"--net tap:{name}: a TAP name is 1 to 15 characters")
        self.name = name
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise UplinkError(f"--net tap:{name}: cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                                        IFF_TAP | IFF_NO_PI))
        except OSError as exc:
            os.close(self.fd)
            hint = " (needs root or CAP_NET_ADMIN, or a tap owned by you)" \
                if exc.errno in (errno.EPERM, errno.EACCES) else ""
            raise UplinkError(f"--net tap:{name}: TUNSETIFF failed: {exc.strerror}{hint}") from None

    def fileno(self) -> int:
        return self.fd

    def recv_batch(self, n: int) -> list[bytes]:
        out = []
        while len(out) < n:
            try:
                out.append(os.read(self.fd, MAX_FRAME))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:             # the interface went down or away
                break
        return out

    def send(self, frame: bytes) -> None:
        os.write(self.fd, frame)

    def describe(self) -> str:
        return f"uplink tap {self.name}"

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class UdpUplink:
    """Each Ethernet frame is one UDP datagram to REMOTEHOST:REMOTEPORT; datagrams from
    anyone else are dropped (counted in `foreign`)."""

    def __init__(self, local_port: int, remote_host: str, remote_port: int):
        try:
            self.remote = (socket.gethostbyname(remote_host), remote_port)
        except OSError as exc:
            raise UplinkError(f"--net udp: cannot resolve {remote_host!r}: {exc}") from None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("0.0.0.0", local_port))
        except OSError as exc:
            self.sock.close()
            raise UplinkError(f"--net udp: cannot bind UDP port {local_port}: "
                              f"{exc.strerror}") from None
        self.sock.setblocking(False)
        self.local_port = self.sock.getsockname()[1]
        self.foreign = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, n: int) -> list[bytes]:
        out = []
        while len(out) < n:
            try:
                data, addr = self.sock.recvfrom(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if addr != self.remote:
                self.foreign += 1
                continue
            out.append(data)
        return out

    def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, self.remote)

    def describe(self) -> str:
        return (f"uplink udp :{self.local_port} <-> {self.remote[0]}:{self.remote[1]} "
                f"({self.foreign} foreign datagrams dropped)")

    def close(self) -> None:
        self.sock.close()


def parse_net(spec: str):
    """An uplink for --net SPEC, or None for 'none'.  UplinkError names the problem."""
    spec = (spec or "none").strip()
    if spec == "none":
        return None
    kind, _, rest = spec.partition(":")
    if kind == "tap":
        return TapUplink(rest)
    if kind == "udp":
        parts = rest.split(":")
        if len(parts) != 3:
            raise UplinkError(f"--net {spec}: use udp:LOCALPORT:REMOTEHOST:REMOTEPORT")
        try:
            lport, rport = int(parts[0]), int(parts[2])
        except ValueError:
            raise UplinkError(f"--net {spec}: the ports must be numbers") from None
        if not (0 <= lport < 65536 and 0 < rport < 65536):
            raise UplinkError(f"--net {spec}: ports are 0..65535 (remote port not 0)")
        return UdpUplink(lport, parts[1], rport)
    raise UplinkError(f"--net {spec}: unknown uplink; use none, tap:NAME or "
                      f"udp:LOCALPORT:REMOTEHOST:REMOTEPORT")
