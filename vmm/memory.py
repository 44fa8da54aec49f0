"""Guest physical memory and page-table walks.

GuestMemory is one anonymous mmap (MAP_NORESERVE) of ram_bytes that becomes KVM
slot 0 at guest-physical 0.  Reads return memoryview slices (no copies).  The
page walk works for any CR3 (4 KiB and 2 MiB pages; 1 GiB pages too), over any
object with `read_u64(pa)`, so tests can walk hand-built tables in a bytearray.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from vmm import abi

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class GuestMemoryError(Exception):
    """A guest-physical access outside RAM."""


class GuestMemory:
    """Guest RAM at guest-physical [0, size)."""

    def __init__(self, size: int, buffer=None):
        if size <= 0 or size % abi.PAGE:
            raise ValueError(f"guest RAM size {size:#x} is not a positive multiple of 4 KiB")
        self.size = size
        if buffer is None:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
            self._mmap = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            buffer = self._mmap
        else:
            self._mmap = None
            if len(buffer) < size:
                raise ValueError("buffer smaller than size")
        self.view = memoryview(buffer)
        self._cdata = None

    @classmethod
    def from_buffer(cls, buf) -> "GuestMemory":
        """Wrap an existing buffer (bytearray...) e.g. for tests."""
        return cls(len(buf), buffer=buf)

    @property
    def host_addr(self) -> int:
        """Host virtual address of guest-physical 0 (for KVM_SET_USER_MEMORY_REGION)."""
        from vmm.kvm import ffi
        if self._cdata is None:
            self._cdata = ffi.from_buffer(self.view)
        return int(ffi.cast("unsigned long", self._cdata))

    def _check(self, pa: int, n: int):
        if pa < 0 or n < 0 or pa + n > self.size:
            raise GuestMemoryError(f"guest-physical access {pa:#x}+{n:#x} outside RAM (size {self.size:#x})")

    def contains(self, pa: int, n: int = 1) -> bool:
        return 0 <= pa and pa + n <= self.size

    def read(self, pa: int, n: int) -> memoryview:
        self._check(pa, n)
        return self.view[pa:pa + n]

    def write(self, pa: int, data) -> None:
        n = len(data)
        self._check(pa, n)
        self.view[pa:pa + n] = data

    def read_u64(self, pa: int) -> int:
        self._check(pa, 8)
        return _U64.unpack_from(self.view, pa)[0]

    def write_u64(self, pa: int, v: int) -> None:
        self._check(pa, 8)
        _U64.pack_into(self.view, pa, v)

    def read_u32(self, pa: int) -> int:
        self._check(pa, 4)
        return _U32.unpack_from(self.view, pa)[0]

    def write_u32(self, pa: int, v: int) -> None:
        self._check(pa, 4)
        _U32.pack_into(self.view, pa, v)

    def page(self, pfn: int) -> memoryview:
        return self.read(pfn * abi.PAGE, abi.PAGE)

    # -- virtual addresses ---------------------------------------------------
    def translate(self, cr3: int, va: int) -> int | None:
        return translate(self, cr3, va)

    def read_virt(self, cr3: int, va: int, n: int) -> bytes | None:
        return read_virt(self, cr3, va, n)

    def close(self):
        if self._cdata is not None:
            from vmm.kvm import ffi
            ffi.release(self._cdata)
            self._cdata = None
        self.view.release()
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:     # a device still holds a view: the GC unmaps it later
                pass
            self._mmap = None


# --------------------------------------------------------------------------
# Page walk (4-level, long mode)
# --------------------------------------------------------------------------
@dataclass
class WalkStep:
    level: int          # 4 = PML4 ... 1 = PT
    table: int          # physical address of the table
    index: int
    entry: int

    @property
    def present(self) -> bool:
        return bool(self.entry & abi.PTE_P)

    def flags(self) -> str:
        e = self.entry
        out = []
        for bit, name in ((abi.PTE_P, "P"), (abi.PTE_W, "W"), (abi.PTE_U, "U"),
                          (abi.PTE_PWT, "PWT"), (abi.PTE_PCD, "PCD"), (abi.PTE_A, "A"),
                          (abi.PTE_D, "D"), (abi.PTE_PS, "PS"), (abi.PTE_G, "G"),
                          (abi.PTE_SLOT, "SLOT"), (abi.PTE_NX, "NX")):
            if e & bit:
                out.append(name)
        return " ".join(out)


@dataclass
class Walk:
    va: int
    steps: list[WalkStep]
    phys: int | None        # None: not mapped (or a table outside RAM)
    page_size: int = 0
    writable: bool = False
    user: bool = False
    nx: bool = False
    error: str = ""


_LEVEL_NAMES = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


def walk(mem, cr3: int, va: int) -> Walk:
    """Walk the 4-level page tables rooted at cr3 for va (any object with read_u64)."""
    table = cr3 & abi.PTE_ADDR
    steps: list[WalkStep] = []
    writable = user = True
    nx = False
    for level in (4, 3, 2, 1):
        index = (va >> (12 + 9 * (level - 1))) & 0x1FF
        try:
            entry = mem.read_u64(table + index * 8)
        except Exception:
            return Walk(va, steps, None, error=f"{_LEVEL_NAMES[level]} at {table:#x} is outside RAM")
        step = WalkStep(level, table, index, entry)
        steps.append(step)
        if not entry & abi.PTE_P:
            return Walk(va, steps, None, error=f"{_LEVEL_NAMES[level]}[{index}] not present")
        writable = writable and bool(entry & abi.PTE_W)
        user = user and bool(entry & abi.PTE_U)
        nx = nx or bool(entry & abi.PTE_NX)
        if level in (3, 2) and entry & abi.PTE_PS:
            size = 1 << (12 + 9 * (level - 1))
            base = entry & abi.PTE_ADDR & ~(size - 1)
            return Walk(va, steps, base | (va & (size - 1)), size, writable, user, nx)
        table = entry & abi.PTE_ADDR
    return Walk(va, steps, table | (va & 0xFFF), abi.PAGE, writable, user, nx)


def translate(mem, cr3: int, va: int) -> int | None:
    return walk(mem, cr3, va).phys


def read_virt(mem, cr3: int, va: int, n: int) -> bytes | None:
    """Read n bytes at virtual va through cr3; None if any page is unmapped."""
    out = bytearray()
    while n > 0:
        pa = translate(mem, cr3, va)
        chunk = min(n, abi.PAGE - (va & 0xFFF))
        if pa is None:
            return None
        try:
            out += mem.read(pa, chunk)
        except Exception:
            return None
        va += chunk
        n -= chunk
    return bytes(out)


def format_walk(w: Walk) -> str:
    lines = [f"walk {w.va:#018x}:"]
    for s in w.steps:
        lines.append(f"  {_LEVEL_NAMES[s.level]:<4}[{s.index:3}] @ {s.table + s.index * 8:#x} = "
                     f"{s.entry:#018x}  {s.flags()}")
    if w.phys is None:
        lines.append(f"  -> not mapped ({w.error})")
    else:
        lines.append(f"  -> phys {w.phys:#x} ({w.page_size // 1024} KiB page"
                     f"{', W' if w.writable else ', RO'}{', U' if w.user else ', S'}"
                     f"{', NX' if w.nx else ''})")
    return "\n".join(lines)
