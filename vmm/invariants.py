"""The kernel's invariants, checked from the host over a whole machine's memory.

Walks every address space reachable from the root through the handle slots
(the process tree lives in the page tables) and checks what docs/SYSCALLS.md
promises:

- every user leaf is user-accessible and maps a DATA or DEVICE frame (device
  pages uncached); every DATA/DEVICE frame's count equals the number of leaves
  that map it, in all address spaces together, and no DATA frame is lost
  (count 0);
- every page-table page is typed TABLE with count 1 and used exactly once; no
  table, root or kernel frame is ever mapped by a user leaf;
- ROOT frames are exactly the reachable roots, each with count
  1 + its tables + its leaves; each child's slot 1 names its parent; the kernel
  half of every PML4 is what AS_CREATE writes;
- the big kernel lock is free.

Used by tests after stress runs; `check(mem, ...)` returns a list of problems.
"""
from __future__ import annotations

import struct
from collections import Counter

from . import abi
from .bootimage import kernel_half

P, W, U, PCD, PS = abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_PCD, abi.PTE_PS
AD = abi.PTE_A | abi.PTE_D


def _table(mem, phys: int) -> tuple[int, ...]:
    return struct.unpack_from("<512Q", mem, phys)


def _walk_as(mem, root: int, tables: list[int], leaves: Counter, problems: list[str]) -> int:
    """Collect one address space's table pages and leaf frames; returns its leaf count."""
    n = 0
    pml4 = _table(mem, root)
    for i in range(abi.PML4_GATE):
        if not pml4[i] & P:
            continue
        pdpt = pml4[i] & abi.PTE_ADDR
        tables.append(pdpt)
        for j, e2 in enumerate(_table(mem, pdpt)):
            if not e2 & P:
                continue
            if e2 & PS:
                problems.append(f"root {root:#x}: 1 GiB page at PML4[{i}] PDPT[{j}]")
                continue
            pd = e2 & abi.PTE_ADDR
            tables.append(pd)
            for k, e3 in enumerate(_table(mem, pd)):
                if not e3 & P:
                    continue
                if e3 & PS:
                    problems.append(f"root {root:#x}: 2 MiB page at {i}/{j}/{k}")
                    continue
                pt = e3 & abi.PTE_ADDR
                tables.append(pt)
                for li, e4 in enumerate(_table(mem, pt)):
                    if not e4 & P:
                        continue
                    n += 1
                    pfn = (e4 & abi.PTE_ADDR) >> 12
                    leaves[pfn] += 1
                    if not e4 & U:
                        va = (i << 39) | (j << 30) | (k << 21) | (li << 12)
                        problems.append(f"root {root:#x}: leaf {va:#x} without U")
    return n


def check(mem, ram_bytes: int, root: int, k_lock_phys: int | None = None) -> list[str]:
    """All problems found in guest-physical memory `mem` (a buffer of RAM)."""
    problems: list[str] = []
    nframes = ram_bytes // abi.PAGE + abi.DEV_PAGES
    ft = struct.unpack_from(f"<{nframes}Q", mem, abi.FRAMES_PHYS)
    ftype = [v >> abi.FT_TYPE_SHIFT for v in ft]
    fcount = [v & abi.FT_COUNT_MASK for v in ft]

    roots, parent_of, stack = [], {root: None}, [root]
    while stack:                        # the tree, from the page tables alone
        r = stack.pop()
        roots.append(r)
        slots = _table(mem, r)
        for h in range(2, abi.MAX_HANDLES):
            s = slots[abi.PML4_HANDLE0 + h]
            if not s:
                continue
            if not s & abi.PTE_SLOT or s & P:
                problems.append(f"root {r:#x}: slot {h} holds {s:#x}")
                continue
            child = s & abi.PTE_ADDR
            if child in parent_of:
                problems.append(f"root {child:#x} reachable twice")
                continue
            parent_of[child] = r
            stack.append(child)

    leaves: Counter = Counter()
    all_tables: list[int] = []
    for r in roots:
        tables: list[int] = []
        n = _walk_as(mem, r, tables, leaves, problems)
        all_tables += tables
        want = abi.frame_entry(abi.FT_ROOT, 1 + len(tables) + n)
        if ft[r >> 12] != want:
            problems.append(f"root {r:#x}: frame entry {ft[r >> 12]:#x}, want {want:#x} "
                            f"(1 + {len(tables)} tables + {n} leaves)")
        pml4 = _table(mem, r)
        parent = parent_of[r]
        half = kernel_half(r, pml4[abi.PML4_INFO] >> 1, parent)
        for i in range(abi.PML4_GATE, 512):
            if abi.PML4_HANDLE0 + 2 <= i < abi.PML4_HANDLE0 + abi.MAX_HANDLES:
                continue                # children's slots, checked above
            if pml4[i] & ~AD != half.get(i, 0):      # the CPU sets Accessed/Dirty
                problems.append(f"root {r:#x}: PML4[{i}] = {pml4[i]:#x}, want {half.get(i, 0):#x}")

    seen = Counter(all_tables)
    for t, c in seen.items():
        if c > 1:
            problems.append(f"table page {t:#x} used {c} times")
        if ft[t >> 12] != abi.frame_entry(abi.FT_TABLE, 1):
            problems.append(f"table page {t:#x}: frame entry {ft[t >> 12]:#x}")
    table_pfns = {t >> 12 for t in seen}
    root_pfns = {r >> 12 for r in roots}
    for pfn, c in leaves.items():
        if pfn >= nframes:
            problems.append(f"a leaf maps pfn {pfn:#x} beyond the frame table")
        elif ftype[pfn] not in (abi.FT_DATA, abi.FT_DEVICE):
            problems.append(f"pfn {pfn:#x} of type {ftype[pfn]} is mapped by a user leaf")
    for pfn in range(nframes):
        t = ftype[pfn]
        if t in (abi.FT_DATA, abi.FT_DEVICE):
            if fcount[pfn] != leaves.get(pfn, 0):
                problems.append(f"pfn {pfn:#x}: count {fcount[pfn]}, mapped "
                                f"{leaves.get(pfn, 0)} times")
            if t == abi.FT_DATA and fcount[pfn] == 0:
                problems.append(f"pfn {pfn:#x}: a DATA frame nobody holds (lost)")
        elif t == abi.FT_TABLE and pfn not in table_pfns:
            problems.append(f"pfn {pfn:#x} typed TABLE but in no address space")
        elif t == abi.FT_ROOT and pfn not in root_pfns:
            problems.append(f"pfn {pfn:#x} typed ROOT but unreachable")
    if k_lock_phys is not None and struct.unpack_from("<I", mem, k_lock_phys)[0]:
        problems.append("the kernel lock is held")
    return problems
