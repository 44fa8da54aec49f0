"""Host <-> guest network rows for `xomb-vmm bench` (issue 5; docs/NETWORK.md, "Figures").

    rows = host_bench_rows(quick=False)    # [{key, title, unit, guest, host, ratio, ...}, ...]
    python -m vmm.netbench_host [--quick]  # print them

Needs root, `ip`, /dev/net/tun and network namespaces (vmm/netns.py) and KVM;
`skip_reason()` says which is missing.  Everything lives in namespaces the benchmark makes
and deletes:

* guest: `xomb-vmm run --net tap:TAP --control SOCK udpecho -t -irq` in a namespace whose
  TAP has 10.0.2.1/24; the guest is 10.0.2.15 (ping answered by the stack inside udpecho,
  UDP and TCP echo on port 7, the receiver halting for the NIC's interrupt);
* host: two namespaces joined by a veth pair (10.0.3.1 / 10.0.3.2), a small Python UDP and
  TCP echo server (`_SERVER`, its own process) in one of them.

The same client code, in this process with sockets of the client's namespace, measures both:
ping RTT (own ICMP echo over a raw socket, one at a time: median, min, max), UDP echo
round trips per second (64-byte datagrams, a window of 4 outstanding: the guest's UDP
socket queues 4; a window that waits 50 ms with nothing back counts its datagrams as lost
and starts again), TCP echo MB/s (one connection, a thread sends N MB while the caller
receives the echo; MB/s of payload each way).  Exits per packet: the VMM's VM-exit count
(`stats --json` on the control socket: exits that reach the VMM, not the doorbells KVM
absorbs through ioeventfd) over each phase, divided by the frames through the TAP in that
phase (both directions, from the TAP's counters); and, over the whole run, the NIC's
doorbells (each a VM exit that KVM absorbs) and interrupts per frame, from the VMM's
`--boot-stats` line when it stops.  KVM's own exit counters cannot be read from outside
the VMM process (KVM refuses vCPU ioctls from another mm), so exits KVM handles itself
(HLT, ioeventfd, irqfd injection) are counted only through the doorbells and interrupts.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from vmm import netns
from vmm.paths import ROOT

GUEST_IP, TAP_IP = "10.0.2.15", "10.0.2.1/24"
VETH_A, VETH_B = "10.0.3.1/24", "10.0.3.2/24"
PORT = 7

_SERVER = r"""
import socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("", 7)); t.listen(4)
def udp():
    while True:
        d, a = u.recvfrom(65536); u.sendto(d, a)
