"""What every self-virtualizing device shares: virtual functions owned by address spaces.

A *virtual function* (VF) is one instance of a device (a disk namespace, a NIC port) that
one address space drives directly.  The disk (devices/disk.py) and the NIC
(devices/nic.py) differ in their queues; everything else about a VF is this module:

* **Registers.** VF i is device page ``FIRST_PAGE + i``, with the same three registers on
  every device: ``VF_DOORBELL`` (an ioeventfd: a write never exits to Python),
  ``VF_ENABLE`` (u64: the VA of the status page) and ``VF_DISABLE``.
* **Ownership.** The owner is whoever maps the register page: at VF_ENABLE the device looks
  for the unique root that maps this VF's frame at the VA its status page names
  (``VFS_SETUP_VF_VA``).  Before every batch it checks that the owner still holds both pages
  (:meth:`VfDevice.live`): a freed or moved page unbinds the VF.  Nobody grants or revokes a
  VF but the page tables.
* **Memory.** The status page, the queues and the fault ring are in the owner's memory,
  named by the owner's virtual addresses and reached only through the IOMMU
  (devices/iommu.py), so a VF can touch nothing its owner does not hold.
* **The doorbell protocol.** A worker drains its queue, polls for a moment, then writes
  ``VFS_WAITING`` (a nonzero sleep number) and sleeps on the doorbell's eventfd.  A driver
  rings only when it sees a new sleep number, so a busy queue costs no exits.
* **Faults and interrupts.** An IOMMU fault becomes a record in the owner's fault ring, a
  ``VFS_FAULTS`` count and an interrupt.  Interrupts are raised (irqfd -> MSI -> INTERRUPT
  upcall) only if the driver set the device's IRQ word, i.e. only when it is about to halt.

The shared status-page words are ``VFS_*`` in vmm/abi.py; each device's own ``DS_*`` /
``NS_*`` names alias them.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from vmm import abi
from devices.base import Device
from devices.iommu import IommuFault, iommu_for

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
MASK32 = 0xFFFF_FFFF
WAIT_TIMEOUT = 0.05
SPIN_S = 0.0002             # a worker keeps polling this long after its queue empties


def put(mem, off: int, st: struct.Struct, *vals) -> None:
    """Store into memory the guest reads concurrently.  Never struct.pack_into: CPython
    zeroes the destination before packing, so a polling driver could see a transient 0."""
    mem[off:off + st.size] = st.pack(*vals)


class VirtualFunction:
    """One VF's binding; devices subclass it for their queue state and counters."""

    def __init__(self, device: "VfDevice", index: int, stats: dict):
        self.device, self.index = device, index
        self.lock = threading.Lock()
        self.efd = None
        self.ready = False
        self.root = self.vf_va = self.status_va = 0
        self.status_pa: int | None = None
        self.fault_va = self.fault_n = self.fault_seq = 0
        self.sleeps = 0                 # VFS_WAITING: the number of the current sleep
        self.stats = {"errors": 0, "faults": 0, "doorbells": 0, "batches": 0,
                      "interrupts": 0, **stats}

    @property
    def page(self) -> int:
        return self.device.FIRST_PAGE + self.index

    @property
    def frame_pa(self) -> int:
        return self.device.machine.device_page_gpa(self.page)


