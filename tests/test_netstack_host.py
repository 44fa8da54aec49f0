"""The libOS network stack (libos/lib/net/) tested on the host, without KVM.

Two harnesses built from the same C sources the guest links:

* tools/nethost/fuzz.c as a shared library (ctypes): a stack with a fake
  link.  Protocol unit tests drive a TCP connection by hand (handshake,
  data, windows, retransmission with backoff, close), and hypothesis feeds
  the input path hostile frames, checking the TCP invariants after each.
* tools/nethost/main.c on a TAP device inside a private network namespace
  (root only): real `ping`, `curl` and Python clients against it, hostile
  frames from an AF_PACKET socket, and packet loss (the harness's --loss,
  and `tc netem` where the kernel has it).
"""
from __future__ import annotations

import ctypes
import importlib.util
import itertools
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
NETDIR = ROOT / "libos" / "lib" / "net"
TOOLS = ROOT / "tools" / "nethost"
CC = os.environ.get("XOMB_HOST_CC", "gcc")

_spec = importlib.util.spec_from_file_location("netclient", TOOLS / "netclient.py")
nc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nc)

STACK_MAC = b"\x52\x54\x00\x12\x34\x56"
S, D = nc.HOST_IP, nc.STACK_IP
FIN, SYN, RST, PSH, ACK = nc.FIN, nc.SYN, nc.RST, nc.PSH, nc.ACK
# enum tcp_state in net.h
TCP_FREE, TCP_CLOSED, TCP_LISTEN, TCP_SYN_SENT, TCP_SYN_RCVD, TCP_ESTABLISHED = range(6)
TCP_FIN_WAIT_1, TCP_FIN_WAIT_2, TCP_CLOSING, TCP_TIME_WAIT, TCP_CLOSE_WAIT, TCP_LAST_ACK = \
    range(6, 12)
STATS = ["rx_frames", "tx_frames", "tx_errors", "drop_runt", "drop_not_for_us", "drop_bad_ip",
         "drop_ip_csum", "drop_fragment", "drop_bad_udp", "drop_bad_tcp", "drop_bad_icmp",
         "drop_no_port", "drop_arp_full", "tcp_rst_sent", "tcp_retransmits",
         "tcp_out_of_order", "tcp_out_of_window", "tcp_fast_retransmits"]


def _sources() -> list[str]:
    # nic_netif.c is the guest's glue to the NIC driver: not portable
    return [str(p) for p in sorted(NETDIR.glob("*.c")) if p.name != "nic_netif.c"]


def _gcc(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([CC, "-std=gnu11", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter",
                           "-Werror", "-iquote", str(ROOT / "libos" / "lib"), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    if shutil.which(CC) is None:
        pytest.skip(f"no host compiler {CC}")
    return tmp_path_factory.mktemp("nethost")


# --------------------------------------------------------------------------
# The in-process harness (no root, no network)
# --------------------------------------------------------------------------
class Stack:
    """tools/nethost/fuzz.c: one stack at 10.0.2.15/24, UDP 7 and TCP 80 open."""

    def __init__(self, lib):
        self.lib = lib
        lib.nf_init(STACK_MAC, ctypes.c_uint64(12345))
        self.arp_announce()
        self.drain()

    def arp_announce(self) -> None:
        """An ARP request from the host: the stack learns our MAC (and answers)."""
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, nc.HOST_MAC, nc.ip_bytes(S),
                          b"\0" * 6, nc.ip_bytes(D))
        self.input(nc.eth(b"\xff" * 6, nc.HOST_MAC, 0x0806, arp))

    def input(self, frame: bytes) -> None:
        self.lib.nf_input(frame, len(frame))
        assert self.lib.nf_check() == 0, f"invariant {self.lib.nf_check()} broken"

    def advance(self, us: int) -> None:
        self.lib.nf_advance(ctypes.c_uint64(us))
        assert self.lib.nf_check() == 0

    def take(self) -> bytes | None:
        buf = ctypes.create_string_buffer(2048)
        n = self.lib.nf_take(buf, 2048)
        return buf.raw[:n] if n else None

    def drain(self) -> list[bytes]:
        out = []
        while (f := self.take()) is not None:
            out.append(f)
        return out

    def stat(self, name: str) -> int:
        return self.lib.nf_stat(STATS.index(name))

    def tcp_in(self, sport, seq, ack, flags, data=b"", wnd=65535, options=b"") -> list[dict]:
        self.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800,
                          nc.ipv4(S, D, 6, nc.tcp(S, D, sport, 80, seq, ack, flags, data,
                                                  wnd=wnd, options=options))))
        return [parse_tcp(f) for f in self.drain()]


