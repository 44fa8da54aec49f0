"""The platform page: power-off with a status, and the boot timer.

MMIO page `ram_bytes + DEV_PLATFORM*4096`, handled in Python on exit (rare):

    +PLAT_EXIT        u32 write: power off; Machine.run() returns the value
    +PLAT_BOOT_TIMER  any write: the guest reached its prompt; the time since
                      VMM start goes to machine.stats['boot_to_prompt_ms']
                      (Firecracker's boot-timer device, same idea)
    +PLAT_MARK        u32 write: benchmark mark op | id << 8, passed to
                      machine.mark_handler(op, id) if set (vmm/bench.py)

Reads return 0.
"""
from __future__ import annotations

import time

from vmm import abi
from devices.base import Device


class Platform(Device):
    name = "platform"

    def attach(self, machine) -> None:
        super().attach(machine)
        machine.register_mmio(abi.DEV_PLATFORM, self)

    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        m = self.machine
        if offset == abi.PLAT_EXIT:
            status = int.from_bytes(bytes(data[:4]), "little")
            m.request_stop(status, f"guest power-off, status {status}", guest=True)
        elif offset == abi.PLAT_BOOT_TIMER:
            now = time.perf_counter()
            m.stats["boot_to_prompt_ms"] = (now - m.t_start) * 1000.0
            m.stats["first_run_to_prompt_ms"] = ((now - m.t_first_run) * 1000.0
                                                 if m.t_first_run else None)
        elif offset == abi.PLAT_MARK:
            value = int.from_bytes(bytes(data[:4]), "little")
            handler = getattr(m, "mark_handler", None)     # vmm/bench.py sets it
            if handler is not None:
                handler(value & 0xFF, value >> 8)
        else:
            m.stats.setdefault("platform_unknown_writes", 0)
            m.stats["platform_unknown_writes"] += 1
