"""x86-64 4-level page tables: entry encoding, a builder and a walker (pure logic, no KVM).

Three parts, all working on guest-physical memory:

* **Entries**: :func:`encode` / :func:`decode` (an :class:`Entry` with one field per bit,
  including the software bit ``PTE_SLOT``; every u64 round-trips exactly).
* **Builder**: :class:`PageTables` maps 4 KiB pages (in bulk: one ``array`` slice per
  page-table page, so half a million PTEs take milliseconds) and installs 2 MiB ``PS`` entries
  or raw entries, allocating its table pages from a frame allocator into a :class:`PhysMem`.
* **Walker**: :func:`walk` translates one address like the MMU does (effective rights: AND of
  W and U, OR of NX over the levels), :func:`iter_mappings` enumerates a range as folded runs
  (the console's ``pt`` command).

Memory argument (``mem``) of the walker: any of

* a buffer indexed by guest-physical address (``bytes``, ``bytearray``, ``memoryview``,
  ``mmap`` -- the VM's RAM), read with ``struct.unpack_from('<512Q', ...)`` a page at a time;
* a :class:`PhysMem` (the boot-image builder's sparse memory);
* a callable ``read_u64(phys) -> int`` (slowest: 512 calls per table page).

Levels are numbered like the SDM: 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT.
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

from . import abi

assert sys.byteorder == "little", "page tables are built with native-endian arrays"
assert array("Q").itemsize == 8

PAGE = abi.PAGE
ENTRIES = 512
MASK64 = (1 << 64) - 1
LINEAR = 1 << 48                  # size of the 48-bit linear address space
LINEAR_MASK = LINEAR - 1

# bit -> Entry field name
_BITS = [("p", abi.PTE_P), ("w", abi.PTE_W), ("u", abi.PTE_U), ("pwt", abi.PTE_PWT),
         ("pcd", abi.PTE_PCD), ("a", abi.PTE_A), ("d", abi.PTE_D), ("ps", abi.PTE_PS),
         ("g", abi.PTE_G), ("slot", abi.PTE_SLOT), ("nx", abi.PTE_NX)]
_KNOWN = abi.PTE_ADDR
for _n, _b in _BITS:
    _KNOWN |= _b
AVAIL_MASK = MASK64 & ~_KNOWN     # bits 10, 11, 52..62: ignored by the MMU

# Shift of the region one entry covers, per level.
SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}
SIZE_4K = 1 << 12
SIZE_2M = 1 << 21
SIZE_1G = 1 << 30

# Effective-rights bits (a subset of the PTE bits, so they read like flags).
RIGHTS_MASK = abi.PTE_W | abi.PTE_U | abi.PTE_NX | abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G


class MappingError(ValueError):
    """The builder was asked for something the tables cannot hold (already mapped, ...)."""


# --------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One page-table entry, bit by bit.  ``addr`` is bits 12..51 (for a 2 MiB / 1 GiB
    leaf, bit 12 is PAT and belongs to the attributes: see :func:`leaf_addr`); ``avail`` holds
    every bit the MMU ignores (10, 11, 52..62) so decode/encode is exact."""
    addr: int = 0
    p: bool = False
    w: bool = False
    u: bool = False
    pwt: bool = False
    pcd: bool = False
    a: bool = False
    d: bool = False
    ps: bool = False
    g: bool = False
    slot: bool = False
    nx: bool = False
    avail: int = 0

    def encode(self) -> int:
        return encode(self.addr, avail=self.avail,
                      **{n: getattr(self, n) for n, _ in _BITS})

    def __str__(self) -> str:
        return entry_str(self.encode())


