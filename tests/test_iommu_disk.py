"""devices/iommu.py and devices/disk.py without KVM: a hand-built world of page tables.

init's root names one child through handle slot 2; the child maps the disk VF's register
page, its queues, buffers, a read-only page and a supervisor-only page.  The "driver" is
Python writing the child's memory; doorbells go straight to the device (no ioeventfd), so
each batch runs synchronously.
"""
from __future__ import annotations

import os
import struct
import types

import pytest

from vmm import abi, xofs
from vmm.memory import GuestMemory
from vmm.pagetable import FrameAllocator, PageTables, PhysMem
from devices.disk import Disk
from devices.iommu import Iommu

RAM = 16 << 20
P, W, U, NX, PCD = abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_NX, abi.PTE_PCD
PAGE = abi.PAGE
INIT_ROOT, CHILD_ROOT, OTHER_ROOT = 0x600000, 0x601000, 0x602000
STATUS, SQ, CQ, FAULTS, BUF, RO, SUP = (0x2000_0000, 0x2000_1000, 0x2000_2000, 0x2000_3000,
                                        0x3000_0000, 0x3100_0000, 0x3200_0000)
VF_VA = abi.DISK_VF_VA
QSIZE = 8


class World:
    def __init__(self, image: str, vfs_owned=(0,)):
        pm = PhysMem()
        alloc = FrameAllocator(0x700000, 0x800000)
        self.data = FrameAllocator(0x900000, RAM)
        frames = {}
        self.init = PageTables(pm, alloc, root=INIT_ROOT)
        self.child = PageTables(pm, alloc, root=CHILD_ROOT)
        self.other = PageTables(pm, alloc, root=OTHER_ROOT)
        pm.write_u64(INIT_ROOT + (abi.PML4_HANDLE0 + 2) * 8, CHILD_ROOT | abi.PTE_SLOT)
        pm.write_u64(INIT_ROOT + (abi.PML4_HANDLE0 + 3) * 8, OTHER_ROOT | abi.PTE_SLOT)
        self.pa = {}
        for va in (STATUS, SQ, CQ, FAULTS, BUF, BUF + PAGE, RO, SUP):
            pa = self.data.alloc()
            self.pa[va] = pa
            frames[pa >> 12] = abi.FT_DATA
            rights = U | W | NX
            if va == RO:
                rights = U | NX
            if va == SUP:
                rights = W | NX
            self.child.map(va, pa, rights)
        # the other process: a page of its own at BUF + 2 pages' address
        self.other_pa = self.data.alloc()
        frames[self.other_pa >> 12] = abi.FT_DATA
        self.other.map(BUF + 2 * PAGE, self.other_pa, U | W | NX)
        for vf in vfs_owned:
            dev = RAM + (abi.DEV_DISK_VF0 + vf) * PAGE
            self.child.map(VF_VA + vf * PAGE, dev, U | W | NX | PCD)
        for r in (INIT_ROOT, CHILD_ROOT, OTHER_ROOT):
            frames[r >> 12] = abi.FT_ROOT
        for t in self.init.tables + self.child.tables + self.other.tables:
            frames[t >> 12] = abi.FT_TABLE
        ram = bytearray(RAM)
        for pa, d in pm.runs():
            ram[pa:pa + len(d)] = d
        for pfn, t in frames.items():
            struct.pack_into("<Q", ram, abi.FRAMES_PHYS + pfn * 8, abi.frame_entry(t, 1))
        for i in range(abi.DEV_PAGES):
            struct.pack_into("<Q", ram, abi.FRAMES_PHYS + (RAM // PAGE + i) * 8,
                             abi.frame_entry(abi.FT_DEVICE, 1))
        self.ram = ram
        self.mem = GuestMemory.from_buffer(ram)
        self.machine = types.SimpleNamespace(
            mem=self.mem, ram_bytes=RAM, stats={},
            boot=types.SimpleNamespace(bootinfo=types.SimpleNamespace(root_phys=INIT_ROOT)),
            register_mmio=lambda i, d: None, add_ioeventfd=lambda gpa, n=None: None,
            device_page_gpa=lambda i: RAM + i * PAGE, mfence=lambda: None)
        self.disk = Disk(image)
        self.disk.attach(self.machine)
        self.sq_tail = 0
        self.cq_head = 0

    # -- the driver, in Python ------------------------------------------------
    def u32(self, va, off=0, value=None):
        pa = self.pa[va] + off
        if value is None:
            return struct.unpack_from("<I", self.ram, pa)[0]
        struct.pack_into("<I", self.ram, pa, value)

    def enable(self, vf=0, vf_va=VF_VA, status=STATUS):
        s = self.pa[STATUS]
        struct.pack_into("<QQQI", self.ram, s + abi.DS_SETUP_VF_VA, vf_va, SQ, CQ, QSIZE)
        struct.pack_into("<QI", self.ram, s + abi.DS_SETUP_FAULT_VA, FAULTS, 4096 // 32)
        self.disk.mmio_write(abi.DEV_DISK_VF0 + vf, abi.VF_ENABLE, struct.pack("<Q", status))
        return self.u32(STATUS, abi.DS_STATE)

    def submit(self, op, lba, n, buf, cid=1, vf=0, ring=True):
        struct.pack_into("<BBHIQQ", self.ram, self.pa[SQ] + (self.sq_tail % QSIZE) * 64,
                         op, 0, cid, n, lba, buf)
        self.sq_tail += 1
        if ring:
            self.ring(vf)

    def ring(self, vf=0, tail=None):
        self.u32(STATUS, abi.DS_SQ_TAIL, self.sq_tail if tail is None else tail)
        self.disk.mmio_write(abi.DEV_DISK_VF0 + vf, abi.VF_DOORBELL, b"\1\0\0\0")

    def reap(self):
        pa = self.pa[CQ] + (self.cq_head % QSIZE) * 16
        res, head, cid, status = struct.unpack_from("<IHHH", self.ram, pa)
        if status & 1 != ((self.cq_head // QSIZE) & 1) ^ 1:
            return None
        self.cq_head += 1
        self.u32(STATUS, abi.DS_CQ_HEAD, self.cq_head)
        return cid, status >> 1, res

    def faults(self):
        return struct.unpack_from("<Q", self.ram, self.pa[STATUS] + abi.DS_FAULTS)[0]

    def fault_rec(self, i):
        return struct.unpack_from("<QIIII", self.ram, self.pa[FAULTS] + i * 32)


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "d.img"
    xofs.mkfs(str(p), 8 << 20, 2)
    return str(p)


@pytest.fixture
def world(image):
    w = World(image)
    yield w
    w.disk.close()


# --------------------------------------------------------------------------
# IOMMU
# --------------------------------------------------------------------------
def test_translate_follows_the_owners_page_tables(world):
    io = Iommu(world.mem, RAM, INIT_ROOT)
    assert sorted(io.roots()) == [INIT_ROOT, CHILD_ROOT, OTHER_ROOT]
    runs = io.translate(CHILD_ROOT, BUF + 100, 2 * PAGE - 200, abi.IOMMU_W, 0)
    assert sum(n for _, n in runs) == 2 * PAGE - 200
    assert runs[0][0] == world.pa[BUF] + 100
    assert io.translate(CHILD_ROOT, RO, 16, abi.IOMMU_R, 0) == [(world.pa[RO], 16)]
    assert io.fault_count == 0


@pytest.mark.parametrize("va,access,reason", [
    (RO, abi.IOMMU_W, abi.IOMMU_READ_ONLY),
    (SUP, abi.IOMMU_R, abi.IOMMU_KERNEL),
    (abi.KBASE + 0x100000, abi.IOMMU_W, abi.IOMMU_KERNEL),
    (abi.FRAMES_VA, abi.IOMMU_R, abi.IOMMU_KERNEL),
    (0x5000_0000_0000, abi.IOMMU_R, abi.IOMMU_NOT_MAPPED),
    (BUF + 2 * PAGE, abi.IOMMU_W, abi.IOMMU_NOT_MAPPED),       # the other process's page
    (VF_VA, abi.IOMMU_W, abi.IOMMU_NOT_RAM),
])
def test_translate_refuses_and_records(world, va, access, reason):
    from devices.iommu import IommuFault
    io = Iommu(world.mem, RAM, INIT_ROOT)
    with pytest.raises(IommuFault) as e:
        io.translate(CHILD_ROOT, va, 8, access, 3)
    r = e.value.record
    assert (r.endpoint, r.address, r.access, r.reason, r.root) == (3, va, access, reason,
                                                                   CHILD_ROOT)
    assert io.fault_count == 1 and "fault #1" in io.report()


def test_a_range_is_checked_whole(world):
    from devices.iommu import IommuFault
    io = Iommu(world.mem, RAM, INIT_ROOT)
    with pytest.raises(IommuFault) as e:       # BUF, BUF+1 mapped, BUF+2 is not ours
        io.translate(CHILD_ROOT, BUF + PAGE, 2 * PAGE, abi.IOMMU_W, 0)
    assert e.value.record.address == BUF + 2 * PAGE


# --------------------------------------------------------------------------
# The disk
# --------------------------------------------------------------------------
def test_enable_binds_the_unique_holder(world):
    assert world.enable() == abi.DSTATE_READY
    vf = world.disk.vfs[0]
    assert vf.ready and vf.root == CHILD_ROOT
    s = world.pa[STATUS]
    assert struct.unpack_from("<Q", world.ram, s + abi.DS_NS_BLOCKS)[0] == vf.nblocks
    # VF 1: the child does not hold its register page -> nobody matches
    world.enable(vf=1)
    assert not world.disk.vfs[1].ready


def test_read_write_flush_discard(world):
    world.enable()
    world.ram[world.pa[BUF]:world.pa[BUF] + PAGE] = b"x" * PAGE
    world.submit(abi.DOP_WRITE, 5, 1, BUF, cid=7)
    assert world.reap() == (7, abi.DST_OK, PAGE)
    world.submit(abi.DOP_FLUSH, 0, 0, 0, cid=8)
    assert world.reap() == (8, abi.DST_OK, 0)
    world.submit(abi.DOP_READ, 5, 1, BUF + PAGE, cid=9)
    assert world.reap() == (9, abi.DST_OK, PAGE)
    assert world.ram[world.pa[BUF + PAGE]:world.pa[BUF + PAGE] + PAGE] == b"x" * PAGE
    world.submit(abi.DOP_DISCARD, 5, 1, 0, cid=10)
    assert world.reap()[1] == abi.DST_OK
    world.submit(abi.DOP_READ, 5, 1, BUF + PAGE, cid=11)
    assert world.reap()[1] == abi.DST_OK
    assert world.ram[world.pa[BUF + PAGE]:world.pa[BUF + PAGE] + PAGE] == bytes(PAGE)
    # on the host: the block sits in namespace 0 at its start + 5
    start = world.disk.vfs[0].start
    with open(world.disk.path, "rb") as f:
        f.seek((start + 5) * PAGE)
        assert f.read(PAGE) == bytes(PAGE)


def test_malformed_commands_get_error_completions(world):
    world.enable()
    nb = world.disk.vfs[0].nblocks
    cases = [(0x77, 0, 1, BUF, abi.DST_BAD_OPCODE), (abi.DOP_READ, nb, 1, BUF, abi.DST_LBA_RANGE),
             (abi.DOP_WRITE, 2**64 - 1, 2, BUF, abi.DST_LBA_RANGE),
             (abi.DOP_READ, 0, 100000, BUF, abi.DST_TOO_LONG),
             (abi.DOP_READ, 0, 0, BUF, abi.DST_TOO_LONG)]
    for i, (op, lba, n, buf, want) in enumerate(cases):
        world.submit(op, lba, n, buf, cid=i)
        assert world.reap() == (i, want, 0)
    errs = struct.unpack_from("<Q", world.ram, world.pa[STATUS] + abi.DS_ERRORS)[0]
    assert errs == len(cases)


def test_dma_faults_are_blocked_and_delivered(world):
    world.enable()
    before = bytes(world.ram[world.pa[RO]:world.pa[RO] + PAGE])
    world.submit(abi.DOP_READ, 0, 1, RO, cid=1)            # device write into RO
    assert world.reap() == (1, abi.DST_IOMMU_FAULT, 0)
    assert bytes(world.ram[world.pa[RO]:world.pa[RO] + PAGE]) == before
    world.submit(abi.DOP_WRITE, 0, 1, SUP, cid=2)           # device read of kernel memory
    assert world.reap() == (2, abi.DST_IOMMU_FAULT, 0)
    world.submit(abi.DOP_READ, 0, 2, BUF + PAGE, cid=3)     # runs into the other's page
    assert world.reap() == (3, abi.DST_IOMMU_FAULT, 0)
    assert world.faults() == 3
    assert world.fault_rec(0) == (RO, 0, abi.IOMMU_W, abi.IOMMU_READ_ONLY, 1)
    assert world.fault_rec(1)[:4] == (SUP, 0, abi.IOMMU_R, abi.IOMMU_KERNEL)
    assert world.fault_rec(2)[:4] == (BUF + 2 * PAGE, 0, abi.IOMMU_W, abi.IOMMU_NOT_MAPPED)
    assert world.ram[world.other_pa:world.other_pa + PAGE] == bytes(PAGE)
    assert world.disk.iommu.fault_count == 3


def test_doorbell_beyond_the_ring_and_full_queue(world):
    world.enable()
    world.sq_tail = QSIZE + 3
    world.ring()
    assert world.reap() == (0xFFFF, abi.DST_BAD_DOORBELL, 0)
    world.cq_head = world.cq_head       # the device skipped to the tail
    # fill the SQ without reaping: QSIZE complete, the device waits for room
    for i in range(QSIZE):
        world.submit(abi.DOP_READ, i, 1, BUF, cid=i, ring=False)
    world.ring()
    got = []
    while (c := world.reap()) is not None:
        got.append(c)
    # one slot was taken by the bad-doorbell completion we reaped: all QSIZE fit
    assert [c[1] for c in got] == [abi.DST_OK] * QSIZE


def test_completion_queue_full_stalls_without_overwriting(world):
    world.enable()
    for i in range(QSIZE):
        world.submit(abi.DOP_READ, 0, 1, BUF, cid=i, ring=False)
    world.ring()
    for i in range(3):                                      # 3 more, CQ full
        world.submit(abi.DOP_READ, 0, 1, BUF, cid=100 + i, ring=False)
    world.ring()
    assert world.disk.vfs[0].stalled
    cids = [world.reap()[0] for _ in range(QSIZE)]
    assert cids == list(range(QSIZE))
    world.ring()                                            # room again
    assert [world.reap()[0] for _ in range(3)] == [100, 101, 102]


def test_the_binding_dies_with_the_mapping(world):
    world.enable()
    # the owner loses its register page (RELEASE / destroy): next batch unbinds
    leaf = world.child.table(VF_VA, 1) + ((VF_VA >> 12) & 511) * 8
    struct.pack_into("<Q", world.ram, leaf, 0)
    world.submit(abi.DOP_READ, 0, 1, BUF, cid=1)
    assert world.reap() is None
    assert not world.disk.vfs[0].ready
    assert "no longer holds" in world.disk.report()


def test_namespaces_are_disjoint(image):
    with open(image, "rb") as f:
        from devices.disk import read_label
        ns = read_label(f.fileno(), os.fstat(f.fileno()).st_size)
    assert len(ns) == 2 and ns[0][0] + ns[0][1] <= ns[1][0]


def test_inspector_iommu_command(world):
    """The console's `iommu` command shows the fault log and each VF's binding."""
    world.enable()
    world.submit(abi.DOP_READ, 0, 1, RO, cid=1)
    world.reap()
    world.machine.iommu = world.disk.iommu
    d = world.disk.iommu.inspect()
    assert d["faults"] == 1 and d["records"][0]["reason"] == "read-only"
    assert "vf 0: blocks" in d["message"] and "root 0x601000" in d["message"]
    from vmm.inspect import Inspector
    ins = Inspector.__new__(Inspector)
    ins.m = world.machine
    assert Inspector.iommu(ins)["faults"] == 1


def test_vectorised_translation_matches_the_page_walk(world):
    """Large ranges go through the numpy path: same runs, same faults as page by page."""
    from devices import iommu as iommu_mod
    io = Iommu(world.mem, RAM, INIT_ROOT)
    slow = Iommu(world.mem, RAM, INIT_ROOT)
    old = iommu_mod._np
    try:
        iommu_mod._np = None
        want = slow.translate(CHILD_ROOT, BUF + 8, 2 * PAGE - 16, abi.IOMMU_W, 0)
    finally:
        iommu_mod._np = old
    assert io._translate_np(CHILD_ROOT, BUF + 8, 2 * PAGE - 16, abi.IOMMU_W, 0) == want
    assert io._translate_np(CHILD_ROOT, BUF, 3 * PAGE, abi.IOMMU_W, 0) is None
    assert io._translate_np(CHILD_ROOT, RO, PAGE, abi.IOMMU_W, 0) is None
    assert io._translate_np(CHILD_ROOT, RO, PAGE, abi.IOMMU_R, 0) == [(world.pa[RO], PAGE)]


def test_one_compare_run_path(world):
    """Contiguous runs are recognised with one big-integer compare; anything else
    (holes, rights, a break in contiguity) falls back and faults the same way."""
    io = Iommu(world.mem, RAM, INIT_ROOT)
    contiguous = world.pa[BUF + PAGE] == world.pa[BUF] + PAGE
    got = io._translate_run(CHILD_ROOT, BUF + 8, 2 * PAGE - 16, abi.IOMMU_W)
    assert got == ([(world.pa[BUF] + 8, 2 * PAGE - 16)] if contiguous else None)
    assert io._translate_run(CHILD_ROOT, BUF, 3 * PAGE, abi.IOMMU_W) is None     # a hole
    assert io._translate_run(CHILD_ROOT, RO, PAGE, abi.IOMMU_W) is None          # read-only
    assert io._translate_run(CHILD_ROOT, RO, PAGE, abi.IOMMU_R) == [(world.pa[RO], PAGE)]
    # the CPU's accessed/dirty bits do not break a run
    leaf = world.child.table(BUF, 1) + ((BUF >> 12) & 511) * 8
    struct.pack_into("<Q", world.ram, leaf, struct.unpack_from("<Q", world.ram, leaf)[0]
                     | abi.PTE_A | abi.PTE_D)
    assert io._translate_run(CHILD_ROOT, BUF + 8, 2 * PAGE - 16, abi.IOMMU_W) == got
    from devices.iommu import IommuFault
    with pytest.raises(IommuFault):
        io.translate(CHILD_ROOT, BUF, 3 * PAGE, abi.IOMMU_W, 0)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1),
                               st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)),
                               st.sampled_from([BUF, BUF + 123, RO, SUP, 0, 2**64 - 4096,
                                                abi.KBASE, VF_VA, BUF + PAGE])),
                     min_size=1, max_size=QSIZE))
def test_any_command_gets_one_completion_and_harms_nothing(world, cmds):
    """Fuzz: every submitted command, whatever its bytes, completes exactly once with a
    known status; only our own writable buffer pages can change."""
    if not world.disk.vfs[0].ready:
        world.enable()
    other = bytes(world.ram[world.other_pa:world.other_pa + PAGE])
    ro = bytes(world.ram[world.pa[RO]:world.pa[RO] + PAGE])
    for i, (op, n, lba, buf) in enumerate(cmds):
        world.submit(op, lba, n, buf, cid=i, ring=False)
    world.ring()
    got = []
    while (c := world.reap()) is not None:
        got.append(c)
    assert [c[0] for c in got] == list(range(len(cmds)))
    assert all(0 <= c[1] <= abi.DST_BAD_DOORBELL for c in got)
    for (op, n, lba, buf), c in zip(cmds, got):
        if c[1] == abi.DST_OK and op in (abi.DOP_READ, abi.DOP_WRITE):
            assert buf in (BUF, BUF + 123) and n <= 2 - (buf != BUF)
    assert bytes(world.ram[world.other_pa:world.other_pa + PAGE]) == other
    assert bytes(world.ram[world.pa[RO]:world.pa[RO] + PAGE]) == ro
