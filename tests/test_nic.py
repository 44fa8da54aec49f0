"""The self-virtualizing NIC: the switch and the uplinks (pure), then the guest driver
through the switch (VF <-> VF), a hostile driver, a UDP socket tunnel, and a TAP inside a
throwaway network namespace with raw frames from the host side."""
from __future__ import annotations

import re
import select
import socket
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, requires_kvm
from netns import netns, requires_netns
from devices import nic as nicmod
from devices.nic import UPLINK, Switch, mac_of, parse_guest_ip
from devices.uplink import UdpUplink, UplinkError, parse_net
from vmm import abi

ETH_TEST = 0x88B5
GUEST_MAC = mac_of(0)
HOST_MAC = bytes.fromhex("020000000001")


def xomb(*args: str, timeout: float = 120, input: str | None = None) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "vmm.cli", *args], cwd=ROOT, input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout


def frame(dst: bytes, src: bytes, payload: bytes, etype: int = ETH_TEST) -> bytes:
    return dst + src + struct.pack(">H", etype) + payload


# ---------------------------------------------------------------------- pure
def test_switch_forwards_by_destination_mac():
    sw = Switch(3, has_uplink=True)
    assert sw.route(frame(mac_of(2), mac_of(0), b"x" * 50), 0) == [2]
    assert sw.route(frame(b"\xff" * 6, mac_of(1), b""), 1) == [0, 2, UPLINK]
    assert sw.route(frame(b"\x33\x33\0\0\0\1", mac_of(1), b""), 1) == [0, 2, UPLINK]  # multicast
    assert sw.route(frame(HOST_MAC, mac_of(0), b""), 0) == [UPLINK]       # unknown: out
    assert sw.route(frame(mac_of(1), HOST_MAC, b""), UPLINK) == [1]
    assert sw.route(frame(b"\xff" * 6, HOST_MAC, b""), UPLINK) == [0, 1, 2]
    assert sw.route(frame(HOST_MAC, HOST_MAC, b""), UPLINK) == []        # never back out
    assert sw.route(frame(mac_of(0), mac_of(0), b""), 0) == []           # no hairpin
    assert sw.stats["forwarded"] == 2 and sw.stats["flooded"] == 3 and sw.stats["no_route"] == 2


def test_switch_drops_spoofed_and_runt_frames():
    sw = Switch(2, has_uplink=False)
    assert sw.route(frame(mac_of(1), mac_of(1), b""), 0) == []          # VF 0 posing as VF 1
    assert sw.route(frame(mac_of(1), HOST_MAC, b""), 0) == []
    assert sw.route(b"\xff" * 13, 0) == []
    assert sw.route(frame(HOST_MAC, mac_of(0), b""), 0) == []           # no uplink: dropped
    assert sw.route(frame(b"\xff" * 6, mac_of(0), b""), 0) == [1]
    assert (sw.stats["spoofed"], sw.stats["runts"], sw.stats["no_route"]) == (2, 1, 1)


def test_macs_and_addresses():
    assert [mac_of(i).hex(":") for i in (0, 3)] == ["52:54:00:12:34:56", "52:54:00:12:34:59"]
    assert parse_guest_ip("10.0.2.15/24") == (0x0A00020F, 0x0A000201, 24)
    assert parse_guest_ip("192.168.7.9/16", "192.168.0.254")[1:] == (0xC0A800FE, 16)
    for bad, gw, msg in (("10.0.2.15", None, "prefix"), ("10.0.2/24", None, "not an IPv4"),
                         ("10.0.2.15/24", "10.0.3.1", "not in the guest's subnet"),
                         ("10.0.2.1/24", None, "is its gateway")):
        with pytest.raises(ValueError, match=msg):
            parse_guest_ip(bad, gw)


def test_net_specs():
    assert parse_net("none") is None
    for bad, msg in (("bogus", "unknown uplink"), ("udp:1:2", "LOCALPORT:REMOTEHOST"),
                     ("udp:x:h:1", "numbers"), ("tap:", "1 to 15"),
                     ("tap:" + "n" * 16, "1 to 15")):
        with pytest.raises(UplinkError, match=msg):
            parse_net(bad)


def test_udp_uplink_is_a_frame_per_datagram_and_drops_strangers():
    a = UdpUplink(0, "127.0.0.1", 9)
    b = UdpUplink(0, "127.0.0.1", a.local_port)
    a.remote = ("127.0.0.1", b.local_port)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.sendto(b"not from a", ("127.0.0.1", b.local_port))
        for i in range(3):
            a.send(frame(mac_of(0), HOST_MAC, bytes([i]) * 40))
        got = []
        for _ in range(50):                     # bounded: localhost delivers at once
            select.select([b], [], [], 0.1)
            got += b.recv_batch(16)
            if len(got) == 3:
                break
        assert [g[14] for g in got] == [0, 1, 2] and b.foreign == 1
    finally:
        for s in (a, b, stranger):
            s.close()


