"""The self-virtualizing NIC: one physical function, N virtual functions, an embedded switch.

Each VF is an Ethernet port with its own MAC (``NIC_MAC_BASE + i``) and a TX and an RX
descriptor ring that live in its *owner's* memory, named by the owner's virtual addresses
(shared virtual addressing through devices/iommu.py, exactly as the disk).  Register page
``DEV_NIC_VF0 + i``:

    +NIC_DOORBELL  any write: "my tx_tail moved" -- an ioeventfd: never exits to Python
    +NIC_ENABLE    u64 write: VA of the status page (setup inside): bind + enable (exit)
    +NIC_DISABLE   any write: unbind (exit)

The embedded switch (:class:`Switch`) forwards by destination MAC: to a VF, or
broadcast/multicast to every other port, unknown unicast to the uplink.  A VF may only
send frames whose source MAC is its own (else: dropped, counted).  The uplink
(:mod:`devices.uplink`) is a TAP device, a UDP socket tunnel, or nothing.

Threads: one per VF (its TX ring: drains the whole ring per wake-up, polls SPIN_S after
it empties, then sets NS_WAITING and sleeps on the doorbell's eventfd) and one for the
uplink.  RX needs no thread: whoever forwards a frame writes it into the destination's
RX ring under that VF's lock.  Layouts: vmm/abi.py, docs/DEVICES.md.
"""
from __future__ import annotations

import ipaddress
import os
import select
import struct
import threading
import time

from vmm import abi
from devices.base import Device, device_thread
from devices.iommu import IommuFault, iommu_for

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DESC = struct.Struct("<QHHH")          # buf len buflen status
MASK32 = 0xFFFF_FFFF
UPLINK = -1                             # the switch's port number for the uplink
SPIN_S = 0.0002                         # keep polling the TX ring this long after it empties
# NS_WAITING is 0 while the TX worker is awake, else the sequence number of its current
# sleep: a driver rings once per sleep (it remembers the number it rang for), so a burst
# of sends while the worker is waking up costs one exit, not one per frame.
WAIT_TIMEOUT = 0.05
BROADCAST = b"\xff" * 6


def _put(mem, off: int, st: struct.Struct, *vals) -> None:
    """Store into memory the guest reads concurrently (never pack_into: it zeroes first)."""
    mem[off:off + st.size] = st.pack(*vals)


def mac_of(vf: int) -> bytes:
    return (abi.NIC_MAC_BASE + vf).to_bytes(6, "big")


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# ---------------------------------------------------------------------- addressing
def parse_guest_ip(text: str, gateway: str | None = None) -> tuple[int, int, int]:
    """'10.0.2.15/24' (+ optional gateway) -> (ip, gateway, prefix), ints in host order.
    The default gateway is .1 of the subnet."""
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise ValueError(f"--guest-ip {text!r}: not an IPv4 ADDR/PREFIX ({exc})") from None
    if "/" not in text:
        raise ValueError(f"--guest-ip {text!r}: needs a prefix length, e.g. 10.0.2.15/24")
    net = iface.network
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise ValueError(f"--gateway {gateway!r}: not an IPv4 address") from None
        if gw not in net:
            raise ValueError(f"--gateway {gateway}: not in the guest's subnet {net}")
    else:
        gw = net.network_address + 1
    if gw == iface.ip:
        raise ValueError(f"--guest-ip {text}: the guest's address is its gateway {gw}; "
                         f"pick another address or --gateway")
    return int(iface.ip), int(gw), net.prefixlen


# ---------------------------------------------------------------------- the switch
class Switch:
    """Forwarding decisions of the embedded switch (pure: no I/O).

    Ports are the VFs 0..n-1 and UPLINK.  VF MACs are fixed (a VF *is* its MAC), so
    there is nothing to learn: a destination that is not a VF's MAC lives beyond the
    uplink."""

    def __init__(self, nvfs: int, has_uplink: bool):
        self.macs = {mac_of(i): i for i in range(nvfs)}
        self.nvfs = nvfs
        self.has_uplink = has_uplink
        self.stats = {"forwarded": 0, "flooded": 0, "to_uplink": 0, "spoofed": 0,
                      "runts": 0, "no_route": 0}

    def route(self, frame: bytes, src: int) -> list[int]:
        """Ports to deliver `frame` (arrived on port `src`) to; [] = drop."""
        if len(frame) < abi.NIC_MIN_FRAME:
            self.stats["runts"] += 1
            return []
        if src != UPLINK and frame[6:12] != mac_of(src):
            self.stats["spoofed"] += 1          # anti-spoofing: a VF sends as itself
            return []
        dst = frame[0:6]
        if dst[0] & 1:                          # broadcast and multicast: every other port
            self.stats["flooded"] += 1
            out = [p for p in range(self.nvfs) if p != src]
            if self.has_uplink and src != UPLINK:
                out.append(UPLINK)
            return out
        port = self.macs.get(dst)
        if port is not None and port != src:
            self.stats["forwarded"] += 1
            return [port]
        if port is None and src != UPLINK and self.has_uplink:
            self.stats["to_uplink"] += 1
            return [UPLINK]
        self.stats["no_route"] += 1             # unknown from the uplink, or hairpin
        return []