def encode(addr: int = 0, *, p=False, w=False, u=False, pwt=False, pcd=False, a=False,
           d=False, ps=False, g=False, slot=False, nx=False, avail: int = 0) -> int:
    """Build an entry.  ``addr`` must be 4 KiB aligned and below 2**52."""
    if addr & ~abi.PTE_ADDR:
        raise ValueError(f"page-table entry address {addr:#x} is not a 4 KiB-aligned "
                         f"physical address below 2**52")
    if avail & ~AVAIL_MASK:
        raise ValueError(f"avail bits {avail:#x} overlap architectural bits")
    v = addr | avail
    for (name, bit), on in zip(_BITS, (p, w, u, pwt, pcd, a, d, ps, g, slot, nx)):
        if on:
            v |= bit
    return v


def decode(value: int) -> Entry:
    if not 0 <= value <= MASK64:
        raise ValueError(f"{value:#x} is not a u64")
    return Entry(addr=value & abi.PTE_ADDR, avail=value & AVAIL_MASK,
                 **{n: bool(value & b) for n, b in _BITS})


def leaf_addr(value: int, size: int) -> int:
    """Physical base of the page a leaf entry maps (size 4 KiB, 2 MiB or 1 GiB)."""
    return value & abi.PTE_ADDR & ~(size - 1)


def entry_str(value: int) -> str:
    """``0x201000 P W U NX`` style, for dumps."""
    if not value & abi.PTE_P:
        if value & abi.PTE_SLOT:
            return f"slot {value & abi.PTE_ADDR:#x}"
        return f"not present ({value:#x})" if value else "empty"
    names = [n.upper() for n, b in _BITS if value & b]
    return f"{value & abi.PTE_ADDR:#x} " + " ".join(names)


def rights_str(rights: int) -> str:
    """Effective rights as ``rwx u`` (``-`` for a missing right; ``k`` = supervisor only)."""
    s = "r" + ("w" if rights & abi.PTE_W else "-") + ("-" if rights & abi.PTE_NX else "x")
    s += " u" if rights & abi.PTE_U else " k"
    if rights & abi.PTE_PCD:
        s += " uc"
    if rights & abi.PTE_G:
        s += " g"
    return s


def canonical(linear: int) -> int:
    """48-bit linear address -> canonical virtual address (sign-extend bit 47)."""
    linear &= LINEAR_MASK
    return linear | (MASK64 ^ LINEAR_MASK) if linear & (1 << 47) else linear


def is_canonical(va: int) -> bool:
    return 0 <= va <= MASK64 and canonical(va) == va


