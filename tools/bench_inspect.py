#!/usr/bin/env python3
"""Figures for the inspection console (printed, never asserted):

    python3 tools/bench_inspect.py
      pause + resume of every vCPU of a booted VM (idle shell), median/max over 200
      `pt` of a fully populated 256 MiB address space (65,536 4 KiB pages), best of 5
      `pt` of the running shell's address space
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmm import abi, hostinfo  # noqa: E402
from vmm.pagetable import FrameAllocator, PageTables, PhysMem  # noqa: E402


def pt_256m() -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_inspect import FakeMachine
    from vmm.inspect import Inspector
    mem = PhysMem()
    a = PageTables(mem, FrameAllocator(0x600000, 0xA00000))
    a.map(0x4000_0000, 0x1000_0000, abi.PTE_U | abi.PTE_W | abi.PTE_A | abi.PTE_D, 65536)
    ram = bytearray(16 << 20)
    for pa, data in mem.runs():
        ram[pa:pa + len(data)] = data
    ins = Inspector(FakeMachine(ram, a.root))
    return min(ins.pt(a.root)["ms"] for _ in range(5))


def live(cpus: int = 1):
    from vmm.build import build_all
    from vmm.bootimage import build_boot_state
    from vmm.machine import Machine
    from vmm.inspect import Inspector
    from devices.console import ConsoleIO, MemorySink, QueueSource
    b = build_all()
    kw = {"ncpus": cpus} if cpus > 1 else {}
    boot = build_boot_state(b.kernel, b.programs, ram_bytes=128 << 20,
                            host=hostinfo.host_type(), **kw)
    out = MemorySink()
    m = Machine(boot, console=ConsoleIO(out, QueueSource()), cpus=cpus)
    ins = Inspector(m)
    th = threading.Thread(target=m.run, kwargs={"timeout": 120}, daemon=True)
    th.start()
    out.wait_for(b"xsh$ ", 30)
    t = []
    for _ in range(200):
        t0 = time.perf_counter()
        m.pause()
        m.resume()
        t.append((time.perf_counter() - t0) * 1000)
    ptms = min(ins.pt()["ms"] for _ in range(5))
    m.request_stop(0)
    th.join(10)
    m.close()
    return statistics.median(t), max(t), ptms


if __name__ == "__main__":
    print(f"pt, fully populated 256 MiB address space: {pt_256m():.1f} ms (best of 5)")
    for cpus in (1, 2):
        try:
            med, mx, ptms = live(cpus)
        except Exception as e:
            print(f"{cpus} vCPU(s): cannot boot ({e})")
            continue
        print(f"pause + resume, {cpus} vCPU(s): median {med:.3f} ms, max {mx:.3f} ms (200 runs)")
        if cpus == 1:
            print(f"pt of the running shell's address space: {ptms:.1f} ms")