def conn(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
def tcp():
    while True:
        c, _ = t.accept()
        threading.Thread(target=conn, args=(c,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()                                   # until the benchmark closes our stdin
"""


def skip_reason(kvm_path: str = "/dev/kvm") -> str | None:
    """Why the host <-> guest rows cannot run here, or None."""
    r = netns.skip_reason()
    if r:
        return f"netns: {r}"
    if not os.access(kvm_path, os.R_OK | os.W_OK):
        return f"needs {kvm_path}"
    return None


# ------------------------------------------------------------------ the client (both sides)
def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping_rtts(ns: netns.NetNs, ip: str, count: int, timeout: float = 1.0) -> list[float]:
    """ICMP echo round trips (seconds), one at a time, 56 bytes of payload like ping(8).
    Lost ones are left out; five lost in a row end it."""
    s = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    out = []
    try:
        misses = 0
        for seq in range(count):
            if misses >= 5:
                break
            payload = bytes(range(56))
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
            pkt = struct.pack("!BBHHH", 8, 0, _csum(hdr + payload), ident, seq & 0xFFFF) + payload
            n_before = len(out)
            t0 = time.perf_counter()
            s.sendto(pkt, (ip, 0))
            deadline = t0 + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    d, _ = s.recvfrom(2048)
                except socket.timeout:
                    break
                t1 = time.perf_counter()
                ihl = (d[0] & 0x0F) * 4
                typ, _, _, rid, rseq = struct.unpack("!BBHHH", d[ihl:ihl + 8])
                if typ == 0 and rid == ident and rseq == seq & 0xFFFF:
                    out.append(t1 - t0)
                    break
            misses = misses + 1 if len(out) == n_before else 0
    finally:
        s.close()
    return out


def udp_echo_rate(ns: netns.NetNs, ip: str, count: int, window: int = 4, size: int = 64,
                  time_limit: float = 20.0) -> tuple[float, int, int]:
    """Echoed datagrams per second with `window` outstanding; (rate, echoed, lost)."""
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, PORT))
    s.settimeout(0.05)
    pad = bytes(size - 4)
    sent = got = lost = out = 0
    try:
        t0 = time.perf_counter()
        end = t0 + time_limit
        while got < count and time.perf_counter() < end and sent < 3 * count:
            while out < window and sent < 3 * count:
                s.send(struct.pack("!I", sent) + pad)
                sent += 1
                out += 1
            try:
                d = s.recv(2048)
            except socket.timeout:
                lost += out             # nothing back for 50 ms: the window is gone
                out = 0
                continue
            if len(d) == size:
                got += 1
                out = max(out - 1, 0)
        dt = time.perf_counter() - t0
    finally:
        s.close()
    return got / dt, got, lost


def tcp_echo_MBps(ns: netns.NetNs, ip: str, nbytes: int, timeout: float = 30.0) -> float:
    """MB/s of payload echoed through one connection (a thread sends, we receive)."""
    s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((ip, PORT))
    chunk = bytes(range(256)) * 256                   # 64 KiB
    err: list = []

    def send():
        try:
            left = nbytes
            while left > 0:
                k = min(left, len(chunk))
                s.sendall(chunk[:k])
                left -= k
        except OSError as e:
            err.append(e)
    try:
        t0 = time.perf_counter()
        th = threading.Thread(target=send, daemon=True)
        th.start()
        got = 0
        while got < nbytes:
            d = s.recv(1 << 16)
            if not d:
                raise RuntimeError(f"TCP echo: connection closed after {got} of {nbytes} bytes")
            got += len(d)
        dt = time.perf_counter() - t0
        th.join(timeout)
        if err:
            raise err[0]
    finally:
        s.close()
    return nbytes / dt / 1e6


def _measure(client: netns.NetNs, ip: str, quick: bool, phase=None) -> dict:
    """Every measurement against `ip` from `client`; phase(name) is called around each."""
    phase = phase or (lambda name, done: None)
    n_ping = 50 if quick else 200
    n_udp = 1500 if quick else 10000
    n_tcp = (2 if quick else 8) << 20
    out = {}
    phase("ping", False)
    rtts = ping_rtts(client, ip, n_ping)
    phase("ping", True)
    if not rtts:
        raise RuntimeError(f"no ping answer from {ip}")
    out["ping"] = {"median_us": statistics.median(rtts) * 1e6, "min_us": min(rtts) * 1e6,
                   "max_us": max(rtts) * 1e6, "answered": len(rtts), "sent": n_ping}
    phase("udp", False)
    rate, got, lost = udp_echo_rate(client, ip, n_udp)
    phase("udp", True)
    out["udp"] = {"per_s": rate, "echoed": got, "lost": lost, "window": 4, "size": 64}
    phase("tcp", False)
    mbps = tcp_echo_MBps(client, ip, n_tcp)
    phase("tcp", True)
    out["tcp"] = {"MBps": mbps, "bytes": n_tcp}
    return out


# ------------------------------------------------------------------ the two sides
def _host_side(quick: bool) -> dict:
    with netns.veth_pair(VETH_A, VETH_B, prefix="xombbench") as (a, b):
        srv = b.popen(sys.executable, "-c", _SERVER, stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = srv.stdout.readline()
            if "ready" not in line:
                raise RuntimeError(f"host echo server: {line!r}")
            ping_rtts(a, b.host_ip, 3)                  # ARP, caches
            return _measure(a, b.host_ip, quick)
        finally:
            srv.kill()
            srv.wait(timeout=10)


def _exits(ctl) -> int:
    r = ctl.execute("stats --json")
    if not r.get("ok"):
        raise RuntimeError(f"stats: {r.get('error')}")
    return sum(r["data"]["exits"].values())


def _guest_side(quick: bool, kvm_path: str) -> dict:
    from vmm.control import RemoteBackend
    tmp = tempfile.mkdtemp(prefix="xombbench-")
    ctl_path = os.path.join(tmp, "ctl")
    with netns.netns(TAP_IP, prefix="xombbench") as ns:
        argv = [sys.executable, "-m", "vmm.cli", "run", "--net", f"tap:{ns.tap}",
                "--control", ctl_path, "--boot-stats"]
        if kvm_path != "/dev/kvm":
            argv += ["--kvm-device", kvm_path]
        vm = ns.popen(*argv, "udpecho", "-t", "-irq", cwd=ROOT, stdin=subprocess.DEVNULL,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        text: list[str] = []
        ready = threading.Event()

        def read():
            for ln in vm.stdout:
                text.append(ln)
                if "udpecho: listening on" in ln:
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        ctl = None
        try:
            if not ready.wait(120) or vm.poll() is not None or not os.path.exists(ctl_path):
                raise RuntimeError(f"the guest did not start: {''.join(text)[-400:]}")
            ctl = RemoteBackend(ctl_path, timeout=30)
            ping_rtts(ns, GUEST_IP, 3)                  # ARP both ways
            marks: dict = {}

            def phase(name, done):
                now = (_exits(ctl), ns.link_packets())
                if not done:
                    marks[name] = now
                else:
                    e0, p0 = marks[name]
                    marks[name] = {"exits": now[0] - e0, "frames": now[1] - p0}
            out = _measure(ns, GUEST_IP, quick, phase)
            for name in ("ping", "udp", "tcp"):
                m = marks[name]
                out[name]["exits"], out[name]["frames"] = m["exits"], m["frames"]
                out[name]["exits_per_frame"] = m["exits"] / max(m["frames"], 1)
            ctl.close()
            ctl = None
            _stop(vm)
            for _ in range(50):                         # the reader thread's last lines
                if any("xomb-vmm: nic tx" in ln for ln in text):
                    break
                time.sleep(0.1)
            got = re.search(r"nic tx (\d+) rx (\d+) frames, (\d+) doorbells.*?(\d+) interrupts",
                            "".join(text))
            if got:                                     # the whole run (--boot-stats at exit)
                tx, rx, bells, irqs = map(int, got.groups())
                out["run"] = {"tx": tx, "rx": rx, "doorbells": bells, "interrupts": irqs}
            return out
        finally:
            if ctl is not None:
                ctl.close()
            _stop(vm)
            shutil.rmtree(tmp, ignore_errors=True)


def _stop(vm: subprocess.Popen) -> None:
    if vm.poll() is None:
        vm.terminate()                  # SIGTERM: the VMM stops and prints --boot-stats
        try:
            vm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            vm.kill()
            vm.wait(timeout=10)


def host_bench_rows(quick: bool = False, kvm_path: str = "/dev/kvm") -> list[dict]:
    """The rows (netbench's structure); raises when the measurement fails."""
    g = _guest_side(quick, kvm_path)
    h = _host_side(quick)
    rows = []

    def row(key, title, unit, gv, hv, **extra):
        rows.append({"key": key, "title": title, "unit": unit, "guest": gv, "host": hv,
                     "ratio": gv / hv if hv else None, **extra})
    row("ping_rtt_us", "net: ping RTT, median (guest vs veth)", "µs",
        g["ping"]["median_us"], h["ping"]["median_us"],
        guest_min=g["ping"]["min_us"], guest_max=g["ping"]["max_us"],
        host_min=h["ping"]["min_us"], host_max=h["ping"]["max_us"])
    row("udp_echo_per_s", "net: UDP echo 64 B, window 4", "echoes/s",
        g["udp"]["per_s"], h["udp"]["per_s"],
        guest_lost=g["udp"]["lost"], host_lost=h["udp"]["lost"])
    row("tcp_echo_MBps", "net: TCP echo, one connection", "MB/s",
        g["tcp"]["MBps"], h["tcp"]["MBps"], bytes=g["tcp"]["bytes"])
    for name, title in (("ping", "ping"), ("udp", "UDP echo"), ("tcp", "TCP echo")):
        row(f"vmm_exits_per_frame_{name}", f"net: exits to the VMM per frame, {title}",
            "exits/frame", g[name]["exits_per_frame"], None,
            exits=g[name]["exits"], frames=g[name]["frames"])
    run = g.get("run")
    if run:                             # each doorbell is a VM exit KVM absorbs (ioeventfd)
        frames = max(run["tx"] + run["rx"], 1)
        row("doorbells_per_frame", "net: doorbell exits per frame (whole run)", "exits/frame",
            run["doorbells"] / frames, None, **run)
        row("irqs_per_frame", "net: NIC interrupts per frame (whole run)", "irqs/frame",
            run["interrupts"] / frames, None)
    return rows


def format_rows(rows: list[dict]) -> str:
    from vmm.bench import side_by_side
    return side_by_side(rows, 'host (veth)')


if __name__ == "__main__":
    why = skip_reason()
    if why:
        print(f"host <-> guest network rows skipped: {why}")
        sys.exit(0)
    print(format_rows(host_bench_rows(quick="--quick" in sys.argv)))
