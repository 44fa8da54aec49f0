"""The self-virtualizing NIC: one physical function, N virtual functions, an embedded switch.

Each VF is an Ethernet port with its own MAC (``NIC_MAC_BASE + i``) and a TX and an RX
descriptor ring that live in its *owner's* memory, named by the owner's virtual addresses
(shared virtual addressing through devices/iommu.py, exactly as the disk).  VF i is device
page ``DEV_NIC_VF0 + i``; its registers (NIC_DOORBELL = VF_DOORBELL: "my tx_tail moved"),
its binding, the doorbell protocol, faults and interrupts are every VF's
(devices/vf.py).

The embedded switch (:class:`Switch`) forwards by destination MAC: to a VF, or
broadcast/multicast to every other port, unknown unicast to the uplink.  A VF may only
send frames whose source MAC is its own (else: dropped, counted).  The uplink
(:mod:`devices.uplink`) is a TAP device, a UDP socket tunnel, or nothing.

Threads: one per VF (its TX ring: drains the whole ring per wake-up, polls SPIN_S after
it empties, then sets NS_WAITING and sleeps on the doorbell's eventfd) and one for the
uplink.  RX needs no thread: whoever forwards a frame writes it into the destination's
RX ring under that VF's lock.  Layouts: vmm/abi.py, docs/DEVICES.md.

The per-frame work is done in C when devices/nic_build.py could be built (and
XOMB_NIC_PYTHON is not 1): each VF thread then runs its loop (batches and doorbell
sleeps) in C (devices/nic_native.py), which handles the common case with the GIL released
and leaves
anything unusual -- faults, malformed descriptors, spoofing, a binding that no longer
holds -- to the Python code here, the reference.
"""
from __future__ import annotations

import ipaddress
import select
import struct
import threading

from vmm import abi
from devices.base import device_thread
from devices import nic_native
from devices.iommu import IommuFault
from devices.vf import (MASK32, SPIN_S, U32 as _U32, U64 as _U64, WAIT_TIMEOUT,
                        VfDevice, VirtualFunction, put as _put)

_U16 = struct.Struct("<H")
_DESC = struct.Struct("<QHHH")          # buf len buflen status
UPLINK = -1                             # the switch's port number for the uplink
# NS_WAITING is 0 while the TX worker is awake, else the sequence number of its current
# sleep: a driver rings once per sleep (it remembers the number it rang for), so a burst
# of sends while the worker is waking up costs one exit, not one per frame.
BROADCAST = b"\xff" * 6


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
class VF(VirtualFunction):
    """One port: its MAC and its two rings."""

    def __init__(self, nic: "Nic", index: int):
        super().__init__(nic, index, {
            "tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
            "rx_no_buffer": 0, "rx_unbound": 0, "rx_too_big": 0, "spoofed": 0})
        self.mac = mac_of(index)
        self.tx_va = self.rx_va = self.qsize = 0
        self.tx_head = self.rx_head = 0


def _cfield(name: str) -> property:
    """A binding field kept in the C struct nic_vf (read and written under vf.lock)."""
    return property(lambda self: getattr(self._c, name),
                    lambda self, v: setattr(self._c, name, int(v)))


class NativeVF(VF):
    """A VF whose binding lives in C (devices/nic_build.py), so that the native data
    path reads it; the lock is the C mutex.  Python code sees the same attributes."""

    ready, root, vf_va, status_va = (_cfield("ready"), _cfield("root"), _cfield("vf_va"),
                                     _cfield("status_va"))
    tx_va, rx_va, qsize = _cfield("tx_va"), _cfield("rx_va"), _cfield("qsize")
    tx_head, rx_head, sleeps = _cfield("tx_head"), _cfield("rx_head"), _cfield("sleeps")

    def __init__(self, nic: "Nic", index: int, native: nic_native.Native):
        self._c = native.vf[index]
        super().__init__(nic, index)
        self.lock = nic_native.NativeLock(native, index)
        self.stats["native_tx"] = self.stats["native_rx"] = 0


# C counters added into the Python dicts by Nic.sync_native()
_VF_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "rx_no_buffer",
                "rx_too_big", "batches", "interrupts", "native_tx", "native_rx",
                "doorbells")