def parse_tcp(frame: bytes) -> dict:
    assert frame[12:14] == b"\x08\x00" and frame[23] == 6, frame[:40].hex()
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    assert nc.csum(ip[:ihl]) == 0
    seg = ip[ihl:total]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    assert nc.csum(pseudo + seg) == 0, "the stack sent a bad TCP checksum"
    sport, dport, seq, ack, off, flags, wnd = struct.unpack("!HHIIBBH", seg[:16])
    return dict(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, wnd=wnd,
                data=seg[(off >> 4) * 4:], options=seg[20:(off >> 4) * 4])


@pytest.fixture(scope="module")
def fuzzlib(build_dir):
    so = build_dir / "libnetfuzz.so"
    r = _gcc(["-O1", "-fPIC", "-shared", "-o", str(so), str(TOOLS / "fuzz.c"), *_sources()])
    assert r.returncode == 0, r.stdout
    lib = ctypes.CDLL(str(so))
    lib.nf_init.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
    lib.nf_input.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    lib.nf_advance.argtypes = [ctypes.c_uint64]
    lib.nf_take.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    lib.nf_take.restype = ctypes.c_uint
    lib.nf_stat.restype = ctypes.c_uint64
    lib.nf_conn.restype = ctypes.c_uint32
    lib.nf_send.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    lib.nf_accept_and_send.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]
    lib.net_csum_add.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint]
    lib.net_csum_add.restype = ctypes.c_uint32
    lib.net_csum_fold.restype = ctypes.c_uint16
    lib.http_parse_request.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p,
                                       ctypes.c_uint]
    lib.ip_parse_cidr.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32),
                                  ctypes.POINTER(ctypes.c_uint)]
    lib.ip_format.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    return lib


def handshake(stk: Stack, sport=40000, isn=1000, mss=1460, wnd=65535) -> dict:
    out = stk.tcp_in(sport, isn, 0, SYN, wnd=wnd, options=struct.pack("!BBH", 2, 4, mss))
    assert len(out) == 1 and out[0]["flags"] == SYN | ACK and out[0]["ack"] == isn + 1
    assert out[0]["options"][:4] == b"\x02\x04\x05\xb4"         # our MSS: 1460
    synack = out[0]
    assert stk.tcp_in(sport, isn + 1, synack["seq"] + 1, ACK, wnd=wnd) == []
    return synack


@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071(fuzzlib, data):
    assert fuzzlib.net_csum_fold(fuzzlib.net_csum_add(0, data, len(data))) == nc.csum(data)


def test_addresses_parse_and_format(fuzzlib):
    ip, pre = ctypes.c_uint32(), ctypes.c_uint()
    assert fuzzlib.ip_parse_cidr(b"10.0.2.15/24", ctypes.byref(ip), ctypes.byref(pre)) == 0
    assert (ip.value, pre.value) == (0x0A00020F, 24)
    assert fuzzlib.ip_parse_cidr(b"192.168.1.1", ctypes.byref(ip), ctypes.byref(pre)) == 0
    assert pre.value == 24
    for bad in [b"1.2.3", b"1.2.3.256", b"1.2.3.4/33", b"1.2.3.4/", b"a.b.c.d", b"1..2.3",
                b"1.2.3.4x", b"1.2.3.0004", b""]:
        assert fuzzlib.ip_parse_cidr(bad, ctypes.byref(ip), ctypes.byref(pre)) == -1, bad
    buf = ctypes.create_string_buffer(16)
    fuzzlib.ip_format(0xC0A80A01, buf)
    assert buf.value == b"192.168.10.1"


def test_http_request_parser(fuzzlib):
    def parse(req: bytes):
        path = ctypes.create_string_buffer(256)
        r = fuzzlib.http_parse_request(req, len(req), path, 256)
        return r, path.value

    assert parse(b"GET /index.html HTTP/1.0\r\n\r\n") == (0, b"/index.html")
    assert parse(b"GET /a/b?x=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n") == (0, b"/a/b")
    assert parse(b"GET /x HTTP/1.0\n\n") == (0, b"/x")
    assert parse(b"GET /x HTTP/1.0\r\nHost:")[0] == 1            # incomplete: wait for more
    assert parse(b"GE")[0] == 1
    for junk in [b"POST / HTTP/1.0\r\n\r\n", b"GET x HTTP/1.0\r\n\r\n",
                 b"GET /../etc HTTP/1.0\r\n\r\n", b"GET / FTP/1.0\r\n\r\n",
                 b"\x00\x01\x02\x03\r\n\r\n", b"GET /" + b"a" * 300 + b" HTTP/1.0\r\n\r\n"]:
        assert parse(junk)[0] == -1, junk


