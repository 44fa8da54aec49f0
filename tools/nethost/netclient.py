"""Packet builders and network clients for testing the libOS stack.

Imported by the tests (to build frames for the in-process fuzz harness) and
run as a script inside a network namespace (`ip netns exec NS python3
netclient.py CMD ...`) to talk to the stack over a TAP device:

    udp ADDR PORT COUNT                 datagrams of many sizes, each echoed back exactly
    tcpecho ADDR PORT NBYTES            send NBYTES while reading the echo, compare
    inject IFACE DSTMAC                 hostile frames (runts, bad checksums, fragments,
                                        odd TCP flags, RST storms, oversized, garbage)
    ipopts IFACE DSTMAC                 an echo request with IP options: wait for the reply
    hostile_conn ADDR PORT IFACE DSTMAC a live TCP connection hit by forged segments,
                                        then checked to still echo
Every command prints one line ending in "ok" on success and exits 0.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import sys
import threading
import time

STACK_IP = "10.0.2.15"
HOST_IP = "10.0.2.1"


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_bytes(a: str) -> bytes:
    return socket.inet_aton(a)


def mac_bytes(m: str) -> bytes:
    return bytes(int(x, 16) for x in m.split(":"))


def eth(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl=64, ident=1, frag=0x4000,
         options=b"", bad_csum=False, total=None) -> bytes:
    ihl = 5 + len(options) // 4
    tl = total if total is not None else ihl * 4 + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl, ident, frag, ttl, proto, 0,
                    ip_bytes(src), ip_bytes(dst)) + options
    c = csum(h) ^ (0x5555 if bad_csum else 0)
    return h[:10] + struct.pack("!H", c) + h[12:] + payload


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
        data: bytes = b"", *, wnd=65535, options=b"", bad_csum=False, doff=None) -> bytes:
    off = doff if doff is not None else 5 + len(options) // 4
    h = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4,
                    flags, wnd, 0, 0) + options
    seg = h + data
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(pseudo + seg) ^ (0x1234 if bad_csum else 0)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src: str, dst: str, sport: int, dport: int, data: bytes, *, bad_csum=False,
        length=None) -> bytes:
    ln = length if length is not None else 8 + len(data)
    seg = struct.pack("!HHHH", sport, dport, ln, 0) + data
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, 17, len(seg))
    c = csum(pseudo + seg) ^ (0x1234 if bad_csum else 0)
    return seg[:6] + struct.pack("!H", c or 0xFFFF) + seg[8:]


def icmp_echo(ident: int, seq: int, data: bytes, *, bad_csum=False) -> bytes:
    h = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    c = csum(h) ^ (0x1111 if bad_csum else 0)
    return h[:2] + struct.pack("!H", c) + h[4:]


FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16
HOST_MAC = b"\x02\x00\x00\x00\x00\x01"


def hostile_frames(dst_mac: bytes, src_mac: bytes = HOST_MAC, seed: int = 1) -> list[bytes]:
    """Frames no stack should choke on, each with a label-free purpose noted inline."""
    rnd = random.Random(seed)
    S, D = HOST_IP, STACK_IP
    e = lambda payload, t=0x0800: eth(dst_mac, src_mac, t, payload)  # noqa: E731
    echo = icmp_echo(0x4242, 1, b"x" * 32)
    f = [b"", b"\x00", dst_mac, dst_mac + src_mac + b"\x08",           # runts
         e(b""), e(b"\x45"), e(b"\x45" + b"\0" * 18), e(b"\x00" * 28, 0x0806)]
    f.append(e(ipv4(S, D, 1, echo, bad_csum=True)))                  # bad IP checksum
    f.append(e(ipv4(S, D, 1, icmp_echo(1, 1, b"abc", bad_csum=True))))  # bad ICMP checksum
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5555, 80, 1, 0, SYN, bad_csum=True))))  # bad TCP sum
    f.append(e(ipv4(S, D, 17, udp(S, D, 5555, 7, b"bad", bad_csum=True))))
    f.append(e(ipv4(S, D, 17, udp(S, D, 5555, 7, b"len", length=400))))  # UDP len > IP len
    f.append(e(ipv4(S, D, 1, echo, total=1400)))                     # IP length > frame
    f.append(e(ipv4(S, D, 1, echo, total=10)))                       # IP length < header
    f.append(e(bytes([0x4F]) + ipv4(S, D, 1, echo)[1:]))             # IHL 15 > packet
    f.append(e(bytes([0x65]) + ipv4(S, D, 1, echo)[1:]))             # version 6 in a v4 frame
    big = icmp_echo(0x4242, 2, b"F" * 64)
    f.append(e(ipv4(S, D, 1, big[:40], frag=0x2000, total=20 + 40)))  # first fragment (MF)
    f.append(e(ipv4(S, D, 1, big[40:], frag=5)))                     # last fragment
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5556, 80, 7, 0, SYN | FIN))))  # SYN+FIN
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5557, 80, 7, 0, 0))))          # no flags
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5558, 80, 7, 0, FIN))))        # FIN alone
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5559, 80, 7, 9, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"))))
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5560, 80, 7, 0, SYN, doff=15))))  # options past the end
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5561, 80, 7, 0, SYN, options=b"\x02\x00\x00\x00"))))
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5562, 80, 7, 0, SYN, options=b"\x02\x04\x00\x01"))))  # MSS 1
    f.append(e(ipv4(S, D, 6, tcp(S, D, 5563, 80, 7, 0, SYN | ACK | RST | FIN | PSH | 0x20))))
    for i in range(200):                                              # RST storm, to nothing
        f.append(e(ipv4(S, D, 6, tcp(S, D, 1024 + i, rnd.choice([80, 7, 9999]),
                                     rnd.getrandbits(32), rnd.getrandbits(32),
                                     RST | rnd.choice([0, ACK])))))
    for _ in range(200):                                              # garbage after a v4 header
        body = os.urandom(rnd.randrange(0, 80))
        f.append(e(ipv4(S, D, rnd.choice([1, 6, 17, 99]), body)))
    for _ in range(100):                                              # garbage, any type
        f.append(e(os.urandom(rnd.randrange(0, 200)), rnd.choice([0x0800, 0x0806, 0x86DD])))
    f.append(e(b"\x45" + b"\0" * 3000))                               # oversized (needs MTU)
    f.append(e(ipv4(S, D, 1, icmp_echo(0x4242, 3, b"J" * 8000))))     # a jumbo ping
    f.append(eth(b"\xff" * 6, src_mac, 0x0806, struct.pack(           # ARP for someone else
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, ip_bytes(S), b"\0" * 6,
        ip_bytes("10.0.2.99"))))
    return f


def packet_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    return s


def cmd_udp(addr: str, port: int, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    sizes = [0, 1, 2, 100, 512, 1000, 1471, 1472]
    for i in range(count):
        data = os.urandom(sizes[i % len(sizes)])
        for attempt in range(3):
            s.sendto(data, (addr, port))
            try:
                got, src = s.recvfrom(4096)
                break
            except socket.timeout:
                if attempt == 2:
                    raise
        assert got == data and src == (addr, port), (len(got), len(data), src)
    print(f"udp {count} ok")


def cmd_tcpecho(addr: str, port: int, nbytes: int) -> None:
    data = os.urandom(nbytes)
    t = socket.create_connection((addr, port), timeout=90)    # generous: loss tests
    err = []

    def writer():
        try:
            t.sendall(data)
            t.shutdown(socket.SHUT_WR)
        except OSError as exc:
            err.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    got = bytearray()
    while True:
        x = t.recv(65536)
        if not x:
            break
        got += x
    w.join(30)
    t.close()
    assert not err, err
    assert bytes(got) == data, (len(got), nbytes)
    print(f"tcp {nbytes} ok")


def cmd_inject(iface: str, dst_mac: str) -> None:
    s = packet_socket(iface)
    sent = 0
    for fr in hostile_frames(mac_bytes(dst_mac)):
        try:
            s.send(fr)
            sent += 1
        except OSError:
            pass                    # the host kernel refused it (too short/long): fine
        if sent % 50 == 0:
            time.sleep(0.01)        # don't overrun the TAP queue
    print(f"injected {sent} ok")


def cmd_ipopts(iface: str, dst_mac: str) -> None:
    s = packet_socket(iface)
    s.settimeout(0.5)
    my_mac = s.getsockname()[4][:6]
    opts = b"\x01\x01\x01\x00"          # NOP NOP NOP EOL: a 24-byte header
    ping = icmp_echo(0x7777, 9, b"options!")
    fr = eth(mac_bytes(dst_mac), my_mac, 0x0800, ipv4(HOST_IP, STACK_IP, 1, ping, options=opts))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        s.send(fr)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                r = s.recv(2048)
            except socket.timeout:
                break
            if len(r) >= 42 and r[12:14] == b"\x08\x00" and r[23] == 1:
                ihl = (r[14] & 15) * 4
                ic = r[14 + ihl:]
                if ic[0] == 0 and ic[4:6] == b"\x77\x77" and ic[8:16] == b"options!":
                    print("ipopts reply ok")
                    return
    raise SystemExit("no reply to an echo request with IP options")


def cmd_hostile_conn(addr: str, port: int, iface: str, dst_mac: str) -> None:
    t = socket.create_connection((addr, port), timeout=10)
    sport = t.getsockname()[1]
    s = packet_socket(iface)
    my_mac = s.getsockname()[4][:6]
    rnd = random.Random(7)
    S, D = HOST_IP, addr
    for i in range(300):
        flags = rnd.choice([ACK, ACK | PSH, RST, RST | ACK, SYN, SYN | FIN, 0, FIN | ACK,
                            SYN | ACK])
        data = os.urandom(rnd.randrange(0, 200)) if rnd.random() < 0.5 else b""
        seg = tcp(S, D, sport, port, rnd.getrandbits(32), rnd.getrandbits(32), flags, data,
                  wnd=rnd.randrange(0, 65536))
        s.send(eth(mac_bytes(dst_mac), my_mac, 0x0800, ipv4(S, D, 6, seg)))
        if i % 50 == 0:
            time.sleep(0.01)
    time.sleep(0.2)
    data = os.urandom(20000)
    t.sendall(data)
    got = bytearray()
    while len(got) < len(data):
        x = t.recv(65536)
        if not x:
            break
        got += x
    assert bytes(got) == data, (len(got), len(data))
    t.close()
    print("hostile_conn ok")


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "udp":
        cmd_udp(args[0], int(args[1]), int(args[2]))
    elif cmd == "tcpecho":
        cmd_tcpecho(args[0], int(args[1]), int(args[2]))
    elif cmd == "inject":
        cmd_inject(args[0], args[1])
    elif cmd == "ipopts":
        cmd_ipopts(args[0], args[1])
    elif cmd == "hostile_conn":
        cmd_hostile_conn(args[0], int(args[1]), args[2], args[3])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
