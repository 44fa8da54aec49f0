"""The network stack in the guest: real Linux clients against the libOS programs over a TAP
(in a throwaway network namespace, tests/netns.py), and two guest processes on two NIC VFs
talking through the NIC's switch.

    host ping      -> guest (answered by the stack inside udpecho)
    host UDP       -> udpecho
    host curl      -> httpd (files from the disk's file system, 200 KB exactly)
    guest ping/nc  -> host (ICMP, a TCP and a UDP server in the namespace)
    hostile frames -> the guest, which keeps serving
    udpecho -vf 1 -- nc -vf 0: two address spaces, UDP and TCP, through the switch
"""
from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, requires_kvm
from netns import netns, requires_netns

_spec = importlib.util.spec_from_file_location("netclient",
                                               ROOT / "tools" / "nethost" / "netclient.py")
nc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nc)

GUEST_IP = "10.0.2.15"
GUEST_MAC = bytes.fromhex("525400123456")       # VF 0 (abi.NIC_MAC_BASE)


def xomb(*args: str, timeout: float = 90) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "vmm.cli", *args], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout


class Guest:
    """`xomb-vmm run ... PROGRAM` inside the namespace, its output collected by a thread."""

    def __init__(self, ns, *args: str):
        self.proc = ns.popen(sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}",
                             *args, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        self.out: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out.append(line)

    def text(self) -> str:
        return "".join(self.out)

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        for _ in range(int(timeout * 10)):
            if marker in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.t.join(2)
        assert marker in self.text(), f"no {marker!r} in the guest's output:\n{self.text()}"

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        self.t.join(5)
        return rc, self.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def udp_echo_round_trips(ns, count: int) -> int:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    ok = 0
    try:
        for i in range(count):
            data = os.urandom([1, 100, 1472, 0, 700][i % 5])
            for _ in range(3):                      # a datagram may be lost: ask again
                s.sendto(data, (GUEST_IP, 7))
                try:
                    got, src = s.recvfrom(4096)
                except socket.timeout:
                    continue
                ok += got == data and src == (GUEST_IP, 7)
                break
    finally:
        s.close()
    return ok


@requires_kvm
@requires_netns
def test_host_pings_and_udp_echo_to_the_guest():
    with netns() as ns:
        g = Guest(ns, "udpecho", "-irq", "-n", "5")     # waits by interrupt, halted
        try:
            g.wait_for("udpecho: listening on 10.0.2.15:7")
            r = ns.run("ping", "-c", "3", "-W", "2", GUEST_IP)
            assert "3 received" in r.stdout, r.stdout
            assert re.search(r"64 bytes from 10\.0\.2\.15: icmp_seq=\d ttl=64 time=", r.stdout)
            assert udp_echo_round_trips(ns, 5) == 5
            rc, out = g.finish()
        finally:
            g.kill()
    assert rc == 0 and "udpecho: echoed 5 datagrams" in out, out


@requires_kvm
@requires_netns
def test_guest_ping_and_nc_reach_the_host():
    with netns() as ns:
        tcp = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("10.0.2.1", 9000))
        tcp.listen(1)
        tcp.settimeout(60)
        got: list[bytes] = []

        def serve():                                # one connection: answer, then close
            try:
                c, _ = tcp.accept()
                c.settimeout(20)
                data = b""
                while not data.endswith(b"\n"):
                    x = c.recv(4096)
                    if not x:
                        break
                    data += x
                got.append(data)
                c.sendall(b"pong: " + data + b"x" * 30000 + b"\nend\n")
                c.close()
            except OSError as exc:
                got.append(repr(exc).encode())

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        try:
            rc, out = xomb_in(ns, "ping", "-c", "3", "-i", "200", "10.0.2.1")
            assert rc == 0 and "3 packets transmitted, 3 received" in out, out
            assert re.search(r"64 bytes from 10\.0\.2\.1: icmp_seq=1 ttl=64 time=\d+\.\d{3} ms",
                             out), out
            rc, out = xomb_in(ns, "nc", "10.0.2.1", "9000", "hello", "from", "the", "guest")
            th.join(10)
            assert got == [b"hello from the guest\n"]
            assert rc == 0 and "pong: hello from the guest\n" + "x" * 30000 + "\nend\n" in out, out
        finally:
            tcp.close()
        u = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("10.0.2.1", 9001))
        u.settimeout(60)

        def udp_serve():
            try:
                data, peer = u.recvfrom(2048)
                u.sendto(b"udp says " + data, peer)
            except OSError:
                pass

        th = threading.Thread(target=udp_serve, daemon=True)
        th.start()
        try:
            rc, out = xomb_in(ns, "nc", "-u", "-w", "1", "10.0.2.1", "9001", "datagram")
            assert rc == 0 and "udp says datagram\n" in out, out
        finally:
            u.close()


def xomb_in(ns, *args: str, timeout: float = 90) -> tuple[int, str]:
    r = ns.run(sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}", *args,
               timeout=timeout, cwd=ROOT)
    return r.returncode, r.stdout