_SWITCH_COUNTERS = ("forwarded", "flooded", "to_uplink", "no_route")
_UPLINK_COUNTERS = {"up_tx": "tx", "up_tx_errors": "tx_errors", "up_rx": "rx",
                    "up_runts": "runts", "up_too_big": "too_big"}


class Nic(VfDevice):
    name = "nic"
    FIRST_PAGE = abi.DEV_NIC_VF0
    IRQ_WORD = abi.NS_IRQ

    def __init__(self, nvfs: int = abi.NIC_MAX_VFS, uplink=None,
                 guest_ip: str = "10.0.2.15/24", gateway: str | None = None):
        super().__init__()
        if not 1 <= nvfs <= abi.NIC_MAX_VFS:
            raise ValueError(f"--nic-vfs {nvfs}: between 1 and {abi.NIC_MAX_VFS}")
        self.ip, self.gateway, self.prefix = parse_guest_ip(guest_ip, gateway)
        mod = nic_native.load()
        self.native = nic_native.Native(mod, nvfs) if mod is not None else None
        if self.native is None:
            self.vfs = [VF(self, i) for i in range(nvfs)]
        else:
            self.vfs = [NativeVF(self, i, self.native) for i in range(nvfs)]
        if self.native is None and nic_native.why_not != "XOMB_NIC_PYTHON=1":
            self.note(f"nic: Python data path: {nic_native.why_not}")   # say why, once
        self.uplink = uplink
        self.switch = Switch(nvfs, uplink is not None)
        self.stats_uplink = {"rx": 0, "tx": 0, "runts": 0, "too_big": 0, "tx_errors": 0}

    def attach(self, machine) -> None:
        super().attach(machine)
        nat = self.native
        if nat is None:
            return
        nat.attach(machine.mem.host_addr, machine.ram_bytes, self.iommu.nframes,
                   machine.mem)
        nat.n.has_uplink = self.uplink is not None
        from devices.uplink import TapUplink
        if isinstance(self.uplink, TapUplink):          # else Python sends (UDP tunnel)
            nat.n.tap_fd = self.uplink.fileno()
        irqfds = getattr(machine, "_irqfds", {})
        for vf in self.vfs:
            vf._c.frame_pa = vf.frame_pa
            vf._c.irqfd = irqfds.get(vf.page, -1)

    def sync_native(self) -> None:
        """Add the C counters into the Python dicts (and zero them)."""
        nat = self.native
        if nat is None:
            return
        for vf in self.vfs:
            with vf.lock:
                for k in _VF_COUNTERS:
                    vf.stats[k] += getattr(vf._c, k)
                    setattr(vf._c, k, 0)
        n, ffi, take = nat.n, nat.ffi, nat.lib.nic_take
        for k in _SWITCH_COUNTERS:
            self.switch.stats[k] += take(ffi.addressof(n, k))
        for k, name in _UPLINK_COUNTERS.items():
            self.stats_uplink[name] += take(ffi.addressof(n, k))

    def devtab_entry(self) -> bytes:
        return struct.pack("<IIIIII6s2x", abi.DEVT_NIC, abi.DEV_NIC_VF0, len(self.vfs),
                           self.ip, self.gateway, self.prefix, mac_of(0))

    def threads(self) -> list[threading.Thread]:
        out = [device_thread(lambda vf=vf: self._tx_loop(vf), f"nic-vf{vf.index}")
               for vf in self.vfs]
        if self.uplink is not None:
            out.append(device_thread(self._uplink_loop, "nic-uplink"))
        return out

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.close()

    def stats(self) -> dict:
        """Totals over the VFs, the switch and the uplink (for benchmarks: packets and
        doorbells, i.e. exits, give exits per packet)."""
        self.sync_native()
        tot = super().stats()
        tot["switch"] = dict(self.switch.stats)
        tot["uplink"] = dict(self.stats_uplink)
        tot["per_vf"] = [dict(vf.stats) for vf in self.vfs]
        return tot

    # ------------------------------------------------------------------ binding
    def setup(self, vf: VF, spa: int) -> str | None:
        """The rings from the status page (VfDevice.enable found the owner); the
        device's part of the page: counters zero, identity, the guest's address."""
        m = self.mem
        tx, rx = struct.unpack_from("<QQ", m, spa + abi.NS_SETUP_TX_VA)
        qsize = _U32.unpack_from(m, spa + abi.NS_SETUP_QSIZE)[0]
        if qsize < 2 or qsize > abi.NIC_MAX_QSIZE or qsize & (qsize - 1) or \
                tx & (abi.NDESC_SIZE - 1) or rx & (abi.NDESC_SIZE - 1):
            return f"bad ring setup (qsize {qsize})"
        vf.tx_va, vf.rx_va, vf.qsize = tx, rx, qsize
        vf.tx_head = vf.rx_head = 0
        m[spa:spa + 256] = bytes(256)
        _put(m, spa + abi.NS_VF, _U32, vf.index)
        m[spa + abi.NS_MAC:spa + abi.NS_MAC + 6] = vf.mac
        _put(m, spa + abi.NS_IP, struct.Struct("<IIII"), self.ip, self.gateway,
             self.prefix, abi.NIC_MTU_FRAME)
        return None

    def describe_binding(self, vf: VF) -> str:
        return f", {mac_str(vf.mac)}, {vf.qsize} descriptors per ring"

    # ------------------------------------------------------------------ TX (VF thread)
    def _tx_loop(self, vf: VF):
        while not self._stop.is_set():
            try:
                self._tx_step(vf)
            except Exception as exc:    # a bug must not kill the VF silently: unbind, log
                vf.stats["errors"] += 1
                with vf.lock:
                    self.unbind(vf, f"internal error: {exc!r}")
                self._stop.wait(0.01)

    def start(self) -> None:
        if self.native is not None:
            self.native.n.stop = 0
        super().start()

    def stop(self) -> None:
        if self.native is not None:
            self.native.n.stop = 1              # the native workers see it when woken
        super().stop()

    def _tx_step(self, vf: VF):
        """One round: a batch, or poll briefly, then sleep until the doorbell.  With
        the native path, batches and sleeps run in C until something needs Python."""
        nat = self.native
        if nat is not None and vf.efd is not None:
            s = nat.stage(f"vf{vf.index}")
            r = nat.lib.nic_worker(nat.n, vf.index, s, vf.efd, int(SPIN_S * 1e9),
                                   int(WAIT_TIMEOUT * 1000))    # the GIL is released
            self._native_after(s)
            if r & nat.lib.NIC_FALLBACK:
                self._tx_batch_py(vf)
            elif r & nat.lib.NIC_IDLE:
                self.idle(vf, lambda spa: self._tx_pending(vf, spa))
            return
        if self._tx_batch(vf):
            return
        self.idle(vf, lambda spa: self._tx_pending(vf, spa))

    def _tx_pending(self, vf: VF, spa: int) -> bool:
        return _U32.unpack_from(self.mem, spa + abi.NS_TX_TAIL)[0] != vf.tx_head

    def _tx_batch(self, vf: VF) -> bool:
        """Send everything the owner queued: True if anything was done.  The native
        path does the common case; whatever it leaves, Python does (the reference)."""
        nat = self.native
        if nat is None:
            return self._tx_batch_py(vf)
        s = nat.stage(f"vf{vf.index}")
        r = nat.lib.nic_tx(nat.n, vf.index, s)      # the GIL is released in there
        self._native_after(s)
        if r & nat.lib.NIC_FALLBACK:
            return self._tx_batch_py(vf) or bool(r & nat.lib.NIC_DID)
        return bool(r & nat.lib.NIC_DID)

    def _native_after(self, s) -> None:
        """What a native call left to Python: frames to deliver, interrupts to raise
        where there is no irqfd."""
        run: list[bytes] = []
        last = None
        for port, frame in self.native.leftovers(s) + [(None, b"")]:
            if port != last and run:        # consecutive frames for a port: one delivery
                self._deliver(last, run)
                run = []
            last = port
            run.append(frame)
        if s.irq_mask:
            raise_irq = getattr(self.machine, "raise_irq", None)
            for vf in self.vfs:
                if s.irq_mask & (1 << vf.index):
                    vf.stats["interrupts"] += 1
                    if raise_irq:
                        raise_irq(vf.page)

    def _tx_batch_py(self, vf: VF) -> bool:
        out: dict[int, list[bytes]] = {}
        with vf.lock:
            spa = self.live(vf)
            if spa is None:
                return False
            m = self.mem
            tail = _U32.unpack_from(m, spa + abi.NS_TX_TAIL)[0]
            n = (tail - vf.tx_head) & MASK32
            if n == 0:
                return False
            vf.stats["batches"] += 1
            if n > vf.qsize:                    # a tail beyond the ring: refuse the batch
                vf.tx_head = tail
                _put(m, spa + abi.NS_TX_HEAD, _U32, tail)
                self.error(vf, spa)
                return True
            cache: dict = {}                    # the IOTLB lives for one batch
            sent = 0
            while vf.tx_head != tail:
                dpa = self.queue_entry(vf, spa, vf.tx_va, vf.tx_head, abi.NDESC_SIZE,
                                       abi.IOMMU_W, cache, "TX ring")
                if dpa is None:
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
            self.error(vf, spa)
            return abi.NST_TOO_LONG
        try:
            runs = self.iommu.translate(vf.root, buf, ln, abi.IOMMU_R, vf.index, cache)
        except IommuFault as f:
            self.fault(vf, spa, f.record, cache)
            return abi.NST_IOMMU_FAULT
        m = self.mem
        frame = b"".join(bytes(m[pa:pa + k]) for pa, k in runs)
        if frame[6:12] != vf.mac:
            vf.stats["spoofed"] += 1
            self.bump(spa + abi.NS_SPOOFED)
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
            spa = self.live(vf)
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
                    self.error(vf, spa)
                    dropped += 1
                    continue
                if avail == 0:                  # no buffer posted: a NIC drops
                    vf.stats["rx_no_buffer"] += 1
                    dropped += 1
                    continue
                dpa = self.queue_entry(vf, spa, vf.rx_va, vf.rx_head, abi.NDESC_SIZE,
                                       abi.IOMMU_W, cache, "RX ring")
                if dpa is None:
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
                    self.fault(vf, spa, f.record, cache)
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
                self.bump(spa + abi.NS_RX_PACKETS, got)
            if dropped:
                self.bump(spa + abi.NS_RX_DROPS, dropped)
            if got:
                self.interrupt(vf, spa)

    # ------------------------------------------------------------------ uplink thread
    def _uplink_loop(self):
        up = self.uplink
        nat = self.native
        if nat is not None and nat.n.tap_fd >= 0:      # a TAP: read and switch in C
            s = nat.stage("uplink")
            while not self._stop.is_set():
                if nat.lib.nic_uplink_rx(nat.n, s, int(WAIT_TIMEOUT * 1000)) < 0:
                    return
                try:
                    self._native_after(s)
                except Exception as exc:    # never lose the uplink over one delivery
                    self.note(f"uplink: delivery failed: {exc!r}")
            return
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
                self.note(f"uplink: delivery to port {port} failed: {exc!r}")

    # ------------------------------------------------------------------ reports
    def report(self) -> str:
        self.sync_native()
        up = self.uplink.describe() if self.uplink is not None else "no uplink"
        ip = ipaddress.IPv4Address(self.ip)
        head = (f"nic: {len(self.vfs)} VFs, {up}, guest {ip}/{self.prefix} gateway "
                f"{ipaddress.IPv4Address(self.gateway)}; switch "
                + ", ".join(f"{k} {v}" for k, v in self.switch.stats.items())
                + "; uplink " + ", ".join(f"{k} {v}" for k, v in self.stats_uplink.items()))
        return self.report_vfs(head, lambda vf: f" {mac_str(vf.mac)}:")


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
            + "; uplink " + " ".join(f"{k} {v}" for k, v in up.items())
            + ("; native tx {} rx {}".format(s["native_tx"], s["native_rx"])
               if "native_tx" in s else "; native off"))
