"""The device interface (kvmtool style: one small file per device).

A device is attached to a Machine once, before the vCPU runs.  In `attach` it
claims what it needs through the machine's registration API:

    machine.register_mmio(page_index, self)     # device page ram_bytes + i*4096 -> self
    machine.add_ioeventfd(gpa, length)          # -> eventfd fd (a write never exits)
    machine.ram_device_page(page_index)         # back a device page with RAM instead
    machine.device_page_gpa(page_index)
    machine.request_stop(status, reason)        # stop the VM; run() returns status
    machine.mem, machine.boot, machine.stats    # guest RAM, BootState, shared counters

MMIO exits on a registered page are dispatched to `mmio_write` / `mmio_read`
with the offset inside the page.  `start` runs just before the first KVM_RUN
(start threads here), `stop` after the vCPU has stopped (final drain, join).
"""
from __future__ import annotations

import signal
import threading


class Device:
    name = "device"

    def attach(self, machine) -> None:
        self.machine = machine

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        pass

    def mmio_read(self, page: int, offset: int, size: int) -> bytes:
        return bytes(size)


def _block_signals():
    """Helper threads never take SIGINT/SIGTERM/kick signals: the vCPU thread must."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM,
                                                  signal.SIGUSR1, signal.SIGHUP})
    except (AttributeError, OSError, ValueError):
        pass


def device_thread(target, name: str) -> threading.Thread:
    """A daemon thread that blocks the VMM's signals (so KVM_RUN gets them)."""
    def body():
        _block_signals()
        target()
    return threading.Thread(target=body, name=name, daemon=True)