class VfDevice(Device):
    """A device made of VFs.  Subclasses set FIRST_PAGE, IRQ_WORD (the status-page word in
    which the driver asks for interrupts) and implement devtab_entry(), worker(vf) and
    setup(vf, spa) (take the queue layout from the status page, or refuse)."""

    FIRST_PAGE = 0
    IRQ_WORD = 0
    vfs: list

    def __init__(self):
        self.log: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def attach(self, machine) -> None:
        super().attach(machine)
        self.iommu = iommu_for(machine)
        self.iommu.devices.append(self)
        self.mem = machine.mem.view
        self._mfence = machine.mfence
        for vf in self.vfs:
            machine.register_mmio(vf.page, self)
            vf.efd = machine.add_ioeventfd(machine.device_page_gpa(vf.page) + abi.VF_DOORBELL)
        bi = abi.BOOTINFO_PHYS + abi.BOOTINFO_DEVTAB        # discovery (init reads it)
        count = U32.unpack_from(self.mem, bi)[0]
        if count < abi.DEVTAB_MAX:
            at = bi + 8 + count * abi.DEVTAB_ENTRY
            self.mem[at:at + abi.DEVTAB_ENTRY] = self.devtab_entry().ljust(abi.DEVTAB_ENTRY, b"\0")
            U32.pack_into(self.mem, bi, count + 1)

    def threads(self) -> list[threading.Thread]:
        """The device's threads (started by start(), joined by stop())."""
        return []

    def start(self) -> None:
        self._stop.clear()
        self._threads = self.threads()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for vf in self.vfs:
            if vf.efd is not None:
                try:
                    os.eventfd_write(vf.efd, 1)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []
        self.machine.stats[self.name] = self.stats()
        self.machine.stats["iommu_faults"] = self.iommu.fault_count

    def stats(self) -> dict:
        tot: dict = {}
        for vf in self.vfs:
            for k, v in vf.stats.items():
                tot[k] = tot.get(k, 0) + v
        return tot

    def note(self, msg: str) -> None:
        self.log.append(msg)
        del self.log[:-200]

    # ------------------------------------------------------------------ registers
    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        i = page - self.FIRST_PAGE
        if not 0 <= i < len(self.vfs):
            return
        vf = self.vfs[i]
        if offset == abi.VF_DOORBELL:           # no ioeventfd on this host
            if vf.efd is not None:
                os.eventfd_write(vf.efd, 1)
            else:
                self.doorbell_without_eventfd(vf)
        elif offset == abi.VF_ENABLE:
            self.enable(vf, int.from_bytes(bytes(data).ljust(8, b"\0")[:8], "little"))
        elif offset == abi.VF_DISABLE:
            with vf.lock:
                self.unbind(vf, "disabled by its driver")
        else:
            vf.stats["errors"] += 1

    def doorbell_without_eventfd(self, vf) -> None:
        """A doorbell that exited (no ioeventfd): the worker's poll will see it."""

    # ------------------------------------------------------------------ binding
    def _status_pa(self, root: int, va: int) -> int | None:
        pa = self.iommu.check_page(root, va & ~(abi.PAGE - 1), abi.IOMMU_W)
        return None if pa < 0 or va & (abi.PAGE - 1) else pa

    def enable(self, vf, status_va: int) -> bool:
        """Bind the VF to the unique address space that maps its register page at the VA
        its status page names, then let the device take its queue setup from that page."""
        with vf.lock:
            self.unbind(vf, None)
            frame = vf.frame_pa

            def probe(root):
                spa = self._status_pa(root, status_va)
                if spa is None:
                    return False
                va = U64.unpack_from(self.mem, spa + abi.VFS_SETUP_VF_VA)[0]
                return self.iommu.holds(root, va & ~(abi.PAGE - 1), frame)

            owners = self.iommu.find_owner(frame, probe)
            if len(owners) != 1:
                self.note(f"vf {vf.index}: enable refused: {len(owners)} address spaces "
                          f"match (status page {status_va:#x})")
                return False
            root = owners[0]
            spa = self._status_pa(root, status_va)
            m = self.mem
            fva = U64.unpack_from(m, spa + abi.VFS_SETUP_FAULT_VA)[0]
            fn = U32.unpack_from(m, spa + abi.VFS_SETUP_FAULT_N)[0]
            vf.root, vf.status_va = root, status_va
            vf.vf_va = U64.unpack_from(m, spa + abi.VFS_SETUP_VF_VA)[0] & ~(abi.PAGE - 1)
            vf.fault_va, vf.fault_n, vf.fault_seq = fva, min(fn, 1 << 16), 0
            why = None if fva % abi.FAULT_REC == 0 else "a misaligned fault ring"
            why = why or self.setup(vf, spa)
            if why:
                put(m, spa + abi.VFS_STATE, U32, abi.DSTATE_UNBOUND)
                vf.root = 0
                self.note(f"vf {vf.index}: enable refused: {why}")
                return False
            vf.status_pa = spa
            vf.ready = True
            put(m, spa + abi.VFS_STATE, U32, abi.DSTATE_READY)
            self.note(f"vf {vf.index}: bound to root {root:#x} (register page at "
                      f"{vf.vf_va:#x}){self.describe_binding(vf)}")
            return True

    def setup(self, vf, spa: int) -> str | None:
        """Take the device-specific queue setup from the status page: None, or why not."""
        return None

    def describe_binding(self, vf) -> str:
        return ""

    def unbind(self, vf, why: str | None) -> None:
        if vf.ready and why:
            self.note(f"vf {vf.index}: unbound from root {vf.root:#x}: {why}")
        vf.ready = False
        vf.root = 0
        vf.status_pa = None

    def live(self, vf) -> int | None:
        """Under vf.lock: the status page's physical address if the binding still holds
        (the owner maps the register page and the status page), else unbind and None."""
        if not vf.ready:
            return None
        io = self.iommu
        if not io.holds(vf.root, vf.vf_va, vf.frame_pa):
            self.unbind(vf, "the owner no longer holds the register page")
            return None
        spa = io.check_page(vf.root, vf.status_va, abi.IOMMU_W)
        if spa < 0:
            self.fault(vf, None, io.record(vf.index, vf.status_va, abi.IOMMU_W, -spa, vf.root))
            self.unbind(vf, "status page unreachable")
            return None
        vf.status_pa = spa
        return spa

    def queue_entry(self, vf, spa: int, ring_va: int, index: int, size: int, access: int,
                    cache: dict, name: str) -> int | None:
        """The physical address of entry `index` (mod the queue size) of a queue in the
        owner's memory, or None: the queue is unreachable, the fault is delivered and the
        VF unbound (the owner broke its own binding)."""
        try:
            (pa, _), = self.iommu.translate(vf.root, ring_va + (index % vf.qsize) * size,
                                            size, access, vf.index, cache)
            return pa
        except IommuFault as f:
            self.fault(vf, spa, f.record, cache)
            self.unbind(vf, f"{name} unreachable")
            return None

    # ------------------------------------------------------------------ the doorbell
    def idle(self, vf, pending) -> None:
        """The worker found nothing to do: keep polling a moment (a busy driver then
        never rings at all), then sleep until the doorbell.  `pending(spa)` says whether
        the owner queued work."""
        spa = vf.status_pa if vf.ready else None
        if spa is not None:
            t_end = time.perf_counter() + SPIN_S
            while time.perf_counter() < t_end and not pending(spa):
                pass
        self.sleep_or_recheck(vf, spa, pending)

    def sleep_or_recheck(self, vf, spa: int | None, pending) -> None:
        """The worker found nothing to do: announce a sleep in VFS_WAITING and wait for
        the doorbell, unless `pending(spa)` shows work after the announcement (the
        fence orders our store before that load, against the driver's store-then-load)."""
        if spa is not None:
            vf.sleeps = vf.sleeps % MASK32 + 1          # never 0: 0 means awake
            if pending(spa) or not self._set_waiting(vf, spa, vf.sleeps):
                return
            self._mfence()
            if pending(spa):
                self._set_waiting(vf, spa, 0)
                return
        self._wait(vf)
        if spa is not None:
            self._set_waiting(vf, spa, 0)

    def _set_waiting(self, vf, spa: int, value: int) -> bool:
        """Write VFS_WAITING, only into the status page of a live binding (the owner may
        have freed it since the batch: never write a stale frame)."""
        with vf.lock:
            if self.live(vf) != spa:
                return False
            put(self.mem, spa + abi.VFS_WAITING, U32, value)
            return True

    def _wait(self, vf) -> None:
        if vf.efd is None:
            self._stop.wait(0.001)
            return
        try:
            r, _, _ = select.select([vf.efd], [], [], WAIT_TIMEOUT)
        except (OSError, ValueError):
            return
        if r:
            try:
                vf.stats["doorbells"] += os.eventfd_read(vf.efd)
            except BlockingIOError:
                pass

    # ------------------------------------------------------------------ errors, faults, IRQs
    def bump(self, pa: int, n: int = 1) -> None:
        put(self.mem, pa, U64, U64.unpack_from(self.mem, pa)[0] + n)

    def error(self, vf, spa: int | None) -> None:
        """A malformed request: counted here and in the owner's VFS_ERRORS."""
        vf.stats["errors"] += 1
        if spa is not None:
            self.bump(spa + abi.VFS_ERRORS)

    def fault(self, vf, spa: int | None, rec, cache: dict | None = None) -> None:
        """Deliver an IOMMU fault to the owner: a record in its fault ring, VFS_FAULTS,
        and the interrupt if it waits for one (the VMM's log has the record already)."""
        vf.stats["faults"] += 1
        if spa is None:
            return
        if vf.fault_n:
            try:
                (pa, _), = self.iommu.translate(
                    vf.root, vf.fault_va + (vf.fault_seq % vf.fault_n) * abi.FAULT_REC,
                    abi.FAULT_REC, abi.IOMMU_W, vf.index, cache)
                self.mem[pa:pa + abi.FAULT_REC] = rec.pack()
                vf.fault_seq += 1
            except IommuFault:
                pass                            # the ring itself is bad: the count says it
        self.bump(spa + abi.VFS_FAULTS)
        self.interrupt(vf, spa)

    def interrupt(self, vf, spa: int) -> None:
        """Raise the VF's interrupt if its driver asked (it is about to halt).  The fence:
        our stores before the IRQ-word load, against the driver's IRQ-word store, fence,
        and its loads -- else a completion and a halting driver could miss each other."""
        self._mfence()
        if U32.unpack_from(self.mem, spa + self.IRQ_WORD)[0]:
            vf.stats["interrupts"] += 1
            raise_irq = getattr(self.machine, "raise_irq", None)
            if raise_irq:
                raise_irq(vf.page)

    def report_vfs(self, head: str, label=lambda vf: ":") -> str:
        """`head`, one line per VF ("vf I" + label(vf) + binding, counters), the log."""
        lines = [head]
        for vf in self.vfs:
            who = f"root {vf.root:#x}" if vf.ready else "unbound"
            lines.append(f"  vf {vf.index}{label(vf)} {who}, "
                         + ", ".join(f"{k} {v}" for k, v in vf.stats.items()))
        return "\n".join(lines + self.log[-10:])