def indices(va: int) -> tuple[int, int, int, int]:
    """(PML4, PDPT, PD, PT) indices of va."""
    return ((va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511)


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------
class PhysMem:
    """Sparse guest-physical memory of 4 KiB pages, zero until written.

    The boot-image builder writes everything here, then :meth:`runs` gives the coalesced
    ``(phys, bytes)`` writes to copy into the zeroed RAM of the VM."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.pages: dict[int, bytearray] = {}      # pfn -> page

    def page(self, phys: int) -> bytearray:
        """The (mutable) page containing phys, created zero on first use."""
        pfn = phys >> 12
        pg = self.pages.get(pfn)
        if pg is None:
            if self.limit is not None and phys >= self.limit:
                raise MappingError(f"physical address {phys:#x} beyond memory ({self.limit:#x})")
            pg = self.pages[pfn] = bytearray(PAGE)
        return pg

    def write(self, phys: int, data) -> None:
        data = memoryview(data).cast("B")
        off = 0
        while off < len(data):
            pg = self.page(phys + off)
            o = (phys + off) & (PAGE - 1)
            n = min(PAGE - o, len(data) - off)
            pg[o:o + n] = data[off:off + n]
            off += n

    def read(self, phys: int, n: int) -> bytes:
        out = bytearray(n)
        off = 0
        while off < n:
            o = (phys + off) & (PAGE - 1)
            k = min(PAGE - o, n - off)
            pg = self.pages.get((phys + off) >> 12)
            if pg is not None:
                out[off:off + k] = pg[o:o + k]
            off += k
        return bytes(out)

    def read_u64(self, phys: int) -> int:
        pg = self.pages.get(phys >> 12)
        return struct.unpack_from("<Q", pg, phys & (PAGE - 1))[0] if pg is not None else 0

    def write_u64(self, phys: int, value: int) -> None:
        struct.pack_into("<Q", self.page(phys), phys & (PAGE - 1), value)

    def read_table(self, phys: int) -> tuple[int, ...]:
        pg = self.pages.get(phys >> 12)
        return struct.unpack_from("<512Q", pg, 0) if pg is not None else (0,) * ENTRIES

    def read_raw(self, phys: int) -> bytes:
        pg = self.pages.get(phys >> 12)
        return bytes(pg) if pg is not None else bytes(PAGE)

    def runs(self) -> list[tuple[int, bytes]]:
        """Coalesced (phys, bytes) runs of every page touched, ascending."""
        out: list[tuple[int, bytes]] = []
        pfns = sorted(self.pages)
        i = 0
        while i < len(pfns):
            j = i
            while j + 1 < len(pfns) and pfns[j + 1] == pfns[j] + 1:
                j += 1
            out.append((pfns[i] << 12, b"".join(self.pages[p] for p in pfns[i:j + 1])))
            i = j + 1
        return out


class FrameAllocator:
    """Bump allocator of physical frames in [start, end) (byte addresses, page aligned)."""

    def __init__(self, start: int, end: int):
        if start & (PAGE - 1) or end & (PAGE - 1):
            raise ValueError("frame allocator bounds must be page aligned")
        self.next = start
        self.end = end

    def __call__(self) -> int:
        return self.alloc(1)

    def alloc(self, n: int = 1) -> int:
        pa = self.next
        if pa + n * PAGE > self.end:
            raise MappingError(f"out of frames: need {n} page(s) at {pa:#x}, memory ends at "
                               f"{self.end:#x}")
        self.next += n * PAGE
        return pa


# --------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------
INTER_USER = abi.PTE_P | abi.PTE_W | abi.PTE_U     # rights are restricted at the leaves


class PageTables:
    """Builds one address space's tables in ``mem`` (a :class:`PhysMem`).

    ``alloc()`` returns the physical address of a fresh frame for each table page; the
    table pages allocated (levels 1..3, not the root) are listed in :attr:`tables`.
    Intermediate entries get ``inter`` (default P|W|U).  Nothing is ever overwritten:
    mapping over a present entry raises :class:`MappingError`.
    """

    def __init__(self, mem: PhysMem, alloc: Callable[[], int], root: int | None = None,
                 inter: int = INTER_USER):
        self.mem = mem
        self.alloc = alloc
        self.inter = inter
        self.tables: list[int] = []
        if root is None:
            root = alloc()
            mem.page(root)[:] = bytes(PAGE)
        self.root = root

    # -- tables ------------------------------------------------------------
    def table(self, va: int, level: int, create: bool = True) -> int | None:
        """Physical address of the level-``level`` table (1 = PT .. 4 = PML4) covering va,
        creating the missing tables above it if ``create``; None if missing."""
        # LAB 2 BEGIN STUB: raise MappingError(f"{canonical(va):#x}: PageTables.table is not written yet (lab 2)")
        t = self.root
        for lv in range(4, level, -1):
            off = ((va >> SHIFT[lv]) & 511) * 8
            pg = self.mem.page(t)
            e = struct.unpack_from("<Q", pg, off)[0]
            if e & abi.PTE_P:
                if e & abi.PTE_PS:
                    raise MappingError(f"{canonical(va):#x}: a large page at level {lv} "
                                       f"covers it")
                t = e & abi.PTE_ADDR
                continue
            if e:
                raise MappingError(f"{canonical(va):#x}: level-{lv} entry {e:#x} is "
                                   f"not present but in use")
            if not create:
                return None
            nt = self.alloc()
            self.mem.page(nt)[:] = bytes(PAGE)
            self.tables.append(nt)
            struct.pack_into("<Q", pg, off, nt | self.inter)
            t = nt
        return t
        # LAB 2 END

    def tables_needed(self, va: int, npages: int) -> int:
        """How many table pages :meth:`map` would allocate for npages at va (arithmetic on
        the block ranges, one existence probe per block)."""
        if npages <= 0:
            return 0
        lo, hi = va & LINEAR_MASK, (va & LINEAR_MASK) + npages * PAGE - 1
        need = 0
        for level in (3, 2, 1):            # tables of these levels are created
            shift = SHIFT[level + 1]       # one table of `level` covers 1 << shift
            first, last = lo >> shift, hi >> shift
            need += sum(1 for b in range(first, last + 1)
                        if not self._exists(b << shift, level))
        return need

    def _exists(self, va: int, level: int) -> bool:
        try:
            return self.table(va, level, create=False) is not None
        except MappingError:
            return True

    # -- entries -----------------------------------------------------------
    def get(self, va: int, level: int = 1) -> int:
        t = self.table(va, level, create=False)
        return 0 if t is None else self.mem.read_u64(t + ((va >> SHIFT[level]) & 511) * 8)

    def set(self, va: int, value: int, level: int = 1, *, replace: bool = False) -> None:
        """Write a raw entry at ``level`` for va (creating the tables above)."""
        t = self.table(va, level)
        pa = t + ((va >> SHIFT[level]) & 511) * 8
        if not replace and self.mem.read_u64(pa):
            raise MappingError(f"{canonical(va):#x}: level-{level} entry already in use "
                               f"({self.mem.read_u64(pa):#x})")
        self.mem.write_u64(pa, value)

    def map(self, va: int, pa: int, flags: int, npages: int = 1) -> None:
        """Map npages 4 KiB pages va -> pa (both contiguous) with leaf ``flags``
        (``PTE_P`` is added).  Bulk: one array slice per page-table page."""
        if va & (PAGE - 1) or pa & (PAGE - 1):
            raise MappingError(f"map {va:#x} -> {pa:#x}: not page aligned")
        if flags & abi.PTE_ADDR or flags & abi.PTE_PS:
            raise MappingError(f"map: bad leaf flags {flags:#x}")
        if not is_canonical(va) or not is_canonical(canonical(va + npages * PAGE - 1)) or \
                (va & LINEAR_MASK) + npages * PAGE > LINEAR:
            raise MappingError(f"map {va:#x} + {npages} pages: not canonical")
        flags |= abi.PTE_P
        zero = bytes(PAGE)
        done = 0
        while done < npages:
            v = va + done * PAGE
            i0 = (v >> 12) & 511
            n = min(ENTRIES - i0, npages - done)
            t = self.table(v, 1)
            pg = self.mem.page(t)
            a, b = i0 * 8, (i0 + n) * 8
            if pg[a:b] != zero[:b - a]:
                raise MappingError(f"map {canonical(v):#x}: already mapped")
            first = pa + done * PAGE + flags
            pg[a:b] = array("Q", range(first, first + n * PAGE, PAGE))
            done += n

    def map_large(self, va: int, pa: int, flags: int) -> None:
        """Install one 2 MiB page (PS entry in the PD)."""
        if va & (SIZE_2M - 1) or pa & (SIZE_2M - 1):
            raise MappingError(f"map_large {va:#x} -> {pa:#x}: not 2 MiB aligned")
        self.set(va, pa | flags | abi.PTE_P | abi.PTE_PS, level=2)


# --------------------------------------------------------------------------
# Walker
# --------------------------------------------------------------------------
def _raw_reader(mem) -> Callable[[int], bytes]:
    """phys of a table page -> its 4096 bytes."""
    if hasattr(mem, "read_raw"):
        return mem.read_raw
    try:
        memoryview(mem)
    except TypeError:
        pass
    else:
        def read(phys: int) -> bytes:
            if phys + PAGE > len(mem):
                raise ValueError(f"table {phys:#x} outside memory")
            return bytes(mem[phys:phys + PAGE])
        return read
    if callable(mem):
        def read_slow(phys: int) -> bytes:
            return _PACK512(*(mem(phys + 8 * i) for i in range(ENTRIES)))
        return read_slow
    raise TypeError(f"cannot read guest memory from {type(mem).__name__}")


_PACK512 = struct.Struct("<512Q").pack
_PROG: dict[int, tuple[int, int, int]] = {}


def _progression(m: int) -> tuple[int, int, int]:
    """Constants to test whether m packed u64 entries are e, e+4096, ..., e+(m-1)*4096 with
    one big-integer compare: (R, S, mask) with R = sum 2**(64k), S = sum (k*4096) << 64k,
    so the packed progression is e*R + S (no field overflows: entries are < 2**64)."""
    c = _PROG.get(m)
    if c is None:
        r = ((1 << (64 * m)) - 1) // ((1 << 64) - 1)
        s = int.from_bytes(array("Q", range(0, m * PAGE, PAGE)).tobytes(), "little")
        c = _PROG[m] = (r, s, (1 << (64 * m)) - 1)
    return c


def _u64_reader(mem) -> Callable[[int], int]:
    if isinstance(mem, PhysMem) or hasattr(mem, "read_u64"):
        return mem.read_u64
    try:
        memoryview(mem)
    except TypeError:
        pass
    else:
        unpack = struct.Struct("<Q").unpack_from
        return lambda phys: unpack(mem, phys)[0]
    if callable(mem):
        return mem
    raise TypeError(f"cannot read guest memory from {type(mem).__name__}")


@dataclass
class WalkStep:
    level: int          # 4 = PML4 .. 1 = PT
    table: int          # physical address of the table page
    index: int
    entry: int

    def __str__(self) -> str:
        name = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}[self.level]
        return f"{name}[{self.index}] @ {self.table + 8 * self.index:#x} = {entry_str(self.entry)}"


@dataclass
class Walk:
    """The translation of one virtual address.

    present: the address translates; then ``pa``, ``size`` (4 KiB / 2 MiB / 1 GiB) and
    ``rights`` (effective: W and U only if set at every level, NX if set at any level,
    PCD/PWT/G from the leaf) are valid.  Otherwise ``stopped_at`` is the level whose entry
    was not present (or bad) and ``reason`` says why."""
    va: int
    steps: list[WalkStep] = field(default_factory=list)
    present: bool = False
    pa: int | None = None
    size: int | None = None
    rights: int = 0
    stopped_at: int | None = None
    reason: str = ""

    @property
    def writable(self) -> bool:
        return self.present and bool(self.rights & abi.PTE_W)

    @property
    def user(self) -> bool:
        return self.present and bool(self.rights & abi.PTE_U)

    @property
    def executable(self) -> bool:
        return self.present and not self.rights & abi.PTE_NX

    @property
    def leaf(self) -> int | None:
        return self.steps[-1].entry if self.present else None

    def __str__(self) -> str:
        lines = [f"va {self.va:#018x}"] + [f"  {s}" for s in self.steps]
        if self.present:
            lines.append(f"  -> pa {self.pa:#x} ({self.size >> 10} KiB page, "
                         f"{rights_str(self.rights)})")
        else:
            lines.append(f"  -> not mapped: {self.reason}")
        return "\n".join(lines)


_RSVD_PS = {4: "PS set in a PML4 entry (reserved)"}


def walk(mem, cr3: int, va: int) -> Walk:
    """Translate va through the tables rooted at cr3 (see module doc for ``mem``)."""
    read = _u64_reader(mem)
    w = Walk(va=va)
    if not is_canonical(va):
        w.stopped_at, w.reason = 4, "non-canonical address"
        return w
    # LAB 2 BEGIN STUB: w.stopped_at, w.reason = 4, "walk is not written yet (lab 2)"; return w
    table = cr3 & abi.PTE_ADDR
    rights = abi.PTE_W | abi.PTE_U
    nx = 0
    for level in (4, 3, 2, 1):
        idx = (va >> SHIFT[level]) & 511
        try:
            e = read(table + idx * 8)
        except (struct.error, IndexError, ValueError) as ex:
            w.stopped_at, w.reason = level, f"table {table:#x} outside memory ({ex})"
            return w
        w.steps.append(WalkStep(level, table, idx, e))
        if not e & abi.PTE_P:
            w.stopped_at = level
            w.reason = (f"level-{level} entry is a handle slot" if e & abi.PTE_SLOT
                        else f"level-{level} entry not present")
            return w
        rights &= e
        nx |= e & abi.PTE_NX
        if e & abi.PTE_PS and level != 1:
            if level == 4:
                w.stopped_at, w.reason = 4, _RSVD_PS[4]
                return w
            size = 1 << SHIFT[level]
            w.present, w.size = True, size
            w.pa = leaf_addr(e, size) | (va & (size - 1))
            w.rights = (rights & (abi.PTE_W | abi.PTE_U)) | nx | \
                (e & (abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G))
            return w
        table = e & abi.PTE_ADDR
    w.present, w.size = True, SIZE_4K
    w.pa = (e & abi.PTE_ADDR) | (va & (SIZE_4K - 1))
    w.rights = (rights & (abi.PTE_W | abi.PTE_U)) | nx | \
        (e & (abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G))
    return w
    # LAB 2 END


@dataclass(frozen=True)
class Mapping:
    va: int             # canonical
    pa: int
    size: int           # bytes (a folded run may be many pages)
    rights: int

    def __iter__(self):         # so `for va, pa, size, rights in iter_mappings(...)` works
        return iter((self.va, self.pa, self.size, self.rights))

    def __str__(self) -> str:
        return (f"{self.va:#018x}-{self.va + self.size:#018x} -> {self.pa:#x} "
                f"{rights_str(self.rights)}")


def _linear_bound(va: int, upper: bool) -> int:
    if upper and va > MASK64 - PAGE + 1:
        return LINEAR
    if upper and va == abi.USER_TOP:
        return 1 << 47
    if not is_canonical(va):
        raise ValueError(f"{va:#x} is not a canonical address")
    return va & LINEAR_MASK


def iter_mappings(mem, cr3: int, lo: int = 0, hi: int = 1 << 64, *,
                  fold: bool = True) -> Iterator[Mapping]:
    """Yield the mappings of [lo, hi) as ``Mapping(va, pa, size, rights)`` in address order
    (a Mapping unpacks as the tuple ``va, pa, size, rights``; va is canonical, rights are
    the effective ones as in :class:`Walk`).

    With ``fold`` (default) consecutive pages whose va and pa are both contiguous and whose
    rights are equal come out as one run; ``fold=False`` yields one item per leaf entry.
    Each table page is read once, whole; runs of 4 KiB leaves in arithmetic progression are
    recognised with big-integer compares, so a 2 GiB window costs milliseconds."""
    lo_l = _linear_bound(lo, False)
    hi_l = _linear_bound(hi, True)
    if hi_l <= lo_l:
        return
    read_raw = _raw_reader(mem)
    unpack = struct.Struct("<512Q").unpack
    cache: dict[int, bytes] = {}

    def raw_table(t: int) -> bytes | None:
        r = cache.get(t)
        if r is None:
            try:
                r = read_raw(t)
            except (struct.error, IndexError, ValueError):
                return None
            cache[t] = r
        return r

    run: list[int] | None = None     # [va_linear, pa, size, rights]

    def gen(table: int, level: int, base: int, rights: int, nx: int):
        raw = raw_table(table)
        if raw is None:
            return
        shift = SHIFT[level]
        span = 1 << shift
        i0 = max(0, (lo_l - base) >> shift) if lo_l > base else 0
        i1 = min(ENTRIES, ((hi_l - base + span - 1) >> shift))
        if level == 1:
            yield from leaf_runs(raw, i0, i1, base, rights, nx)
            return
        ents = unpack(raw)
        for i in range(i0, i1):
            e = ents[i]
            if not e & 1:
                continue
            va = base + (i << shift)
            r = rights & e
            n = nx | (e & abi.PTE_NX)
            if e & abi.PTE_PS and level in (2, 3):
                attrs = (r & (abi.PTE_W | abi.PTE_U)) | n | \
                    (e & (abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G))
                pa = leaf_addr(e, span)
                s, t_end = max(va, lo_l), min(va + span, hi_l)     # clip to [lo, hi)
                yield s, pa + (s - va), t_end - s, attrs
            elif e & abi.PTE_PS:
                continue            # PS in a PML4 entry: reserved, not a mapping
            else:
                yield from gen(e & abi.PTE_ADDR, level - 1, va, r, n)

    def leaf_runs(raw: bytes, i0: int, i1: int, base: int, rights: int, nx: int):
        """Runs of 4 KiB leaves: entries in arithmetic progression (same flags, contiguous
        frames) are found with big-integer compares (whole table first, else galloping), so
        a full table costs a few C-level operations instead of 512 Python iterations."""
        big = int.from_bytes(raw, "little")     # the whole table as one integer
        if i0 == 0 and i1 == ENTRIES:
            e = big & MASK64
            r, s12, _ = _progression(ENTRIES)
            if e & 1 and big == e * r + s12:
                attrs = (rights & e & (abi.PTE_W | abi.PTE_U)) | nx | (e & abi.PTE_NX) | \
                    (e & (abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G))
                s, t_end = max(base, lo_l), min(base + ENTRIES * PAGE, hi_l)
                pa = (e & abi.PTE_ADDR) + (s - base)
                if not fold:
                    for k in range(s, t_end, PAGE):
                        yield k, pa + (k - s), min(PAGE, t_end - k), attrs
                else:
                    yield s, pa, t_end - s, attrs
                return
        ents = unpack(raw)
        i = i0
        while i < i1:
            e = ents[i]
            if not e & 1:
                i += 1
                continue
            m = 1                           # ents[i:i+m] is a progression
            avail = i1 - i
            if avail > 1 and ents[i + 1] == e + PAGE:
                window = big >> (64 * i)

                def is_run(k: int) -> bool:
                    r, s12, mask = _progression(k)
                    return window & mask == e * r + s12

                if is_run(avail):
                    m = avail
                else:                       # gallop, then bisect
                    m = 2
                    while m * 2 < avail and is_run(m * 2):
                        m *= 2
                    hi_m = min(2 * m, avail)    # known to fail
                    while hi_m - m > 1:
                        mid = (m + hi_m) // 2
                        if is_run(mid):
                            m = mid
                        else:
                            hi_m = mid
            va = base + (i << 12)
            attrs = (rights & e & (abi.PTE_W | abi.PTE_U)) | nx | (e & abi.PTE_NX) | \
                (e & (abi.PTE_PCD | abi.PTE_PWT | abi.PTE_G))
            s, t_end = max(va, lo_l), min(va + m * PAGE, hi_l)
            pa = (e & abi.PTE_ADDR) + (s - va)
            if not fold:
                for k in range(s, t_end, PAGE):
                    yield k, pa + (k - s), min(PAGE, t_end - k), attrs
            else:
                yield s, pa, t_end - s, attrs
            i += m

    for va, pa, size, attrs in gen(cr3 & abi.PTE_ADDR, 4, 0, abi.PTE_W | abi.PTE_U, 0):
        if not fold:
            yield Mapping(canonical(va), pa, size, attrs)
            continue
        if run is not None and run[0] + run[2] == va and run[1] + run[2] == pa \
                and run[3] == attrs and va != 1 << 47:      # never fold across the hole
            run[2] += size
            continue
        if run is not None:
            yield Mapping(canonical(run[0]), run[1], run[2], run[3])
        run = [va, pa, size, attrs]
    if run is not None:
        yield Mapping(canonical(run[0]), run[1], run[2], run[3])


def entry_fields() -> list[str]:
    """Names of the :class:`Entry` fields (for the console)."""
    return [f.name for f in fields(Entry)]
