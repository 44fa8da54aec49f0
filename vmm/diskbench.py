"""Disk benchmark rows for `xomb-vmm bench` (docs/DEVICES.md).

    rows = disk_bench_rows(quick=False)    # [{key, title, unit, guest, host, ratio}, ...]
    python -m vmm.diskbench                # print them

The guest half is `disktest bench MB` (libos/programs/disktest.c) on disk VF 1 of a
fresh sparse image, run in a VM of its own: sequential write and read with 1 MiB
commands (4 in flight), 4 KiB random reads at queue depth 1 and 32.  The host half
does the same with os.pwrite/os.pread on the same file.  Exits per I/O: doorbell
writes (each a VM exit absorbed by KVM's ioeventfd, never reaching the VMM) counted
by the driver, and the VMM's own exits (KVM_RUN returns) over the whole run.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import time

from vmm import abi

MB = 1 << 20


def _guest(image: str, mb: int, kvm_path: str, ram: int) -> tuple[dict, dict]:
    from devices.console import ConsoleIO, MemorySink
    from devices.disk import Disk
    from vmm import hostinfo
    from vmm.bootimage import build_boot_state
    from vmm.build import build_all
    from vmm.machine import Machine
    built = build_all()
    run_mode = getattr(abi, "RUN_COMMAND", 1)
    boot = build_boot_state(built.kernel, built.programs, ram_bytes=ram,
                            host=hostinfo.host_type(), cmdline=f"disktest bench {mb}",
                            run_mode=run_mode, tsc_khz=hostinfo.tsc_khz(kvm_path))
    sink = MemorySink()
    disk = Disk(image)
    m = Machine(boot, console=ConsoleIO(sink, None), kvm_path=kvm_path, devices=[disk])
    try:
        status = m.run(timeout=300)
    finally:
        m.close()
        disk.close()
    text = sink.data.decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"disktest bench: status {status}: {text[-400:]}")
    vals = {k: int(v) for k, v in re.findall(r"@disk (\w+) (\d+)", text)}
    io = re.search(r"@disk ios (\d+) doorbells (\d+)", text)
    vals["ios"], vals["doorbells"] = int(io.group(1)), int(io.group(2))
    return vals, dict(m.stats)


def _host(path: str, mb: int, n_rand: int, start: int, blocks: int) -> dict:
    fd = os.open(path, os.O_RDWR)
    try:
        buf = os.urandom(MB)
        off0 = start * abi.DISK_BLOCK
        w = 0.0
        for _ in range(2):              # a fresh sparse file, then overwrite: the better
            t = time.perf_counter()
            for i in range(mb):
                os.pwrite(fd, buf, off0 + i * MB)
            w = max(w, mb / (time.perf_counter() - t))
            os.fsync(fd)
        t = time.perf_counter()
        for i in range(mb):
            os.pread(fd, MB, off0 + i * MB)
        r = mb / (time.perf_counter() - t)
        rng = random.Random(1)
        offs = [off0 + rng.randrange(blocks) * abi.DISK_BLOCK for _ in range(n_rand)]
        t = time.perf_counter()
        for o in offs:
            os.pread(fd, abi.DISK_BLOCK, o)
        iops = n_rand / (time.perf_counter() - t)
    finally:
        os.close(fd)
    return {"seq_write_MBps": w, "seq_read_MBps": r, "rand4k_iops": iops}


def disk_bench_rows(quick: bool = False, kvm_path: str = "/dev/kvm",
                    ram: int = 128 << 20) -> list[dict]:
    """The disk rows: guest (through VF, IOMMU and the device thread) vs host."""
    from vmm import xofs
    mb = 64 if quick else 256
    with tempfile.TemporaryDirectory() as d:
        image = os.path.join(d, "bench.img")
        ns = xofs.mkfs(image, 2 * (mb + 64) * MB, 2)
        twin = os.path.join(d, "host.img")             # the host writes a fresh file too
        xofs.mkfs(twin, 2 * (mb + 64) * MB, 2)
        h = _host(twin, mb, 20000, ns[1][0], ns[1][1] - 1)
        os.unlink(twin)
        g, stats = _guest(image, mb, kvm_path, ram)
    vmm_exits = sum(stats.get("exits", {}).values())
    rows = [
        ("seq_write", "disk: sequential write, 1 MiB commands", "MB/s",
         g["seq_write_MBps"], h["seq_write_MBps"]),
        ("seq_read", "disk: sequential read, 1 MiB commands", "MB/s",
         g["seq_read_MBps"], h["seq_read_MBps"]),
        ("rand_qd1", "disk: 4 KiB random read, QD1", "IOPS", g["rand4k_qd1_iops"],
         h["rand4k_iops"]),
        ("rand_qd32", "disk: 4 KiB random read, QD32", "IOPS", g["rand4k_qd32_iops"],
         h["rand4k_iops"]),
    ]
    out = [{"key": k, "title": t, "unit": u, "guest": gv, "host": hv,
            "ratio": gv / hv if hv else None} for k, t, u, gv, hv in rows]
    out += [{"key": "exits_qd1", "title": "disk: doorbell exits per I/O, QD1", "unit": "exits/IO",
             "guest": g["qd1_doorbells_per_1000_io"] / 1000, "host": None, "ratio": None},
            {"key": "exits_qd32", "title": "disk: doorbell exits per I/O, QD32",
             "unit": "exits/IO", "guest": g["qd32_doorbells_per_1000_io"] / 1000,
             "host": None, "ratio": None},
            {"key": "vmm_exits", "title": "disk: exits to the VMM per I/O (whole run)",
             "unit": "exits/IO", "guest": vmm_exits / g["ios"], "host": None, "ratio": None}]
    return out


def format_rows(rows: list[dict]) -> str:
    from vmm.bench import side_by_side
    return side_by_side(rows, 'host')


if __name__ == "__main__":
    import sys
    print(format_rows(disk_bench_rows(quick="--quick" in sys.argv)))