# ---------------------------------------------------------------------- in the guest
@requires_kvm
def test_guest_sees_its_configuration():
    rc, out = xomb("run", "--guest-ip", "192.168.7.9/16", "--gateway", "192.168.0.254",
                   "nictest", "info", "-vf", "3")
    assert rc == 0, out
    assert "vf 3 mac 52:54:00:12:34:59 ip 192.168.7.9/16 gateway 192.168.0.254, 4 VFs held" \
        in out
    rc, out = xomb("run", "--nic-vfs", "0", "nictest", "info")
    assert rc == 1 and "cannot open NIC VF 0" in out, out
    rc, out = xomb("run", "--nic-vfs", "2", "nictest", "info", "-vf", "2")   # not held
    assert rc == 1 and "cannot open NIC VF 2: ENOTHELD (2 VFs held" in out, out


@requires_kvm
def test_bad_net_options_are_named():
    rc, out = xomb("run", "--net", "carrier-pigeon", "hello")
    assert rc == 2 and "--net carrier-pigeon: unknown uplink" in out, out
    rc, out = xomb("run", "--guest-ip", "10.0.2.1/24", "hello")
    assert rc == 2 and "is its gateway" in out, out


@requires_kvm
def test_vf_to_vf_through_the_switch():
    rc, out = xomb("run", "--boot-stats", "nictest", "pair", "3000")
    assert rc == 0, out
    for line in ("PASS unicast VF 0 -> VF 1, in order, no loss",
                 "PASS broadcast VF 1 -> VF 0, not back to VF 1",
                 "PASS VF 2 got the broadcast, none of the unicast", "3 passed, 0 failed"):
        assert line in out, out
    m = re.search(r"nic tx (\d+) rx (\d+) frames, (\d+) doorbells", out)
    assert m and int(m.group(1)) == 3001 and int(m.group(2)) == 3000 + 2, out
    assert int(m.group(3)) <= int(m.group(1))   # never more than one exit per frame


@requires_kvm
def test_vf_to_vf_by_interrupt_with_no_tick():
    """The receiver halts (YIELD IDLE) with NS_IRQ set; with no tick only the NIC's
    interrupt can wake it, so every frame arriving proves the irqfd -> upcall path."""
    rc, out = xomb("run", "--no-timer", "--boot-stats", "nictest", "pair", "300", "-irq")
    assert rc == 0 and "3 passed, 0 failed" in out, out


@requires_kvm
def test_two_processes_each_with_its_own_vf():
    """nictest keeps VF 0 and gives VF 1 to a child (nic_grant): frames between the two
    address spaces through the switch; a child given no VF cannot open one."""
    rc, out = xomb("run", "nictest", "two", "10")
    assert rc == 0, out
    for line in ("PASS a child without a VF cannot open ours",
                 "PASS VF 0 (us) <-> VF 1 (a child) through the switch",
                 "PASS VF 1 came back to us", "nictest: two: 3 passed, 0 failed"):
        assert line in out, out


@requires_kvm
def test_hostile_driver_is_stopped_and_the_system_survives():
    rc, out = xomb("boot", "--boot-stats",
                   input="nictest hostile\nnictest two 5\nnictest pair 200\nhello after\n"
                         "exit 0\n")
    assert rc == 0, out
    assert "FAIL" not in out, out
    assert "nictest: hostile: 18 passed, 0 failed, 8 IOMMU faults delivered" in out, out
    assert "nictest: two: 3 passed, 0 failed" in out       # the VFs work afterwards, and
    assert "nictest: pair: 3 passed, 0 failed" in out      # came back to the shell
    assert 'argv[1] = "after"' in out
    m = re.search(r"spoofed (\d+), errors (\d+), faults (\d+)", out)
    assert m and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (1, 5, 8), out


@requires_kvm
def test_the_native_path_carries_the_frames_and_hostile_checks_still_hold():
    """With the C data path built (devices/nic_build.py) frames VF -> VF are handled
    natively, and everything a hostile driver does still reaches the Python checks."""
    from devices import nic_native
    native = nic_native.load() is not None
    rc, out = xomb("boot", "--boot-stats",
                   input="nictest hostile\nnictest pair 500\nexit 0\n")
    assert rc == 0 and "FAIL" not in out, out
    assert "nictest: hostile: 18 passed, 0 failed, 8 IOMMU faults delivered" in out, out
    assert "nictest: pair: 3 passed, 0 failed" in out, out
    m = re.search(r"spoofed (\d+), errors (\d+), faults (\d+)", out)
    assert m and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (1, 5, 8), out
    m = re.search(r"native tx (\d+) rx (\d+)", out)
    if native:
        assert m and int(m.group(1)) >= 500 and int(m.group(2)) >= 500, out
    else:
        assert m is None and "native off" in out, out