@given(st.binary(max_size=600))
def test_http_parser_survives_anything(fuzzlib, req):
    path = ctypes.create_string_buffer(256)
    r = fuzzlib.http_parse_request(req, len(req), path, 256)
    assert r in (-1, 0, 1)
    if r == 0:
        assert path.value.startswith(b"/") and b".." not in path.value


def test_icmp_echo_and_arp(fuzzlib):
    stk = Stack(fuzzlib)
    stk.arp_announce()
    [reply] = stk.drain()
    assert reply[:6] == nc.HOST_MAC and reply[6:12] == STACK_MAC and reply[20:22] == b"\0\2"
    assert reply[22:28] == STACK_MAC and reply[28:32] == nc.ip_bytes(D)
    req = nc.icmp_echo(0x1234, 7, b"0123456789")
    stk.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800, nc.ipv4(S, D, 1, req)))
    [pong] = stk.drain()
    ip = pong[14:]
    assert pong[:6] == nc.HOST_MAC and ip[9] == 1 and ip[16:20] == nc.ip_bytes(S)
    assert nc.csum(ip[:20]) == 0 and nc.csum(ip[20:]) == 0
    assert ip[20] == 0 and ip[24:28] == b"\x12\x34\x00\x07" and ip[28:38] == b"0123456789"
    # options in the header are skipped, not mistaken for ICMP
    stk.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800,
                     nc.ipv4(S, D, 1, req, options=b"\x01\x01\x01\x00")))
    [pong] = stk.drain()
    assert pong[34] == 0 and pong[42:52] == b"0123456789"
    # fragments and bad checksums get no answer
    stk.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800, nc.ipv4(S, D, 1, req, frag=0x2000)))
    stk.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800, nc.ipv4(S, D, 1, req, bad_csum=True)))
    assert stk.drain() == []
    assert stk.stat("drop_fragment") == 1 and stk.stat("drop_ip_csum") == 1


def test_tcp_handshake_data_window_and_close(fuzzlib):
    stk = Stack(fuzzlib)
    synack = handshake(stk, mss=1000, wnd=3000)
    iss = synack["seq"]
    assert stk.lib.nf_tcp_state(1) == TCP_ESTABLISHED
    # data in order is acknowledged at once, out of order gets a duplicate ACK
    [a] = stk.tcp_in(40000, 1001, iss + 1, ACK | PSH, b"hello", wnd=3000)
    assert a["ack"] == 1006 and a["flags"] == ACK and a["wnd"] == 16384 - 5
    [a] = stk.tcp_in(40000, 1100, iss + 1, ACK, b"later", wnd=3000)
    assert a["ack"] == 1006 and stk.stat("tcp_out_of_order") == 1
    # the program answers with 5000 bytes: segments of the peer's MSS (1000), as many
    # as its window (3000) allows
    body = bytes(range(256)) * 20
    assert stk.lib.nf_accept_and_send(body[:5000], 5000, 0) == 1
    segs = [parse_tcp(f) for f in stk.drain()]
    assert [len(s["data"]) for s in segs] == [1000, 1000, 1000]
    assert b"".join(s["data"] for s in segs) == body[:3000] and segs[0]["seq"] == iss + 1
    # an ACK for 2000 bytes with the window still 3000 opens 2000 more
    segs = stk.tcp_in(40000, 1006, iss + 1 + 2000, ACK, wnd=3000)
    assert [(s["seq"] - iss - 1, len(s["data"])) for s in segs] == [(3000, 1000), (4000, 1000)]
    assert segs[-1]["flags"] & PSH
    # a zero window stops the sender
    assert stk.tcp_in(40000, 1006, iss + 1 + 5000, ACK, wnd=0) == []
    # the peer closes: CLOSE_WAIT, and our FIN follows the program's close
    [a] = stk.tcp_in(40000, 1006, iss + 5001, ACK | FIN, wnd=8000)
    assert a["ack"] == 1007 and stk.lib.nf_tcp_state(1) == TCP_CLOSE_WAIT