@pytest.fixture
def www_image(tmp_path):
    img = tmp_path / "disk.img"
    rc, out = xomb("mkfs", str(img), "--size", "16M", "--namespaces", "2")
    assert rc == 0, out
    files = {"index.html": b"<h1>xomb httpd</h1>\n", "big.bin": os.urandom(200 * 1024)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        # xsh keeps VF 0's namespace and lends the program the next: httpd reads namespace 1
        rc, out = xomb("fs", str(img), "--ns", "1", "put", str(tmp_path / name), f"/{name}")
        assert rc == 0, out
    return img, files


@requires_kvm
@requires_netns
def test_curl_gets_files_from_httpd(www_image, tmp_path):
    img, files = www_image
    with netns() as ns:
        g = Guest(ns, "--disk", str(img), "httpd", "-n", "6")
        try:
            g.wait_for("httpd: listening on 10.0.2.15:80")
            out = tmp_path / "got"
            r = ns.run("curl", "-s", "--max-time", "30", "-o", str(out), "-w", "%{http_code}",
                       f"http://{GUEST_IP}/big.bin")
            assert r.stdout == "200" and out.read_bytes() == files["big.bin"]
            r = ns.run("curl", "-s", "--max-time", "10", "-i", "-o", str(out),
                       f"http://{GUEST_IP}/index.html")
            body = out.read_bytes()
            assert body.startswith(b"HTTP/1.0 200 OK\r\n") and b"Content-Length: 20\r\n" in body
            assert body.endswith(b"\r\n\r\n" + files["index.html"])
            r = ns.run("curl", "-s", "--max-time", "10", f"http://{GUEST_IP}/")
            assert r.stdout == files["index.html"].decode()
            codes = []
            for path in ("/missing", "/../index.html"):
                r = ns.run("curl", "-s", "--max-time", "10", "--path-as-is", "-o", "/dev/null",
                           "-w", "%{http_code}", f"http://{GUEST_IP}{path}")
                codes.append(r.stdout)
            assert codes == ["404", "400"]
            # junk that is not HTTP at all
            s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect((GUEST_IP, 80))
            s.sendall(b"\x16\x03\x01 definitely not http\r\n\r\n")
            reply = b""
            while True:
                x = s.recv(4096)
                if not x:
                    break
                reply += x
            s.close()
            assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply
            rc, text = g.finish()
        finally:
            g.kill()
    assert rc == 0 and "httpd: served 6 requests" in text, text
    assert text.count("httpd: 10.0.2.1: 200") == 3 and "httpd: 10.0.2.1: 404" in text, text


@requires_kvm
@requires_netns
def test_hostile_frames_do_not_stop_the_guest():
    with netns() as ns:
        ns.set_mtu(9000)                            # let the oversized frames through
        g = Guest(ns, "udpecho", "-t", "-n", "3")
        s = ns.packet_socket()
        try:
            g.wait_for("udpecho: listening on 10.0.2.15:7 (UDP and TCP)")
            host_mac = s.getsockname()[4][:6]
            sent = 0
            for i, fr in enumerate(nc.hostile_frames(GUEST_MAC, host_mac)):
                try:
                    s.send(fr)
                    sent += 1
                except OSError:
                    pass                            # refused by the host kernel: fine
                if i % 50 == 0:
                    time.sleep(0.02)
            assert sent > 400
            r = ns.run("ping", "-c", "2", "-W", "2", GUEST_IP)
            assert " 0% packet loss" in r.stdout, r.stdout
            t = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.settimeout(20)
            t.connect((GUEST_IP, 7))
            data = os.urandom(50000)
            t.sendall(data)
            got = b""
            while len(got) < len(data):
                x = t.recv(65536)
                if not x:
                    break
                got += x
            t.close()
            assert got == data
            assert udp_echo_round_trips(ns, 3) == 3
            rc, out = g.finish()
        finally:
            s.close()
            g.kill()
    assert rc == 0 and "echoed 3 datagrams, 50000 TCP bytes" in out, out


@requires_kvm
def test_two_guest_processes_talk_through_the_switch():
    """udpecho on VF 1 (10.0.2.16) runs nc on VF 0 as its child: UDP, then TCP."""
    rc, out = xomb("run", "udpecho", "-t", "-vf", "1", "-a", "10.0.2.16/24", "--",
                   "nc", "-u", "-w", "1", "10.0.2.16", "7", "over", "udp")
    assert rc == 0, out
    assert "udpecho: listening on 10.0.2.16:7 (UDP and TCP)" in out
    assert "over udp\n" in out and "nc exited with 0; echoed 1 datagrams" in out, out
    rc, out = xomb("run", "udpecho", "-t", "-vf", "1", "-a", "10.0.2.16/24", "--",
                   "nc", "-w", "1", "10.0.2.16", "7", "over", "tcp")
    assert rc == 0 and "over tcp\n" in out, out
    assert "nc exited with 0; echoed 0 datagrams, 9 TCP bytes" in out, out