# ---------------------------------------------------------------------- uplinks
def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _read_until(proc, marker: str, limit: int = 400) -> str:
    """Lines of the VM's output up to the one containing marker (bounded)."""
    seen = ""
    for _ in range(limit):
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} in the guest's output:\n{seen}")


def _stop_echo(proc, send) -> str:
    """Tell `nictest echo` we are done (a STOP frame, resent until it exits)."""
    for _ in range(30):
        send(frame(GUEST_MAC, HOST_MAC, b"STOP"))
        try:
            return proc.communicate(timeout=2)[0]
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("nictest echo did not stop")


def _echo_round_trips(send, recv, n: int) -> int:
    """Send test frames 0..n-1 to the guest, each until its echo comes back (bounded
    retries: frames sent before the guest listens are lost, like on a wire)."""
    done = 0
    for i in range(n):
        payload = b"echo %d " % i + bytes(range(200))
        f = frame(GUEST_MAC, HOST_MAC, payload)
        for _ in range(20):
            send(f)
            back = recv()
            while back is not None and not (back[:6] == HOST_MAC and back[6:12] == GUEST_MAC
                                            and back[14:] == payload):
                back = recv()
            if back is not None:
                done += 1
                break
    return done


@requires_kvm
def test_udp_tunnel_echo_and_malformed_frames():
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", 0))
    vm_port = _free_udp_port()
    net = f"udp:{vm_port}:127.0.0.1:{host.getsockname()[1]}"
    proc = subprocess.Popen([sys.executable, "-m", "vmm.cli", "run", "--boot-stats", "--net", net,
                             "nictest", "echo", "1000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _read_until(proc, "echo ready")
        to_vm = ("127.0.0.1", vm_port)
        host.sendto(b"\x01" * 10, to_vm)                                  # a runt
        host.sendto(frame(GUEST_MAC, HOST_MAC, b"\0" * 3000), to_vm)      # too big
        host.settimeout(1.0)

        def recv():
            try:
                return host.recv(65536)
            except socket.timeout:
                return None
        assert _echo_round_trips(lambda f: host.sendto(f, to_vm), recv, 4) == 4
        out = _stop_echo(proc, lambda f: host.sendto(f, to_vm))
    finally:
        proc.kill()
        proc.wait()
        host.close()
    m = re.search(r"nictest: echoed (\d+) frames", out)
    assert proc.returncode == 0 and m and int(m.group(1)) >= 4, out
    m = re.search(r"uplink rx \d+ tx \d+ runts (\d+) too_big (\d+)", out)
    assert m and m.groups() == ("1", "1"), out


@requires_kvm
@requires_netns
def test_tap_in_a_namespace_raw_frames_and_arp():
    with netns() as ns:
        ns.set_mtu(9000)                        # so the host can send a frame too big for us
        proc = ns.popen(sys.executable, "-m", "vmm.cli", "run", "--boot-stats", "--net",
                        f"tap:{ns.tap}", "nictest", "echo", "1000", "-irq", cwd=ROOT,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        s = ns.packet_socket()
        try:
            _read_until(proc, "echo ready")
            s.settimeout(1.0)

            def recv():
                try:
                    while True:
                        f = s.recv(65536)
                        if f[6:12] == GUEST_MAC:        # not the host's own frames
                            return f
                except socket.timeout:
                    return None
            s.send(frame(GUEST_MAC, HOST_MAC, b"\0" * 3000))              # too big: dropped
            # ARP: who has 10.0.2.15? The guest answers with its MAC.
            arp = struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, HOST_MAC,
                              socket.inet_aton("10.0.2.1"), b"\0" * 6,
                              socket.inet_aton("10.0.2.15"))
            reply = None
            for _ in range(20):
                s.send(frame(b"\xff" * 6, HOST_MAC, arp, 0x0806))
                reply = recv()
                if reply is not None and reply[12:14] == b"\x08\x06":
                    break
            assert reply is not None and reply[:6] == HOST_MAC and reply[20:22] == b"\0\2"
            assert reply[22:28] == GUEST_MAC and reply[28:32] == socket.inet_aton("10.0.2.15")
            assert _echo_round_trips(s.send, recv, 5) == 5
            out = _stop_echo(proc, s.send)
        finally:
            s.close()
            proc.kill()
            proc.wait()
    m = re.search(r"nictest: echoed (\d+) frames", out)
    assert proc.returncode == 0 and m and int(m.group(1)) >= 5, out
    m = re.search(r"too_big (\d+)", out)
    assert m and m.group(1) == "1", out