def test_tcp_retransmits_with_backoff_then_gives_up(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    assert stk.lib.nf_accept_and_send(b"x" * 100, 100, 0) == 1
    [first] = [parse_tcp(f) for f in stk.drain()]
    assert first["data"] == b"x" * 100
    gaps, t = [], 0
    for _ in range(200):                        # bounded: 100 s of fake time
        stk.advance(500_000)
        t += 500_000
        for f in stk.drain():
            seg = parse_tcp(f)
            if seg["flags"] & RST:
                gaps.append("RST")
                break
            assert seg["seq"] == iss + 1 and seg["data"] == b"x" * 100
            gaps.append(t)
            t = 0
        if gaps and gaps[-1] == "RST":
            break
    # 1 s, then doubling, capped at 8 s, 8 retransmissions, then a reset
    assert gaps[:4] == [1_000_000, 2_000_000, 4_000_000, 8_000_000], gaps
    assert len(gaps) == 9 and gaps[-1] == "RST", gaps
    assert stk.lib.nf_tcp_state(1) == TCP_CLOSED and stk.stat("tcp_retransmits") == 8


def test_tcp_rst_rules(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    # in the window but not exact: a challenge ACK, the connection lives (RFC 5961)
    [a] = stk.tcp_in(40000, 1001 + 100, 0, RST)
    assert a["flags"] == ACK and a["ack"] == 1001
    # out of the window: ignored silently
    assert stk.tcp_in(40000, 1001 + 10_000_000, 0, RST) == []
    # a SYN on an established connection: challenge ACK
    [a] = stk.tcp_in(40000, 5, 0, SYN)
    assert a["flags"] == ACK and stk.lib.nf_tcp_state(1) == TCP_ESTABLISHED
    # the exact sequence number resets it: the program holds it, so it stays CLOSED (and
    # says why) until the program lets go; a connection not yet accepted is just freed
    assert stk.lib.nf_accept_and_send(b"", 0, 0) == 1
    assert stk.tcp_in(40000, 1001, iss + 1, RST) == []
    assert stk.lib.nf_tcp_state(1) == TCP_CLOSED
    iss2 = handshake(stk, sport=40003)["seq"]
    assert stk.lib.nf_tcp_state(2) == TCP_ESTABLISHED
    assert stk.tcp_in(40003, 1001, iss2 + 1, RST) == []
    assert stk.lib.nf_tcp_state(2) == TCP_FREE
    # segments to nothing are answered by RST, RSTs are never answered
    [r] = stk.tcp_in(40001, 77, 0, ACK, b"data before any handshake")
    assert r["flags"] == RST and r["seq"] == 0 or r["flags"] & RST
    assert stk.tcp_in(40002, 77, 0, RST | ACK) == []


def test_tcp_active_close_to_time_wait(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    assert stk.lib.nf_accept_and_send(b"bye", 3, 1) == 1    # send, then close
    segs = [parse_tcp(f) for f in stk.drain()]
    assert segs[0]["data"] == b"bye" and segs[-1]["flags"] & FIN
    assert segs[-1]["seq"] == iss + 4
    assert stk.lib.nf_tcp_state(1) == TCP_FIN_WAIT_1
    assert stk.tcp_in(40000, 1001, iss + 5, ACK) == []       # data and FIN acknowledged
    assert stk.lib.nf_tcp_state(1) == TCP_FIN_WAIT_2
    [a] = stk.tcp_in(40000, 1001, iss + 5, ACK | FIN)
    assert a["ack"] == 1002 and stk.lib.nf_tcp_state(1) == TCP_TIME_WAIT
    stk.advance(3_000_000)                                      # 2 MSL is 2 s here
    assert stk.lib.nf_tcp_state(1) == TCP_FREE
    # the slot is reused, and nothing of the old connection (its FIN) leaks into the new one
    handshake(stk, sport=40001)
    assert stk.lib.nf_tcp_state(1) == TCP_ESTABLISHED
    assert stk.lib.nf_accept_recv() == -1                       # -NET_EAGAIN, not EOF


def test_tcp_time_wait_gives_way_when_the_pool_is_full(fuzzlib):
    """A server that closes first collects TIME_WAITs; new clients still get in."""
    stk = Stack(fuzzlib)
    for k in range(12):                     # more than TCP_CONNS (8, one is the listener)
        sport = 41000 + k
        iss = handshake(stk, sport=sport)["seq"]
        assert stk.lib.nf_accept_and_send(b"hi", 2, 1) == 1
        segs = [parse_tcp(f) for f in stk.drain()]
        assert segs[-1]["flags"] & FIN
        stk.tcp_in(sport, 1001, iss + 4, ACK)
        [a] = stk.tcp_in(sport, 1001, iss + 4, FIN | ACK)
        assert a["ack"] == 1002
        stk.advance(1000)                   # the oldest TIME_WAIT is the one to give way
    states = [stk.lib.nf_tcp_state(i) for i in range(8)]
    assert states.count(TCP_TIME_WAIT) == 7 and states.count(TCP_LISTEN) == 1
    # a client reusing its port with a higher ISN reopens it (RFC 1122 4.2.2.13) ...
    handshake(stk, sport=41011, isn=50000)
    # ... an old or lower one gets a challenge ACK
    [a] = stk.tcp_in(41010, 5, 0, SYN)
    assert a["flags"] == ACK and a["ack"] == 1002


RTO, SRTT, RTTVAR, SND_WND, RCV_LEN, SND_LEN, RETRIES = range(7)


def test_tcp_rto_follows_rfc6298(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    assert stk.lib.nf_conn(1, RTO) == 1_000_000                 # no sample yet: 1 s
    assert stk.lib.nf_accept_and_send(b"a" * 10, 10, 0) == 1
    stk.drain()
    stk.advance(100_000)                                        # the ACK comes 100 ms later
    assert stk.tcp_in(40000, 1001, iss + 11, ACK) == []
    # first sample R: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR = 300 ms
    assert (stk.lib.nf_conn(1, SRTT), stk.lib.nf_conn(1, RTTVAR)) == (100_000, 50_000)
    assert stk.lib.nf_conn(1, RTO) == 300_000
    # the next segment is retransmitted after 300 ms, not after 1 s
    assert stk.lib.nf_send(b"b", 1) == 1
    [seg] = [parse_tcp(f) for f in stk.drain()]
    steps = 0
    while not stk.drain():                                      # bounded: 1 s
        stk.advance(50_000)
        steps += 1
        assert steps <= 20
    assert steps == 6                                           # 300 ms
    assert stk.lib.nf_conn(1, RTO) == 600_000                   # backed off


def test_tcp_fast_retransmit_on_the_third_duplicate_ack(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    body = os.urandom(5000)
    assert stk.lib.nf_accept_and_send(body, len(body), 0) == 1
    segs = [parse_tcp(f) for f in stk.drain()]
    assert [len(s["data"]) for s in segs] == [1460, 1460, 1460, 620]
    # the first segment arrived, the second was lost: every later one makes a duplicate ACK
    assert stk.tcp_in(40000, 1001, iss + 1 + 1460, ACK) == []
    assert stk.tcp_in(40000, 1001, iss + 1 + 1460, ACK) == []
    assert stk.tcp_in(40000, 1001, iss + 1 + 1460, ACK) == []
    [again] = stk.tcp_in(40000, 1001, iss + 1 + 1460, ACK)      # the third duplicate
    assert again["seq"] == iss + 1 + 1460 and again["data"] == body[1460:2920]
    assert stk.stat("tcp_fast_retransmits") == 1
    assert stk.tcp_in(40000, 1001, iss + 1 + 1460, ACK) == []   # only once
    assert stk.tcp_in(40000, 1001, iss + 1 + 5000, ACK) == []   # everything arrived
    assert stk.lib.nf_conn(1, SND_LEN) == 0


def test_tcp_zero_window_probe_and_window_update(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk, wnd=0)["seq"]                          # the peer has no room
    assert stk.lib.nf_accept_and_send(b"q" * 500, 500, 0) == 1
    assert stk.drain() == []                                    # window 0: nothing goes
    probes = []
    for _ in range(20):                                         # bounded: 10 s
        stk.advance(500_000)
        probes += [parse_tcp(f) for f in stk.drain()]
        if probes:
            break
    assert probes and len(probes[0]["data"]) == 1 and probes[0]["seq"] == iss + 1
    # the peer opens its window: the rest goes at once
    segs = stk.tcp_in(40000, 1001, iss + 2, ACK, wnd=4000)
    assert b"".join(s["data"] for s in segs) == b"q" * 499
    # our receive window: 16384 bytes fill it, the ACK says 0, reading reopens it
    seq = 1001
    for k in range(0, 16384, 1024):
        [a] = stk.tcp_in(40000, seq + k, iss + 501, ACK, b"r" * 1024)
    assert a["wnd"] == 0 and a["ack"] == seq + 16384
    [a] = stk.tcp_in(40000, seq + 16384, iss + 501, ACK, b"too much")   # beyond the window
    assert a["ack"] == seq + 16384 and stk.stat("tcp_out_of_window") == 1
    assert stk.lib.nf_drain_apps() == 16384
    [update] = [parse_tcp(f) for f in stk.drain()]              # the window update
    # sent once the window is back to half the buffer, not for every read (no silly windows)
    assert update["wnd"] == 8192 and update["ack"] == seq + 16384


def test_tcp_simultaneous_close_and_last_ack(fuzzlib):
    stk = Stack(fuzzlib)
    iss = handshake(stk)["seq"]
    assert stk.lib.nf_accept_and_send(b"", 0, 1) == 1           # we close first ...
    [fin] = [parse_tcp(f) for f in stk.drain()]
    assert fin["flags"] == FIN | ACK and fin["seq"] == iss + 1
    [a] = stk.tcp_in(40000, 1001, iss + 1, FIN | ACK)           # ... and so does the peer
    assert a["ack"] == 1002 and stk.lib.nf_tcp_state(1) == TCP_CLOSING
    assert stk.tcp_in(40000, 1002, iss + 2, ACK) == []
    assert stk.lib.nf_tcp_state(1) == TCP_TIME_WAIT
    # passive close: the peer's FIN first, our FIN when the program closes, lost once
    stk.advance(3_000_000)
    iss = handshake(stk, sport=40001)["seq"]
    [a] = stk.tcp_in(40001, 1001, iss + 1, FIN | ACK)
    assert a["ack"] == 1002 and stk.lib.nf_tcp_state(1) == TCP_CLOSE_WAIT
    assert stk.lib.nf_accept_and_send(b"", 0, 1) == 1
    [fin] = [parse_tcp(f) for f in stk.drain()]
    assert fin["flags"] & FIN and stk.lib.nf_tcp_state(1) == TCP_LAST_ACK
    stk.advance(1_100_000)                                      # no ACK: the FIN again
    [again] = [parse_tcp(f) for f in stk.drain()]
    assert again["flags"] & FIN and again["seq"] == fin["seq"]
    assert stk.tcp_in(40001, 1002, iss + 2, ACK) == []
    assert stk.lib.nf_tcp_state(1) == TCP_FREE


def _frame_strategy():
    """Mostly well-formed TCP/UDP/ICMP frames with hostile field values, some garbage."""
    flags = st.integers(0, 0x3F)
    tcp_frame = st.builds(
        lambda sport, dport, seq, ack, fl, data, wnd, opts: nc.eth(
            STACK_MAC, nc.HOST_MAC, 0x0800,
            nc.ipv4(S, D, 6, nc.tcp(S, D, sport, dport, seq, ack, fl, data, wnd=wnd,
                                    options=opts))),
        st.sampled_from([40000, 40001, 0]), st.sampled_from([80, 7, 0, 1234]),
        st.one_of(st.integers(0, 2**32 - 1), st.integers(995, 1100)),
        st.integers(0, 2**32 - 1), flags, st.binary(max_size=300), st.integers(0, 65535),
        st.sampled_from([b"", b"\x02\x04\x00\x10", b"\x02\x04\xff\xff", b"\x01\x01\x00\x00",
                         b"\x08\x0a" + b"\0" * 8 + b"\0\0", b"\x02\x00\x00\x00",
                         b"\xff\xff\xff\xff"]))
    udp_frame = st.builds(lambda dport, data, ln: nc.eth(
        STACK_MAC, nc.HOST_MAC, 0x0800, nc.ipv4(S, D, 17, nc.udp(S, D, 999, dport, data,
                                                                 length=ln))),
        st.sampled_from([7, 8]), st.binary(max_size=1500),
        st.one_of(st.none(), st.integers(0, 65535)))
    icmp_frame = st.builds(lambda b: nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800,
                                            nc.ipv4(S, D, 1, b)), st.binary(max_size=200))
    garbage = st.builds(lambda t, b: nc.eth(STACK_MAC, nc.HOST_MAC, t, b),
                        st.sampled_from([0x0800, 0x0806]), st.binary(max_size=1600))
    raw = st.binary(max_size=64)

    def mutate(f: bytes, i: int, v: int) -> bytes:    # one byte changed: checksums now lie
        i %= max(len(f), 1)
        return f[:i] + bytes([v]) + f[i + 1:]

    mutated = st.builds(mutate, tcp_frame, st.integers(0, 200), st.integers(0, 255))
    return st.one_of(tcp_frame, udp_frame, icmp_frame, garbage, raw, mutated)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_frame_strategy(), st.integers(0, 3_000_000)), max_size=25),
       st.booleans())
def test_fuzz_input_path_keeps_invariants_and_still_answers(fuzzlib, frames, established):
    stk = Stack(fuzzlib)
    if established:
        handshake(stk)
        fuzzlib.nf_accept_and_send(b"z" * 3000, 3000, 0)
    for frame, wait in frames:
        stk.input(frame)                # asserts the invariants
        fuzzlib.nf_drain_apps()
        if wait > 2_000_000:
            stk.advance(wait)
        stk.drain()
    # the stack still answers ping
    stk.input(nc.eth(STACK_MAC, nc.HOST_MAC, 0x0800,
                     nc.ipv4(S, D, 1, nc.icmp_echo(9, 9, b"alive"))))
    replies = stk.drain()
    assert any(r[34] == 0 and r[42:47] == b"alive" for r in replies if len(r) >= 47)


# --------------------------------------------------------------------------
# On a TAP device in a network namespace (root)
# --------------------------------------------------------------------------
def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


requires_netns = pytest.mark.skipif(_why_no_netns() is not None,
                                    reason=_why_no_netns() or "")


def run(*cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stdout}"
    return r


@pytest.fixture(scope="module")
def nethost_bin(build_dir):
    exe = build_dir / "nethost"
    # with the sanitizers if this compiler has them: a memory error then kills the stack
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    r = _gcc(["-O1", *san, "-o", str(exe), str(TOOLS / "main.c"), *_sources()])
    if r.returncode == 0:       # the sanitizer runtime may not start here (odd mappings)
        probe = subprocess.run([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=30, env=dict(os.environ,
                                                               ASAN_OPTIONS="detect_leaks=0"))
        if probe.returncode != 2 or "usage: nethost" not in probe.stdout:
            r = subprocess.CompletedProcess([], 1)
    if r.returncode != 0:
        r = _gcc(["-O2", "-o", str(exe), str(TOOLS / "main.c"), *_sources()])
    assert r.returncode == 0, r.stdout
    return exe


_ns_seq = itertools.count()


class NetHost:
    """A namespace with a TAP (host side 10.0.2.1/24) and nethost (10.0.2.15) on it."""

    def __init__(self, exe: Path, www: Path, extra: list[str]):
        self.ns = f"xombnet-{os.getpid()}-{next(_ns_seq)}"
        self.tap = "xtap0"
        self.proc = None
        self.lines: list[str] = []
        run("ip", "netns", "add", self.ns)
        try:
            self.x("ip", "link", "set", "lo", "up")
            self.x("ip", "tuntap", "add", "dev", self.tap, "mode", "tap")
            self.x("ip", "addr", "add", "10.0.2.1/24", "dev", self.tap)
            self.x("ip", "link", "set", self.tap, "up")
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, str(exe), "--tap", self.tap, "--www", str(www),
                 *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
            for _ in range(100):
                if any("nethost: ready" in ln for ln in self.lines) or self.proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert any("nethost: ready" in ln for ln in self.lines), self.output()
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def x(self, *cmd: str, timeout: float = 30, check: bool = True):
        return run("ip", "netns", "exec", self.ns, *cmd, timeout=timeout, check=check)

    def client(self, *args: str, timeout: float = 60) -> str:
        r = self.x(sys.executable, str(TOOLS / "netclient.py"), *args, timeout=timeout)
        assert r.stdout.strip().endswith("ok"), r.stdout
        return r.stdout

    def stack_mac(self) -> str:
        self.x("ping", "-c", "1", "-W", "2", nc.STACK_IP, check=False)
        out = self.x("ip", "neigh", "show", nc.STACK_IP).stdout
        m = re.search(r"lladdr ([0-9a-f:]{17})", out)
        assert m, out
        return m.group(1)

    def alive(self) -> None:
        """The stack answers ping and serves a file."""
        assert self.proc.poll() is None, self.output()
        r = self.x("ping", "-c", "2", "-W", "2", nc.STACK_IP, check=False)
        assert " 0% packet loss" in r.stdout or "2 received" in r.stdout or \
            "1 received" in r.stdout, r.stdout
        r = self.x("curl", "-s", "--max-time", "10", f"http://{nc.STACK_IP}/index.html")
        assert r.stdout == "hello from the libOS stack\n"

    def stop(self) -> dict[str, int]:
        """SIGTERM; the stack's counters from its last line."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=20)
        self.reader.join(5)
        out = self.output()
        assert rc == 0, out
        assert "AddressSanitizer" not in out and "runtime error" not in out, out
        last = [ln for ln in self.lines if ln.startswith("nethost: stop:")]
        assert last, out
        return {k: int(v) for k, v in re.findall(r"([a-z_]+) (\d+)", last[-1])}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


@pytest.fixture
def www(tmp_path):
    d = tmp_path / "www"
    d.mkdir()
    (d / "index.html").write_text("hello from the libOS stack\n")
    (d / "big.bin").write_bytes(os.urandom(200 * 1024))
    (d / "empty").write_bytes(b"")
    return d


@pytest.fixture
def nethost(nethost_bin, www):
    hosts = []

    def start(*extra: str) -> NetHost:
        h = NetHost(nethost_bin, www, list(extra))
        hosts.append(h)
        return h

    yield start
    for h in hosts:
        h.close()


@requires_netns
def test_real_clients_ping_udp_http_tcp(nethost, www, tmp_path):
    h = nethost()
    r = h.x("ping", "-c", "3", "-W", "1", nc.STACK_IP, check=False)
    assert "3 received" in r.stdout, r.stdout
    assert re.search(r"64 bytes from 10\.0\.2\.15: icmp_seq=1 ttl=64 time=", r.stdout)
    r = h.x("ping", "-c", "1", "-W", "2", "-s", "1472", nc.STACK_IP, check=False)
    assert "1 received" in r.stdout, r.stdout          # a full-MTU echo
    h.client("udp", nc.STACK_IP, "7", "40")
    out = tmp_path / "big.out"
    r = h.x("curl", "-s", "--max-time", "20", "-o", str(out), "-w", "%{http_code}",
            f"http://{nc.STACK_IP}/big.bin")
    assert r.stdout == "200" and out.read_bytes() == (www / "big.bin").read_bytes()
    h.x("curl", "-s", "--max-time", "5", "-i", "-o", str(out), f"http://{nc.STACK_IP}/index.html")
    resp = out.read_bytes()
    assert resp.startswith(b"HTTP/1.0 200 OK\r\n") and b"Content-Length: 27\r\n" in resp
    assert resp.endswith(b"\r\n\r\nhello from the libOS stack\n")
    r = h.x("curl", "-s", "--max-time", "5", f"http://{nc.STACK_IP}/")
    assert r.stdout == "hello from the libOS stack\n"                 # / is /index.html
    r = h.x("curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
            f"http://{nc.STACK_IP}/empty")
    assert r.stdout == "200"
    r = h.x("curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
            f"http://{nc.STACK_IP}/missing")
    assert r.stdout == "404"
    r = h.x("curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
            "-X", "DELETE", f"http://{nc.STACK_IP}/index.html")
    assert r.stdout == "400"
    h.client("tcpecho", nc.STACK_IP, "7", str(300 * 1024))  # both directions, many windows
    r = h.x("curl", "-s", "--max-time", "5", f"http://{nc.STACK_IP}:81/", check=False)
    assert r.returncode == 7, r.stdout                     # refused: our RST
    stats = h.stop()
    assert stats["http"] >= 5 and stats["udp"] == 40


@requires_netns
def test_hostile_frames_crash_nothing(nethost):
    h = nethost()
    mac = h.stack_mac()
    h.x("ip", "link", "set", h.tap, "mtu", "9000")          # let oversized frames through
    h.client("inject", h.tap, mac)
    h.client("ipopts", h.tap, mac)
    h.x("ip", "link", "set", h.tap, "mtu", "1500")
    h.client("hostile_conn", nc.STACK_IP, "7", h.tap, mac)
    h.alive()
    stats = h.stop()
    for reason in ("runt", "bad_ip", "ip_csum", "fragment", "bad_tcp", "bad_udp", "bad_icmp"):
        assert stats[reason] > 0, (reason, stats)


@requires_netns
def test_packet_loss_is_repaired_by_retransmission(nethost, www, tmp_path):
    h = nethost("--loss", "5")
    out = tmp_path / "big.out"
    for attempt in range(3):        # a lost SYN+ACK can outlast curl's connect timeout
        r = h.x("curl", "-s", "--max-time", "60", "--connect-timeout", "20", "-o", str(out),
                "-w", "%{http_code}", f"http://{nc.STACK_IP}/big.bin", timeout=90, check=False)
        if r.returncode == 0:
            break
    assert r.stdout == "200" and out.read_bytes() == (www / "big.bin").read_bytes()
    h.client("tcpecho", nc.STACK_IP, "7", str(64 * 1024), timeout=200)
    stats = h.stop()
    assert stats["lost"] > 0 and stats["retransmits"] > 0, stats


def _netem_available() -> bool:
    if _why_no_netns() or shutil.which("tc") is None:
        return False
    ns = f"xombnetem-{os.getpid()}"
    try:
        run("ip", "netns", "add", ns)
        run("ip", "netns", "exec", ns, "ip", "link", "add", "d0", "type", "dummy")
        r = run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "d0", "root", "netem",
                "loss", "20%", check=False)
        return r.returncode == 0
    except Exception:
        return False
    finally:
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


@requires_netns
def test_netem_loss_towards_the_stack(nethost, www, tmp_path):
    if not _netem_available():
        pytest.skip("the kernel has no sch_netem (tc qdisc ... netem)")
    h = nethost()
    h.x("tc", "qdisc", "add", "dev", h.tap, "root", "netem", "loss", "20%")
    out = tmp_path / "big.out"
    for attempt in range(3):
        r = h.x("curl", "-s", "--max-time", "90", "--connect-timeout", "30", "-o", str(out),
                "-w", "%{http_code}", f"http://{nc.STACK_IP}/big.bin", timeout=120, check=False)
        if r.returncode == 0:
            break
    assert r.stdout == "200" and out.read_bytes() == (www / "big.bin").read_bytes()
    stats = h.stop()
    assert stats["retransmits"] > 0, stats
