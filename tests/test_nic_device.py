"""devices/nic.py without KVM: a hand-built world of page tables (as tests/test_iommu_disk.py).

One child holds VF 0 and VF 1 and has, for each, a status page, a TX and an RX ring, and
buffers; plus a read-only page and a supervisor-only page.  The "driver" is Python
writing the child's memory and calling the device's batch directly (no threads)."""
from __future__ import annotations

import struct
import types

import pytest

from vmm import abi
from vmm.memory import GuestMemory
from vmm.pagetable import FrameAllocator, PageTables, PhysMem
from devices.nic import Nic, UPLINK, mac_of

RAM = 16 << 20
P, W, U, NX, PCD = abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_NX, abi.PTE_PCD
PAGE = abi.PAGE
INIT_ROOT, CHILD_ROOT = 0x600000, 0x601000
Q = 8
RO, SUP = 0x3100_0000, 0x3200_0000


def base(vf):                       # status, faults, TX ring, RX ring, TX bufs, RX bufs
    return 0x2000_0000 + vf * 0x10_0000


class FakeUplink:
    def __init__(self):
        self.sent = []

    def send(self, f):
        self.sent.append(f)

    def describe(self):
        return "fake uplink"


class World:
    def __init__(self):
        pm = PhysMem()
        alloc = FrameAllocator(0x700000, 0x800000)
        data = FrameAllocator(0x900000, RAM)
        self.init = PageTables(pm, alloc, root=INIT_ROOT)
        self.child = PageTables(pm, alloc, root=CHILD_ROOT)
        pm.write_u64(INIT_ROOT + (abi.PML4_HANDLE0 + 2) * 8, CHILD_ROOT | abi.PTE_SLOT)
        self.pa, frames = {}, {}
        vas = [base(vf) + i * PAGE for vf in (0, 1) for i in range(6)] + [RO, SUP]
        for va in vas:
            pa = self.pa[va] = data.alloc()
            frames[pa >> 12] = abi.FT_DATA
            self.child.map(va, pa, {RO: U | NX, SUP: W | NX}.get(va, U | W | NX))
        for vf in (0, 1):
            self.child.map(abi.NIC_VF_VA + vf * PAGE, RAM + (abi.DEV_NIC_VF0 + vf) * PAGE,
                           U | W | NX | PCD)
        for r in (INIT_ROOT, CHILD_ROOT):
            frames[r >> 12] = abi.FT_ROOT
        for t in self.init.tables + self.child.tables:
            frames[t >> 12] = abi.FT_TABLE
        ram = self.ram = bytearray(RAM)
        for pa, d in pm.runs():
            ram[pa:pa + len(d)] = d
        for pfn, t in frames.items():
            struct.pack_into("<Q", ram, abi.FRAMES_PHYS + pfn * 8, abi.frame_entry(t, 1))
        for i in range(abi.DEV_PAGES):
            struct.pack_into("<Q", ram, abi.FRAMES_PHYS + (RAM // PAGE + i) * 8,
                             abi.frame_entry(abi.FT_DEVICE, 1))
        self.irqs = []
        self.machine = types.SimpleNamespace(
            mem=GuestMemory.from_buffer(ram), ram_bytes=RAM, stats={},
            boot=types.SimpleNamespace(bootinfo=types.SimpleNamespace(root_phys=INIT_ROOT)),
            register_mmio=lambda i, d: None, add_ioeventfd=lambda gpa, n=None: None,
            device_page_gpa=lambda i: RAM + i * PAGE, mfence=lambda: None,
            raise_irq=self.irqs.append)
        self.up = FakeUplink()
        self.nic = Nic(2, self.up)
        self.nic.attach(self.machine)
        self.tx_tail = [0, 0]

    # -- memory of the child, by its virtual addresses --------------------------
    def st(self, vf, off, fmt="<I", value=None):
        pa = self.pa[base(vf)] + off
        if value is None:
            return struct.unpack_from(fmt, self.ram, pa)[0]
        struct.pack_into(fmt, self.ram, pa, value)

    def desc(self, vf, ring, i):       # ring 2 = TX, 3 = RX
        return self.pa[base(vf) + ring * PAGE] + (i % Q) * abi.NDESC_SIZE

    def enable(self, vf):
        b = base(vf)
        struct.pack_into("<QQQI", self.ram, self.pa[b] + abi.NS_SETUP_VF_VA,
                         abi.NIC_VF_VA + vf * PAGE, b + 2 * PAGE, b + 3 * PAGE, Q)
        struct.pack_into("<QI", self.ram, self.pa[b] + abi.NS_SETUP_FAULT_VA, b + PAGE, 128)
        self.nic.mmio_write(abi.DEV_NIC_VF0 + vf, abi.NIC_ENABLE, struct.pack("<Q", b))
        for i in range(Q):                 # RX buffers: 512 bytes each in page 5
            struct.pack_into("<QHH", self.ram, self.desc(vf, 3, i), b + 5 * PAGE + i * 512, 0,
                             512)
        self.st(vf, abi.NS_RX_TAIL, value=Q)
        return self.st(vf, abi.NS_STATE)

    def send(self, vf, frame: bytes, buf=None, length=None):
        """Put frame into a TX buffer, post the descriptor, run the device's batch."""
        b = base(vf)
        i = self.tx_tail[vf]
        va = b + 4 * PAGE + (i % Q) * 512
        at = self.pa[b + 4 * PAGE] + (i % Q) * 512
        self.ram[at:at + len(frame)] = frame
        struct.pack_into("<QHHH", self.ram, self.desc(vf, 2, i), va if buf is None else buf,
                         len(frame) if length is None else length, 0, 0)
        self.tx_tail[vf] += 1
        self.st(vf, abi.NS_TX_TAIL, value=self.tx_tail[vf])
        self.nic._tx_batch(self.nic.vfs[vf])
        return struct.unpack_from("<H", self.ram, self.desc(vf, 2, i) + abi.NDESC_STATUS)[0]

    def received(self, vf, i):
        buf, ln, _bl, status = struct.unpack_from("<QHHH", self.ram, self.desc(vf, 3, i))
        pa = self.pa[base(vf) + 5 * PAGE] + (buf - base(vf) - 5 * PAGE)
        return status, bytes(self.ram[pa:pa + ln])


def eth(dst, src, payload=b"p" * 46):
    return dst + src + b"\x88\xb5" + payload


def test_bind_and_the_status_page_says_who_we_are():
    w = World()
    assert w.enable(0) == abi.DSTATE_READY and w.enable(1) == abi.DSTATE_READY
    pa = w.pa[base(1)]
    assert bytes(w.ram[pa + abi.NS_MAC:pa + abi.NS_MAC + 6]) == mac_of(1)
    assert struct.unpack_from("<IIII", w.ram, pa + abi.NS_IP) == (0x0A00020F, 0x0A000201, 24,
                                                                   1514)
    devtab = abi.BOOTINFO_PHYS + abi.BOOTINFO_DEVTAB
    assert struct.unpack_from("<IIIIII6s", w.ram, devtab + 8) == (
        abi.DEVT_NIC, abi.DEV_NIC_VF0, 2, 0x0A00020F, 0x0A000201, 24, mac_of(0))


def test_frames_through_the_switch_into_the_rx_ring():
    w = World()
    w.enable(0), w.enable(1)
    f = eth(mac_of(1), mac_of(0))
    assert w.send(0, f) == abi.NST_DONE | abi.NST_OK
    assert w.st(0, abi.NS_TX_HEAD) == 1 and w.st(1, abi.NS_RX_HEAD) == 1
    assert w.received(1, 0) == (abi.NST_DONE | abi.NST_OK, f)
    w.st(1, abi.NS_IRQ, value=1)               # the receiver is about to halt: interrupt it
    w.send(0, eth(b"\xff" * 6, mac_of(0)))
    assert w.received(1, 1)[1][:6] == b"\xff" * 6 and w.irqs == [abi.DEV_NIC_VF0 + 1]
    assert len(w.up.sent) == 1                 # the broadcast also went out
    w.send(0, eth(b"\x02" + bytes(5), mac_of(0)))
    assert len(w.up.sent) == 2 and w.st(1, abi.NS_RX_HEAD) == 2   # unknown: uplink only
    w.nic.from_uplink([b"\1" * 10, eth(mac_of(0), b"\2" * 6, b"x" * 2000),
                       eth(mac_of(0), b"\2" * 6)])
    assert w.nic.stats_uplink["runts"] == 1 and w.nic.stats_uplink["too_big"] == 1
    assert w.st(0, abi.NS_RX_HEAD) == 1 and w.received(0, 0)[1][6:12] == b"\2" * 6


def test_hostile_descriptors_are_refused_and_memory_is_untouched():
    w = World()
    w.enable(0), w.enable(1)
    assert w.send(0, eth(mac_of(1), mac_of(1))) == abi.NST_DONE | abi.NST_SPOOFED
    assert w.send(0, eth(mac_of(1), mac_of(0)), length=1515) == abi.NST_DONE | abi.NST_TOO_LONG
    assert w.send(0, eth(mac_of(1), mac_of(0)), buf=SUP) == abi.NST_DONE | abi.NST_IOMMU_FAULT
    assert w.st(1, abi.NS_RX_HEAD) == 0 and w.st(0, abi.NS_FAULTS, "<Q") == 1
    # an RX descriptor pointing at the child's read-only page
    struct.pack_into("<Q", w.ram, w.desc(1, 3, 0), RO)
    w.ram[w.pa[RO]:w.pa[RO] + 64] = b"\xAA" * 64
    w.send(0, eth(mac_of(1), mac_of(0)))
    assert w.received(1, 0)[0] == abi.NST_DONE | abi.NST_IOMMU_FAULT
    assert w.ram[w.pa[RO]:w.pa[RO] + 64] == b"\xAA" * 64
    rec = struct.unpack_from("<QIIII", w.ram, w.pa[base(1) + PAGE])
    assert rec[:4] == (RO, 1, abi.IOMMU_W, abi.IOMMU_READ_ONLY)
    # a TX tail far beyond the ring: refused as a whole
    w.tx_tail[0] += Q + 3
    w.st(0, abi.NS_TX_TAIL, value=w.tx_tail[0])
    w.nic._tx_batch(w.nic.vfs[0])
    assert w.st(0, abi.NS_TX_HEAD) == w.tx_tail[0] and w.st(0, abi.NS_ERRORS, "<Q") == 2


def test_a_vf_whose_register_page_moved_away_is_never_touched_again():
    w = World()
    w.enable(0), w.enable(1)
    # unmap VF 1's register page in the child (what MAP_MOVE / RELEASE do)
    va, t = abi.NIC_VF_VA + PAGE, CHILD_ROOT
    for shift in (39, 30, 21):
        t = struct.unpack_from("<Q", w.ram, t + ((va >> shift) & 511) * 8)[0] & abi.PTE_ADDR
    struct.pack_into("<Q", w.ram, t + ((va >> 12) & 511) * 8, 0)
    before = bytes(w.ram[w.pa[base(1)]:w.pa[base(1)] + PAGE])
    w.send(0, eth(mac_of(1), mac_of(0)))
    assert not w.nic.vfs[1].ready and w.nic.vfs[1].stats["rx_unbound"] == 1
    assert bytes(w.ram[w.pa[base(1)]:w.pa[base(1)] + PAGE]) == before
    assert "no longer holds the register page" in w.nic.report()


def test_the_native_path_handles_the_common_case_and_leaves_the_rest_to_python():
    """With the C data path built, a good frame never touches Python's per-frame code;
    a spoofed one, a fault and a runt still get Python's statuses and counters."""
    from devices import nic_native
    if nic_native.load() is None:
        pytest.skip(nic_native.why_not)
    w = World()
    w.enable(0), w.enable(1)
    assert w.send(0, eth(mac_of(1), mac_of(0))) == abi.NST_DONE | abi.NST_OK
    assert w.send(0, eth(mac_of(1), mac_of(1))) == abi.NST_DONE | abi.NST_SPOOFED
    assert w.send(0, eth(mac_of(1), mac_of(0)), buf=SUP) == abi.NST_DONE | abi.NST_IOMMU_FAULT
    assert w.send(0, b"\1" * 10) == abi.NST_DONE | abi.NST_TOO_LONG
    assert w.send(0, eth(mac_of(1), mac_of(0))) == abi.NST_DONE | abi.NST_OK
    per_vf = w.nic.stats()["per_vf"]
    assert (per_vf[0]["native_tx"], per_vf[1]["native_rx"]) == (2, 2)
    assert (per_vf[0]["tx_packets"], per_vf[0]["spoofed"], per_vf[0]["faults"],
            per_vf[0]["errors"]) == (2, 1, 1, 1)
    assert w.st(0, abi.NS_TX_HEAD) == 5 and w.st(0, abi.NS_TX_PACKETS, "<Q") == 2
    assert w.st(1, abi.NS_RX_HEAD) == 2 and w.st(1, abi.NS_RX_PACKETS, "<Q") == 2
    assert w.nic.switch.stats["forwarded"] == 2 and w.nic.switch.stats["spoofed"] == 1


# ---------------------------------------------------------------- the C walk = iommu.py's
from hypothesis import given, settings, strategies as st   # noqa: E402

WALK_RAM = 8 << 20
TABLES = [0x100000 + i * PAGE for i in range(4)]            # PML4, PDPT, PD, PT of one walk
KINDS = (abi.FT_DATA,) * 5 + (abi.FT_TABLE, abi.FT_ROOT, abi.FT_DEVICE, abi.FT_KERNEL)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_native_iommu_walk_agrees_with_iommu_py(data):
    """The C data path has its own copy of the IOMMU's rules (devices/nic_build.py
    check_page); on random page tables -- any bits at any level, large pages, targets in
    RAM, on device pages or beyond RAM, frames of every type -- it must grant exactly what
    devices/iommu.py grants, for reads and for writes."""
    from devices import nic_native
    from devices.iommu import Iommu
    mod = nic_native.load()
    if mod is None:
        pytest.skip(nic_native.why_not)
    ram = bytearray(WALK_RAM)
    for pfn in range(0x200, WALK_RAM // PAGE):  # frames of large pages: ordinary memory
        struct.pack_into("<Q", ram, abi.FRAMES_PHYS + pfn * 8, abi.frame_entry(abi.FT_DATA, 1))
    small = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, 511))
    idx = [data.draw(st.one_of(st.integers(0, 511), st.sampled_from([0, 1, 255, 256])), "i4")]
    idx += [data.draw(small, f"i{4 - k}") for k in (1, 2, 3)]
    va = sum(i << sh for i, sh in zip(idx, (39, 30, 21, 12)))
    if va >= 1 << 47:
        va |= 0xFFFF << 48                  # canonical kernel half

    def often(bit, n_of_8):                 # a bit set in n of 8 draws: mostly valid walks
        return st.sampled_from([bit] * n_of_8 + [0] * (8 - n_of_8))
    for level, shift in enumerate((39, 30, 21, 12)):
        bits = sum(data.draw(often(b, k), f"bit{b}@{level}")
                   for b, k in ((P, 7), (U, 7), (W, 6), (abi.PTE_PS, 1)))
        kinds = ["next"] * 6 + ["data", "device", "beyond"] if level < 3 else \
            ["data"] * 6 + ["next", "device", "beyond"]
        kind = data.draw(st.sampled_from(kinds), f"kind{level}")
        if kind == "next" and level < 3:
            target = TABLES[level + 1]
        elif kind in ("next", "data"):
            target = data.draw(st.integers(0x200000, WALK_RAM - 1), f"frame{level}")
        elif kind == "device":
            target = WALK_RAM + data.draw(st.integers(0, abi.DEV_PAGES - 1)) * PAGE
        else:
            target = data.draw(st.integers(WALK_RAM, 1 << 40), f"far{level}")
        target &= abi.PTE_ADDR
        struct.pack_into("<Q", ram, TABLES[level] + ((va >> shift) & 511) * 8, target | bits)
        pfn = target >> 12
        if pfn < WALK_RAM // PAGE + abi.DEV_PAGES:
            struct.pack_into("<Q", ram, abi.FRAMES_PHYS + pfn * 8,
                             abi.frame_entry(data.draw(st.sampled_from(KINDS), f"ft{level}"), 1))
    io = Iommu(ram, WALK_RAM, TABLES[0])
    native = nic_native.Native(mod, 1)
    buf = native.ffi.from_buffer(ram)
    native.attach(int(native.ffi.cast("uintptr_t", buf)), WALK_RAM,
                  WALK_RAM // PAGE + abi.DEV_PAGES, buf)
    for write, access in ((0, abi.IOMMU_R), (1, abi.IOMMU_W)):
        want = io.check_page(TABLES[0], va, access)
        got = native.lib.nic_check_page(native.n, TABLES[0], va, write)
        assert got == (want if want >= 0 else -1), (hex(va), write, want, got)