# ---------------------------------------------------------------------- one VF
class VF:
    def __init__(self, nic: "Nic", index: int):
        self.nic, self.index = nic, index
        self.mac = mac_of(index)
        self.lock = threading.Lock()
        self.efd = None
        self.ready = False
        self.root = self.vf_va = self.status_va = 0
        self.tx_va = self.rx_va = self.fault_va = 0
        self.qsize = self.fault_n = 0
        self.tx_head = self.rx_head = self.fault_seq = 0
        self.sleeps = 0                 # NS_WAITING: the sequence number of the current sleep
        self.status_pa = None
        self.stats = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                      "rx_no_buffer": 0, "rx_unbound": 0, "rx_too_big": 0, "spoofed": 0,
                      "errors": 0,
                      "faults": 0, "doorbells": 0, "batches": 0, "interrupts": 0}

    @property
    def page(self) -> int:
        return abi.DEV_NIC_VF0 + self.index

    @property
    def frame_pa(self) -> int:
        return self.nic.machine.device_page_gpa(self.page)


class Nic(Device):
    name = "nic"

    def __init__(self, nvfs: int = abi.NIC_MAX_VFS, uplink=None,
                 guest_ip: str = "10.0.2.15/24", gateway: str | None = None):
        if not 1 <= nvfs <= abi.NIC_MAX_VFS:
            raise ValueError(f"--nic-vfs {nvfs}: between 1 and {abi.NIC_MAX_VFS}")
        self.ip, self.gateway, self.prefix = parse_guest_ip(guest_ip, gateway)
        self.vfs = [VF(self, i) for i in range(nvfs)]
        self.uplink = uplink
        self.switch = Switch(nvfs, uplink is not None)
        self.log: list[str] = []
        self.stats_uplink = {"rx": 0, "tx": 0, "runts": 0, "too_big": 0, "tx_errors": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ attach
    def attach(self, machine) -> None:
        super().attach(machine)
        self.iommu = iommu_for(machine)
        self.iommu.devices.append(self)
        self.mem = machine.mem.view
        self._mfence = machine.mfence
        for vf in self.vfs:
            machine.register_mmio(vf.page, self)
            vf.efd = machine.add_ioeventfd(machine.device_page_gpa(vf.page) + abi.NIC_DOORBELL)
        bi = abi.BOOTINFO_PHYS + abi.BOOTINFO_DEVTAB        # discovery (init reads it)
        count = _U32.unpack_from(self.mem, bi)[0]
        if count < abi.DEVTAB_MAX:
            self.mem[bi + 8 + count * abi.DEVTAB_ENTRY:bi + 8 + (count + 1) * abi.DEVTAB_ENTRY] = \
                struct.pack("<IIIIII6s2x", abi.DEVT_NIC, abi.DEV_NIC_VF0, len(self.vfs),
                            self.ip, self.gateway, self.prefix, mac_of(0))
            _U32.pack_into(self.mem, bi, count + 1)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [device_thread(lambda vf=vf: self._tx_loop(vf), f"nic-vf{vf.index}")
                         for vf in self.vfs]
        if self.uplink is not None:
            self._threads.append(device_thread(self._uplink_loop, "nic-uplink"))
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
        self.machine.stats["nic"] = self.stats()
        self.machine.stats["iommu_faults"] = self.iommu.fault_count

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.close()

    def stats(self) -> dict:
        """Totals over the VFs, the switch and the uplink (for benchmarks: packets and
        doorbells, i.e. exits, give exits per packet)."""
        tot: dict = {}
        for vf in self.vfs:
            for k, v in vf.stats.items():
                tot[k] = tot.get(k, 0) + v
        tot["switch"] = dict(self.switch.stats)
        tot["uplink"] = dict(self.stats_uplink)
        tot["per_vf"] = [dict(vf.stats) for vf in self.vfs]
        return tot

    def _note(self, msg: str) -> None:
        self.log.append(msg)
        del self.log[:-200]

    # ------------------------------------------------------------------ registers
    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        i = page - abi.DEV_NIC_VF0
        if not 0 <= i < len(self.vfs):
            return
        vf = self.vfs[i]
        if offset == abi.NIC_DOORBELL:          # no ioeventfd on this host
            if vf.efd is not None:
                os.eventfd_write(vf.efd, 1)
        elif offset == abi.NIC_ENABLE:
            self.enable(vf, int.from_bytes(bytes(data).ljust(8, b"\0")[:8], "little"))
        elif offset == abi.NIC_DISABLE:
            with vf.lock:
                self._unbind(vf, "disabled by its driver")
        else:
            vf.stats["errors"] += 1

    # ------------------------------------------------------------------ binding
    def _status_pa(self, root: int, va: int) -> int | None:
        pa = self.iommu.check_page(root, va & ~(abi.PAGE - 1), abi.IOMMU_W)
        return None if pa < 0 or va & (abi.PAGE - 1) else pa

    def enable(self, vf: VF, status_va: int) -> bool:
        """Bind the VF to the unique address space that maps its register page at the VA
        its status page names (the disk's rule), then take the ring setup from that page."""
        with vf.lock:
            self._unbind(vf, None)
            frame = vf.frame_pa

            def probe(root):
                spa = self._status_pa(root, status_va)
                if spa is None:
                    return False
                va = _U64.unpack_from(self.mem, spa + abi.NS_SETUP_VF_VA)[0]
                return self.iommu.holds(root, va & ~(abi.PAGE - 1), frame)

            owners = self.iommu.find_owner(frame, probe)
            if len(owners) != 1:
                self._note(f"vf {vf.index}: enable refused: {len(owners)} address spaces "
                           f"match (status page {status_va:#x})")
                return False
            root = owners[0]
            spa = self._status_pa(root, status_va)
            m = self.mem
            vf_va, tx, rx = struct.unpack_from("<QQQ", m, spa + abi.NS_SETUP_VF_VA)
            qsize = _U32.unpack_from(m, spa + abi.NS_SETUP_QSIZE)[0]
            fva = _U64.unpack_from(m, spa + abi.NS_SETUP_FAULT_VA)[0]
            fn = _U32.unpack_from(m, spa + abi.NS_SETUP_FAULT_N)[0]
            if qsize < 2 or qsize > abi.NIC_MAX_QSIZE or qsize & (qsize - 1) or \
                    tx & (abi.NDESC_SIZE - 1) or rx & (abi.NDESC_SIZE - 1) or \
                    fva & (abi.FAULT_REC - 1):      # aligned: no entry crosses a page
                _put(m, spa + abi.NS_STATE, _U32, abi.DSTATE_UNBOUND)
                self._note(f"vf {vf.index}: enable refused: bad ring setup (qsize {qsize})")
                return False
            vf.root, vf.vf_va, vf.status_va = root, vf_va & ~(abi.PAGE - 1), status_va
            vf.tx_va, vf.rx_va, vf.qsize = tx, rx, qsize
            vf.fault_va, vf.fault_n = fva, min(fn, 1 << 16)
            vf.tx_head = vf.rx_head = vf.fault_seq = 0
            # the device's part of the status page: counters zero, identity, config
            m[spa:spa + 256] = bytes(256)
            _put(m, spa + abi.NS_STATE, _U32, abi.DSTATE_READY)
            _put(m, spa + abi.NS_VF, _U32, vf.index)
            m[spa + abi.NS_MAC:spa + abi.NS_MAC + 6] = vf.mac
            _put(m, spa + abi.NS_IP, struct.Struct("<IIII"), self.ip, self.gateway,
                 self.prefix, abi.NIC_MTU_FRAME)
            vf.status_pa = spa
            vf.ready = True
            self._note(f"vf {vf.index}: bound to root {root:#x} ({mac_str(vf.mac)}, "
                       f"{qsize} descriptors per ring)")
            return True

    def _unbind(self, vf: VF, why: str | None) -> None:
        if vf.ready and why:
            self._note(f"vf {vf.index}: unbound from root {vf.root:#x}: {why}")
        vf.ready = False
        vf.root = 0
        vf.status_pa = None

    def _live(self, vf: VF) -> int | None:
        """Under vf.lock: the status page's pa if the binding still holds (the owner
        still maps the register page and the status page), else unbind and None."""
        if not vf.ready:
            return None
        io = self.iommu
        if not io.holds(vf.root, vf.vf_va, vf.frame_pa):
            self._unbind(vf, "the owner no longer holds the register page")
            return None
        spa = io.check_page(vf.root, vf.status_va, abi.IOMMU_W)
        if spa < 0:
            self._fault(vf, None, io.record(vf.index, vf.status_va, abi.IOMMU_W, -spa, vf.root))
            self._unbind(vf, "status page unreachable")
            return None
        vf.status_pa = spa
        return spa

    # ------------------------------------------------------------------ TX (VF thread)
    def _tx_loop(self, vf: VF):
        while not self._stop.is_set():
            try:
                self._tx_step(vf)
            except Exception as exc:    # a bug must not kill the VF silently: unbind, log
                vf.stats["errors"] += 1
                with vf.lock:
                    self._unbind(vf, f"internal error: {exc!r}")
                self._stop.wait(0.01)

    def _tx_step(self, vf: VF):
        """One round: a batch, or poll briefly, then sleep until the doorbell."""
        if self._tx_batch(vf):
            return
        spa = vf.status_pa if vf.ready else None
        if spa is not None:
            t_end = time.perf_counter() + SPIN_S        # a short poll: no doorbell
            while time.perf_counter() < t_end and not self._tx_pending(vf, spa):
                pass
            vf.sleeps = vf.sleeps % MASK32 + 1     # never 0: 0 means awake
            if self._tx_pending(vf, spa) or not self._set_waiting(vf, spa, vf.sleeps):
                return
            self._mfence()                  # waiting before re-reading the tail
            if self._tx_pending(vf, spa):
                self._set_waiting(vf, spa, 0)
                return
        self._wait(vf)
        if spa is not None:
            self._set_waiting(vf, spa, 0)

    def _tx_pending(self, vf: VF, spa: int) -> bool:
        return _U32.unpack_from(self.mem, spa + abi.NS_TX_TAIL)[0] != vf.tx_head

    def _set_waiting(self, vf: VF, spa: int, value: int) -> bool:
        with vf.lock:
            if self._live(vf) != spa:
                return False
            _put(self.mem, spa + abi.NS_WAITING, _U32, value)
            return True

    def _wait(self, vf: VF):
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

    def _tx_batch(self, vf: VF) -> bool:
        """Send everything the owner queued: True if anything was done."""
        out: dict[int, list[bytes]] = {}
        with vf.lock:
            spa = self._live(vf)
            if spa is None:
                return False
            m, io = self.mem, self.iommu
            tail = _U32.unpack_from(m, spa + abi.NS_TX_TAIL)[0]
            n = (tail - vf.tx_head) & MASK32
            if n == 0:
                return False
            vf.stats["batches"] += 1
            if n > vf.qsize:                    # a tail beyond the ring: refuse the batch
                vf.tx_head = tail
                _put(m, spa + abi.NS_TX_HEAD, _U32, tail)
                self._error(vf, spa)
                return True
            cache: dict = {}                    # the IOTLB lives for one batch
            sent = 0
            while vf.tx_head != tail:
                va = vf.tx_va + (vf.tx_head % vf.qsize) * abi.NDESC_SIZE
                try:
                    (dpa, _), = io.translate(vf.root, va, abi.NDESC_SIZE, abi.IOMMU_W,
                                             vf.index, cache)
                except IommuFault as f:
                    self._fault(vf, spa, f.record)
                    self._unbind(vf, "TX ring unreachable")
                    break
                buf, ln, _bl, _st = _DESC.unpack_from(m, dpa)
                status = self._tx_one(vf, spa, buf, ln, cache, out)
                sent += status == abi.NST_OK
                _put(m, dpa + abi.NDESC_STATUS, _U16, status | abi.NST_DONE)
                vf.tx_head = (vf.tx_head + 1) & MASK32
            if vf.ready:
                _put(m, spa + abi.NS_TX_HEAD, _U32, vf.tx_head)
                _put(m, spa + abi.NS_TX_PACKETS, _U64,
                     _U64.unpack_from(m, spa + abi.NS_TX_PACKETS)[0] + sent)
        for port, frames in out.items():        # outside our lock: no lock-order cycles
            self._deliver(port, frames)
        return True

    def _tx_one(self, vf: VF, spa: int, buf: int, ln: int, cache: dict, out: dict) -> int:
        if not abi.NIC_MIN_FRAME <= ln <= abi.NIC_MTU_FRAME:
            self._error(vf, spa)
            return abi.NST_TOO_LONG
        try:
            runs = self.iommu.translate(vf.root, buf, ln, abi.IOMMU_R, vf.index, cache)
        except IommuFault as f:
            self._fault(vf, spa, f.record)
            return abi.NST_IOMMU_FAULT
        m = self.mem
        frame = b"".join(bytes(m[pa:pa + k]) for pa, k in runs)
        if frame[6:12] != vf.mac:
            vf.stats["spoofed"] += 1
            self._bump(spa + abi.NS_SPOOFED)
            self.switch.stats["spoofed"] += 1
            return abi.NST_SPOOFED
        vf.stats["tx_packets"] += 1
        vf.stats["tx_bytes"] += ln
        for port in self.switch.route(frame, vf.index):
            out.setdefault(port, []).append(frame)
        return abi.NST_OK

    # ------------------------------------------------------------------ RX (any thread)
    def _deliver(self, port: int, frames: list[bytes]) -> None:
        if port == UPLINK:
            for f in frames:
                try:
                    self.uplink.send(f)
                    self.stats_uplink["tx"] += 1
                except OSError:
                    self.stats_uplink["tx_errors"] += 1
            return
        vf = self.vfs[port]
        with vf.lock:
            spa = self._live(vf)
            if spa is None:
                vf.stats["rx_unbound"] += len(frames)
                return
            m, io = self.mem, self.iommu
            cache: dict = {}
            got = dropped = 0
            for frame in frames:
                tail = _U32.unpack_from(m, spa + abi.NS_RX_TAIL)[0]
                avail = (tail - vf.rx_head) & MASK32
                if avail > vf.qsize:            # the driver claims more buffers than slots
                    self._error(vf, spa)
                    dropped += 1
                    continue
                if avail == 0:                  # no buffer posted: a NIC drops
                    vf.stats["rx_no_buffer"] += 1
                    dropped += 1
                    continue
                va = vf.rx_va + (vf.rx_head % vf.qsize) * abi.NDESC_SIZE
                try:
                    (dpa, _), = io.translate(vf.root, va, abi.NDESC_SIZE, abi.IOMMU_W,
                                             vf.index, cache)
                except IommuFault as f:
                    self._fault(vf, spa, f.record)
                    self._unbind(vf, "RX ring unreachable")
                    return
                buf, _ln, buflen, _st = _DESC.unpack_from(m, dpa)
                if len(frame) > buflen:         # too big for the buffer: drop the frame
                    vf.stats["rx_too_big"] += 1
                    dropped += 1
                    continue
                status, n = abi.NST_OK, len(frame)
                try:
                    at = 0
                    for pa, k in io.translate(vf.root, buf, n, abi.IOMMU_W, vf.index, cache):
                        m[pa:pa + k] = frame[at:at + k]
                        at += k
                except IommuFault as f:         # the buffer is not ours: consume, report
                    self._fault(vf, spa, f.record)
                    status, n = abi.NST_IOMMU_FAULT, 0
                    dropped += 1
                _put(m, dpa + abi.NDESC_LEN, _U16, n)
                _put(m, dpa + abi.NDESC_STATUS, _U16, status | abi.NST_DONE)
                vf.rx_head = (vf.rx_head + 1) & MASK32
                if status == abi.NST_OK:
                    got += 1
                    vf.stats["rx_bytes"] += n
            _put(m, spa + abi.NS_RX_HEAD, _U32, vf.rx_head)   # publishes the descriptors
            vf.stats["rx_packets"] += got
            if got:
                self._bump(spa + abi.NS_RX_PACKETS, got)
            if dropped:
                self._bump(spa + abi.NS_RX_DROPS, dropped)
            if got:
                self._interrupt(vf, spa)

    def _interrupt(self, vf: VF, spa: int) -> None:
        """A driver about to halt sets NS_IRQ: raise the VF's interrupt (irqfd -> MSI ->
        INTERRUPT upcall; no VM exit).  A busy driver leaves it 0 and costs nothing.
        The fence: our NS_RX_HEAD store before the NS_IRQ load, against the driver's
        NS_IRQ store, mfence, NS_RX_HEAD load -- else both could miss the other."""
        self._mfence()
        if _U32.unpack_from(self.mem, spa + abi.NS_IRQ)[0]:
            vf.stats["interrupts"] += 1
            raise_irq = getattr(self.machine, "raise_irq", None)
            if raise_irq:
                raise_irq(vf.page)

    # ------------------------------------------------------------------ uplink thread
    def _uplink_loop(self):
        up = self.uplink
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([up.fileno()], [], [], WAIT_TIMEOUT)
            except (OSError, ValueError):
                return
            if r:
                self.from_uplink(up.recv_batch(64))     # drain what is there, forward it

    def from_uplink(self, frames: list[bytes]) -> None:
        """Frames that arrived on the uplink: check, switch, deliver (one batch)."""
        out: dict[int, list[bytes]] = {}
        for frame in frames:
            self.stats_uplink["rx"] += 1
            if len(frame) < abi.NIC_MIN_FRAME:
                self.stats_uplink["runts"] += 1
                continue
            if len(frame) > abi.NIC_MTU_FRAME:
                self.stats_uplink["too_big"] += 1
                continue
            for port in self.switch.route(frame, UPLINK):
                out.setdefault(port, []).append(frame)
        for port, frames in out.items():
            try:
                self._deliver(port, frames)
            except Exception as exc:        # never lose the uplink over one delivery
                self._note(f"uplink: delivery to port {port} failed: {exc!r}")

    # ------------------------------------------------------------------ errors, faults
    def _bump(self, pa: int, n: int = 1):
        _put(self.mem, pa, _U64, _U64.unpack_from(self.mem, pa)[0] + n)

    def _error(self, vf: VF, spa: int) -> None:
        vf.stats["errors"] += 1
        self._bump(spa + abi.NS_ERRORS)

    def _fault(self, vf: VF, spa: int | None, rec) -> None:
        """Deliver an IOMMU fault to the owner: a record in its fault ring, NS_FAULTS,
        and the interrupt if it waits (the VMM's log has the record already)."""
        vf.stats["faults"] += 1
        if spa is None:
            return
        if vf.fault_n:
            try:
                (pa, _), = self.iommu.translate(
                    vf.root, vf.fault_va + (vf.fault_seq % vf.fault_n) * abi.FAULT_REC,
                    abi.FAULT_REC, abi.IOMMU_W, vf.index)
                self.mem[pa:pa + abi.FAULT_REC] = rec.pack()
                vf.fault_seq += 1
            except IommuFault:
                pass                            # the ring itself is bad: the count says it
        self._bump(spa + abi.NS_FAULTS)
        self._interrupt(vf, spa)

    # ------------------------------------------------------------------ reports
    def report(self) -> str:
        up = self.uplink.describe() if self.uplink is not None else "no uplink"
        ip = ipaddress.IPv4Address(self.ip)
        lines = [f"nic: {len(self.vfs)} VFs, {up}, guest {ip}/{self.prefix} gateway "
                 f"{ipaddress.IPv4Address(self.gateway)}; switch "
                 + ", ".join(f"{k} {v}" for k, v in self.switch.stats.items())
                 + "; uplink " + ", ".join(f"{k} {v}" for k, v in self.stats_uplink.items())]
        for vf in self.vfs:
            who = f"root {vf.root:#x}" if vf.ready else "unbound"
            lines.append(f"  vf {vf.index} {mac_str(vf.mac)}: {who}, "
                         + ", ".join(f"{k} {v}" for k, v in vf.stats.items()))
        return "\n".join(lines + self.log[-10:])


def stats_line(s: dict) -> str:
    """One line for `--boot-stats` from machine.stats["nic"] (Nic.stats())."""
    pk = s.get("tx_packets", 0)
    up, sw = s.get("uplink", {}), s.get("switch", {})
    return (f"xomb-vmm: nic tx {pk} rx {s.get('rx_packets', 0)} frames, {s.get('doorbells', 0)} "
            f"doorbells ({s.get('doorbells', 0) / max(pk, 1):.3f} exits per frame sent), "
            f"{s.get('interrupts', 0)} interrupts, rx drops {s.get('rx_no_buffer', 0)} no buffer "
            f"{s.get('rx_unbound', 0)} unbound "
            f"{s.get('rx_too_big', 0)} too big, spoofed {s.get('spoofed', 0)}, errors "
            f"{s.get('errors', 0)}, faults {s.get('faults', 0)}; switch "
            + " ".join(f"{k} {v}" for k, v in sw.items())
            + "; uplink " + " ".join(f"{k} {v}" for k, v in up.items()))
