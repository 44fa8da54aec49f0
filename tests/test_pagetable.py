"""vmm/pagetable.py: entry encoding, the builder, the walker and iter_mappings (pure)."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from vmm import abi
from vmm import pagetable as pt
from vmm.pagetable import (MappingError, PageTables, PhysMem, FrameAllocator, decode, encode,
                           iter_mappings, walk)

P, W, U, NX, PS, PCD, G = (abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_NX, abi.PTE_PS,
                           abi.PTE_PCD, abi.PTE_G)
MiB = 1 << 20


# --------------------------------------------------------------------------
# entries
# --------------------------------------------------------------------------
@given(st.integers(0, (1 << 64) - 1))
def test_decode_encode_round_trip_any_u64(v):
    assert decode(v).encode() == v


@given(addr=st.integers(0, (1 << 40) - 1).map(lambda p: p << 12),
       bits=st.fixed_dictionaries({n: st.booleans() for n in
                                   ("p", "w", "u", "pwt", "pcd", "a", "d", "ps", "g",
                                    "slot", "nx")}))
def test_encode_decode_round_trip_fields(addr, bits):
    v = encode(addr, **bits)
    e = decode(v)
    assert e.addr == addr and e.avail == 0
    for name, on in bits.items():
        assert getattr(e, name) == on
    assert bool(v & abi.PTE_NX) == bits["nx"]
    assert bool(v & abi.PTE_SLOT) == bits["slot"]
    assert v & abi.PTE_ADDR == addr


def test_encode_bits_match_abi():
    assert encode(0, p=True) == abi.PTE_P
    assert encode(0, w=True, u=True) == abi.PTE_W | abi.PTE_U
    assert encode(0, nx=True) == abi.PTE_NX
    assert encode(0, slot=True) == abi.PTE_SLOT
    assert encode(0, ps=True, g=True, pcd=True, pwt=True, a=True, d=True) == \
        PS | G | PCD | abi.PTE_PWT | abi.PTE_A | abi.PTE_D


@pytest.mark.parametrize("addr", [0x1001, 1 << 52, -4096])
def test_encode_rejects_bad_address(addr):
    with pytest.raises(ValueError):
        encode(addr, p=True)


def test_entry_str():
    assert pt.entry_str(0) == "empty"
    assert pt.entry_str(0x5000 | abi.PTE_SLOT) == "slot 0x5000"
    assert pt.entry_str(0x5000 | P | W | NX) == "0x5000 P W NX"


# --------------------------------------------------------------------------
# hand-built tables
# --------------------------------------------------------------------------
def put(mem: bytearray, table: int, idx: int, value: int) -> None:
    struct.pack_into("<Q", mem, table + idx * 8, value)


RAM = 4 * MiB
PML4, PDPT, PD, PT_, PML4B = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000


@pytest.fixture
def ram():
    """PML4 -> PDPT -> PD -> PT.  va 0x1000 -> 0x200000 RW user NX; va 0x2000 -> 0x201000
    read-only user X; PD[1] is a 2 MiB page at 0x200000 (va 0x200000..0x400000) user RW;
    PD[2] not present; PML4[1] not present; PDPT[1] not present; PML4[510] self-map (read-only,
    user, NX); PML4B shares the PDPT (PML4B[0] -> PDPT, but without U)."""
    m = bytearray(RAM)
    put(m, PML4, 0, PDPT | P | W | U)
    put(m, PML4, 510, PML4 | P | U | NX)
    put(m, PDPT, 0, PD | P | W | U)
    put(m, PD, 0, PT_ | P | W | U)
    put(m, PD, 1, 0x200000 | P | W | U | PS | abi.PTE_G)
    put(m, PT_, 1, 0x200000 | P | W | U | NX)
    put(m, PT_, 2, 0x201000 | P | U)
    put(m, PT_, 3, 0x202000 | P | W)                      # supervisor leaf
    put(m, PT_, 4, 0x203000 | abi.PTE_SLOT)               # not present
    put(m, PML4B, 0, PDPT | P | W)                        # shared subtree, supervisor
    put(m, PML4B, 3, PDPT | P | U | NX)                   # the same PDPT again, read-only
    return m


def test_walk_4k_rights(ram):
    w = walk(ram, PML4, 0x1234)
    assert w.present and w.size == 4096 and w.pa == 0x200234
    assert w.writable and w.user and not w.executable
    assert [s.level for s in w.steps] == [4, 3, 2, 1]
    assert w.steps[-1].entry == 0x200000 | P | W | U | NX
    w = walk(ram, PML4, 0x2000)
    assert w.present and not w.writable and w.user and w.executable
    w = walk(ram, PML4, 0x3008)
    assert w.present and w.writable and not w.user and w.pa == 0x202008


def test_walk_2m_page(ram):
    w = walk(ram, PML4, 0x2ABCDE)
    assert w.present and w.size == 2 * MiB and w.pa == 0x200000 + 0xABCDE
    assert w.rights & G and w.writable and w.user and w.executable
    assert len(w.steps) == 3


def test_walk_1g_page():
    m = bytearray(RAM)
    put(m, PML4, 0, PDPT | P | W | U)
    put(m, PDPT, 1, (1 << 30) | P | PS | U)
    w = walk(m, PML4, (1 << 30) + 0x12345)
    assert w.present and w.size == 1 << 30 and w.pa == (1 << 30) + 0x12345
    assert not w.writable and w.user


@pytest.mark.parametrize("va,level", [(0x4000, 1), (0x5000, 1), (2 * 2 * MiB, 2),
                                      (1 << 30, 3), (1 << 39, 4)])
def test_walk_stops_at_non_present(ram, va, level):
    w = walk(ram, PML4, va)
    assert not w.present and w.stopped_at == level and w.pa is None
    assert len(w.steps) == 5 - level
    assert "not present" in w.reason or "slot" in w.reason


def test_walk_slot_reason(ram):
    assert "slot" in walk(ram, PML4, 0x4000).reason


def test_walk_non_canonical(ram):
    w = walk(ram, PML4, 0x0000_8000_0000_0000)
    assert not w.present and "canonical" in w.reason


def test_walk_table_outside_memory():
    m = bytearray(RAM)
    put(m, PML4, 0, (64 * MiB) | P | W | U)
    w = walk(m, PML4, 0)
    assert not w.present and "outside" in w.reason


def test_nx_is_or_and_w_u_are_and(ram):
    # Through PML4B[3] (P|U|NX, read-only) the executable, writable PT entries lose W and X.
    va = (3 << 39) | 0x1000
    w = walk(ram, PML4B, va)
    assert w.present and w.pa == 0x200000 and w.user and not w.writable and not w.executable
    w = walk(ram, PML4B, (3 << 39) | 0x2000)
    assert not w.executable
    # Through PML4B[0] (no U) nothing is user.
    w = walk(ram, PML4B, 0x1000)
    assert w.present and not w.user and w.writable


def test_shared_subtree_two_roots(ram):
    a = walk(ram, PML4, 0x2000)
    b = walk(ram, PML4B, 0x2000)
    assert a.pa == b.pa == 0x201000
    assert a.steps[1].table == b.steps[1].table == PDPT


def test_self_map(ram):
    w = walk(ram, PML4, abi.SELF_PML4)
    assert w.present and w.pa == PML4 and w.user and not w.writable and not w.executable
    # SELF_PML4 + 8*i reads PML4[i]; SELF_PT + (va>>12)*8 reads va's PTE.
    assert struct.unpack_from("<Q", ram, walk(ram, PML4, abi.SELF_PML4 + 8 * 510).pa)[0] \
        == PML4 | P | U | NX
    w = walk(ram, PML4, abi.self_map_pte(0x2000))
    assert w.present and w.pa == PT_ + 2 * 8 and not w.writable
    w = walk(ram, PML4, abi.SELF_PD + (0x200000 >> 21) * 8)
    assert w.pa == PD + 8
    w = walk(ram, PML4, abi.SELF_PDPT)
    assert w.pa == PDPT


def test_walk_readers_agree(ram):
    mem = PhysMem()
    mem.write(0, ram)
    read = lambda pa: struct.unpack_from("<Q", ram, pa)[0]   # noqa: E731
    for va in (0x1000, 0x2000, 0x2ABCDE, 0x4000, abi.SELF_PML4):
        a, b, c = walk(ram, PML4, va), walk(mem, PML4, va), walk(read, PML4, va)
        assert (a.present, a.pa, a.rights, a.stopped_at) == \
            (b.present, b.pa, b.rights, b.stopped_at) == (c.present, c.pa, c.rights,
                                                            c.stopped_at)


def test_iter_mappings_hand_built(ram):
    ms = list(iter_mappings(ram, PML4, 0, abi.USER_TOP))
    assert [tuple(m) for m in ms] == [
        (0x1000, 0x200000, 0x1000, W | U | NX),
        (0x2000, 0x201000, 0x1000, U),
        (0x3000, 0x202000, 0x1000, W),
        (0x200000, 0x200000, 2 * MiB, W | U | G),
    ]
    # clipped
    ms = list(iter_mappings(ram, PML4, 0x2000, 0x300000))
    assert ms[0].va == 0x2000 and ms[-1].va == 0x200000 and ms[-1].size == 0x100000
    # the whole space includes the self-map (read-only, user) in the kernel half
    allm = list(iter_mappings(ram, PML4))
    assert any(m.va == abi.SELF_PML4 and m.pa == PML4 for m in allm)
    assert all(not m.rights & W for m in allm if m.va >= 0xFFFF_8000_0000_0000)


def test_iter_mappings_folds_and_unfolds():
    mem = PhysMem()
    tables = PageTables(mem, FrameAllocator(0x100000, 0x200000))
    tables.map(0x40_0000, 0x80_0000, U | W | NX, 1500)          # crosses 3 PTs
    tables.map(0x40_0000 + 1500 * 4096, 0x90_0000, U | NX, 3)   # same va run, other pa
    tables.map(0x1000_0000, 0xA0_0000 | 0, U, 1)
    ms = list(iter_mappings(mem, tables.root))
    assert [tuple(m) for m in ms] == [
        (0x40_0000, 0x80_0000, 1500 * 4096, U | W | NX),
        (0x40_0000 + 1500 * 4096, 0x90_0000, 3 * 4096, U | NX),
        (0x1000_0000, 0xA0_0000, 4096, U),
    ]
    leaves = list(iter_mappings(mem, tables.root, fold=False))
    assert len(leaves) == 1504 and all(m.size == 4096 for m in leaves)
    assert leaves[1499].pa == 0x80_0000 + 1499 * 4096


def test_iter_mappings_partial_progression():
    """A table whose entries are runs interrupted by holes and a permuted pair."""
    mem = PhysMem()
    t = PageTables(mem, FrameAllocator(0x100000, 0x200000))
    t.map(0x200000, 0x800000, U, 100)
    t.map(0x200000 + 101 * 4096, 0x900000, U, 50)
    t.map(0x200000 + 151 * 4096, 0x900000 + 51 * 4096, U, 1)    # contiguous pa, swapped:
    t.map(0x200000 + 152 * 4096, 0x900000 + 50 * 4096, U, 1)    # not a run
    ms = [tuple(m) for m in iter_mappings(mem, t.root)]
    assert ms == [(0x200000, 0x800000, 100 * 4096, U),
                  (0x200000 + 101 * 4096, 0x900000, 50 * 4096, U),
                  (0x200000 + 151 * 4096, 0x900000 + 51 * 4096, 4096, U),
                  (0x200000 + 152 * 4096, 0x900000 + 50 * 4096, 4096, U)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2047), st.integers(1, 700), st.integers(0, 4095),
                          st.sampled_from([U, U | W | NX, U | NX, W])), max_size=6))
def test_iter_mappings_matches_walk(maps):
    """Folded runs from iter_mappings agree page by page with walk()."""
    mem = PhysMem()
    t = PageTables(mem, FrameAllocator(0x1000000, 0x2000000))
    expected = {}
    for vpage, n, ppage, flags in maps:
        va = 0x4000_0000 + vpage * 4096
        if any((va >> 12) + i in expected for i in range(n)):
            continue
        t.map(va, ppage * 4096, flags, n)
        for i in range(n):
            expected[(va >> 12) + i] = ((ppage + i) * 4096, flags)
    got = {}
    for m in iter_mappings(mem, t.root, 0, abi.USER_TOP):
        for off in range(0, m.size, 4096):
            got[(m.va + off) >> 12] = (m.pa + off, m.rights)
    assert got == expected
    for vp, (pa, flags) in list(expected.items())[:20]:
        w = walk(mem, t.root, vp << 12)
        assert w.pa == pa and w.rights == flags


# --------------------------------------------------------------------------
# builder
# --------------------------------------------------------------------------
def test_builder_allocates_tables_and_refuses_overwrite():
    mem = PhysMem()
    alloc = FrameAllocator(0x10000, 0x20000)
    t = PageTables(mem, alloc)
    assert t.root == 0x10000
    assert t.tables_needed(0x1000, 1) == 3
    t.map(0x1000, 0x5000, U | W)
    assert len(t.tables) == 3 and t.tables_needed(0x2000, 1) == 0
    assert t.tables_needed(0x200000, 512) == 1 and t.tables_needed(0x1ff000, 2) == 1
    w = walk(mem, t.root, 0x1000)
    assert w.pa == 0x5000 and w.writable and w.user
    for s in w.steps[:-1]:
        assert s.entry & (P | W | U) == P | W | U and not s.entry & NX
    with pytest.raises(MappingError, match="already mapped"):
        t.map(0x1000, 0x6000, U)
    with pytest.raises(MappingError, match="aligned"):
        t.map(0x1001, 0x6000, U)


def test_builder_large_page_and_conflict():
    mem = PhysMem()
    t = PageTables(mem, FrameAllocator(0x10000, 0x20000))
    t.map_large(0x400000, 0x800000, U | W)
    w = walk(mem, t.root, 0x412345)
    assert w.size == 2 * MiB and w.pa == 0x812345
    with pytest.raises(MappingError, match="large page"):
        t.map(0x401000, 0x1000, U)
    with pytest.raises(MappingError):
        t.map_large(0x400000, 0x800000, U)


def test_builder_out_of_frames():
    t = PageTables(PhysMem(), FrameAllocator(0x10000, 0x12000))
    with pytest.raises(MappingError, match="out of frames"):
        t.map(0x1000, 0x5000, U)


def test_physmem_runs_coalesce():
    mem = PhysMem()
    mem.write(0x1ff8, b"\1" * 16)
    mem.write(0x5000, b"\2")
    runs = mem.runs()
    assert [(pa, len(d)) for pa, d in runs] == [(0x1000, 0x2000), (0x5000, 0x1000)]
    assert runs[0][1][0xff8:0x1008] == b"\1" * 16
    assert mem.read(0x1ff0, 32) == bytes(8) + b"\1" * 16 + bytes(8)
