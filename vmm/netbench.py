"""NIC benchmark rows for `xomb-vmm bench` (docs/DEVICES.md, "The NIC").

    rows = nic_bench_rows(quick=False)     # [{key, title, unit, guest, host, ratio}, ...]
    python -m vmm.netbench [--quick]       # print them

The guest half is `nictest pair N -len L` (libos/programs/nictest.c) in a VM of its own:
one process owns VF 0 and VF 1 and streams N frames from one to the other through the
embedded switch (at most a ring's worth in flight, so nothing is dropped), polled and,
once more, with the receiver halting for the NIC's interrupt.  The host half moves the
same frames through a Linux AF_UNIX datagram socket pair in one process: the kernel's
cheapest frame-sized message path on this host.  Exits per frame: doorbell writes (each a
VM exit absorbed by KVM's ioeventfd) counted by the driver, and the VMM's own exits over
the whole run.
"""
from __future__ import annotations

import re
import socket
import time

from vmm import abi


def _guest(cmd: str, kvm_path: str, ram: int, timer: bool = True) -> tuple[dict, dict]:
    from devices.console import ConsoleIO, MemorySink
    from devices.nic import Nic
    from vmm import hostinfo
    from vmm.bootimage import build_boot_state
    from vmm.build import build_all
    from vmm.machine import Machine
    built = build_all()
    boot = build_boot_state(built.kernel, built.programs, ram_bytes=ram,
                            host=hostinfo.host_type(), cmdline=cmd, run_mode=abi.RUN_COMMAND,
                            tsc_khz=hostinfo.tsc_khz(kvm_path), timer=timer)
    sink = MemorySink()
    m = Machine(boot, console=ConsoleIO(sink, None), kvm_path=kvm_path, devices=[Nic(2)])
    try:
        status = m.run(timeout=300)
    finally:
        m.close()
    text = sink.data.decode(errors="replace")
    got = re.search(r"@nic pair frames (\d+) len (\d+) us (\d+) doorbells (\d+)", text)
    if status != 0 or not got:
        raise RuntimeError(f"{cmd}: status {status}: {text[-400:]}")
    frames, length, us, bells = map(int, got.groups())
    return {"frames": frames, "len": length, "us": max(us, 1), "doorbells": bells}, dict(m.stats)


def _host(n: int, length: int) -> float:
    """Frames per second through an AF_UNIX datagram socket pair (send a ring's worth,
    receive them), the same flow control as the guest."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    frame = bytes(length)
    try:
        t = time.perf_counter()
        done = 0
        while done < n:
            k = min(64, n - done)
            for _ in range(k):
                a.send(frame)
            for _ in range(k):
                b.recv(2048)
            done += k
        return n / (time.perf_counter() - t)
    finally:
        a.close()
        b.close()


def nic_bench_rows(quick: bool = False, kvm_path: str = "/dev/kvm",
                   ram: int = 128 << 20) -> list[dict]:
    n = 5000 if quick else 30000
    rows = []
    small, stats = _guest(f"nictest pair {n} -len 60", kvm_path, ram)
    big, _ = _guest(f"nictest pair {n // 2} -len 1514", kvm_path, ram)
    irq, istats = _guest(f"nictest pair {n // 5} -len 60 -irq", kvm_path, ram)
    pps = small["frames"] * 1e6 / small["us"]
    h_pps = _host(n, 60)
    rows.append(("vf_pps", "nic: VF -> VF through the switch, 60 B", "frames/s", pps, h_pps))
    mbps = big["frames"] * big["len"] * 1e6 / big["us"] / 1e6
    h_big = _host(n // 2, 1514) * 1514 / 1e6
    rows.append(("vf_MBps", "nic: VF -> VF, 1514 B frames", "MB/s", mbps, h_big))
    rows.append(("vf_pps_irq", "nic: VF -> VF, receiver halts for the IRQ", "frames/s",
                 irq["frames"] * 1e6 / irq["us"], h_pps))
    out = [{"key": k, "title": t, "unit": u, "guest": g, "host": h,
            "ratio": g / h if h else None} for k, t, u, g, h in rows]
    nic = stats.get("nic", {})
    vmm_exits = sum(stats.get("exits", {}).values())
    out += [{"key": "exits_per_frame", "title": "nic: doorbell exits per frame (60 B)",
             "unit": "exits/frame", "guest": small["doorbells"] / small["frames"], "host": None,
             "ratio": None},
            {"key": "vmm_exits_per_frame", "title": "nic: exits to the VMM per frame (run)",
             "unit": "exits/frame", "guest": vmm_exits / max(nic.get("tx_packets", 0), 1),
             "host": None, "ratio": None},
            {"key": "irqs_per_frame", "title": "nic: interrupts per frame (-irq)",
             "unit": "irqs/frame",
             "guest": istats.get("nic", {}).get("interrupts", 0) / max(irq["frames"], 1),
             "host": None, "ratio": None}]
    return out


def format_rows(rows: list[dict]) -> str:
    from vmm.bench import side_by_side
    return side_by_side(rows, 'host')


if __name__ == "__main__":
    import sys
    print(format_rows(nic_bench_rows(quick="--quick" in sys.argv)))
