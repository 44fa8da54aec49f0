"""The virtual IOMMU: every device DMA is translated through its owner's page tables.

Shared virtual addressing (Intel SVA / AMD GCR3, anchors-exokernel.md 2.5) with no
IOMMU state of its own: a device function's *domain* is the page-table tree of the
address space that holds its register page.  The kernel writes those tables (the
five system calls) and nobody else can, so "only the kernel programs the IOMMU"
holds by construction: MAP grants a page to the CPU and to the holder's devices at
once, RELEASE revokes both.  See docs/DEVICES.md.

    iommu = Iommu(mem, ram_bytes, init_root)
    root = iommu.find_owner(frame_pa, probe)      # bind: the unique holder
    runs = iommu.translate(root, va, n, IOMMU_W, endpoint)   # [(pa, len), ...]
      -> raises IommuFault(record) if any byte is not DMA-able with that access

Rules (exactly the CPU's, for a user-mode access by the owner):

* the address is canonical and below ``USER_LIMIT`` (the kernel half, the gate's
  slot, the self-map and the frame-table window are never reachable);
* every level is present and has U (kernel memory has no U bit);
* for a device *write* (a disk read lands in memory) every level has W;
* the frame is RAM (below ``ram_bytes``) typed ``FT_DATA`` in the frame table:
  no page table, no root, no device page (no peer-to-peer DMA).

Each refusal is an :class:`IommuRecord` (endpoint, address, access, reason), kept
in :attr:`Iommu.faults` for the VMM (``report()``) and handed to the device, which
delivers it to the owning libOS.
"""
from __future__ import annotations

import collections
import struct
import threading
import time
from dataclasses import dataclass

from vmm import abi

try:                                    # vectorised translation of large ranges
    import numpy as _np
except ImportError:                     # pragma: no cover - the pure path does it all
    _np = None

_U64 = struct.Struct("<Q")
_FAULT = struct.Struct("<QIIIIQ")
assert _FAULT.size == abi.FAULT_REC

REASONS = {abi.IOMMU_NOT_MAPPED: "not mapped", abi.IOMMU_READ_ONLY: "read-only",
           abi.IOMMU_KERNEL: "kernel memory", abi.IOMMU_NOT_RAM: "not RAM"}
PAGE = abi.PAGE
_LEAF_ADDR = abi.PTE_ADDR
_AD = abi.PTE_A | abi.PTE_D                   # set by the CPU: ignored when comparing runs
_DATA_TYPES = bytes([abi.FT_DATA]) * 512
_RUNS: dict[int, tuple[int, int, int]] = {}


def _run_consts(k: int) -> tuple[int, int, int]:
    """(R, S, M) for k packed u64 entries: entries e, e+4096, ... pack to e*R + S, and
    M clears the A/D bits of every entry (pagetable.py's progression trick)."""
    c = _RUNS.get(k)
    if c is None:
        r = ((1 << (64 * k)) - 1) // ((1 << 64) - 1)
        step = sum((i * PAGE) << (64 * i) for i in range(k))
        mask = (((1 << 64) - 1) & ~_AD) * r
        c = _RUNS[k] = (r, step, mask)
    return c


@dataclass
class IommuRecord:
    endpoint: int           # the device function (disk VF number)
    address: int            # the virtual address the device used
    access: int             # IOMMU_R (device reads memory) / IOMMU_W (device writes)
    reason: int             # IOMMU_*
    root: int               # the domain: the owner's root (0 if none)
    seq: int = 0
    when: float = 0.0

    def pack(self) -> bytes:
        return _FAULT.pack(self.address, self.endpoint, self.access, self.reason,
                           self.seq & 0xFFFF_FFFF, 0)

    def __str__(self) -> str:
        acc = "write" if self.access & abi.IOMMU_W else "read"
        return (f"fault #{self.seq}: vf {self.endpoint} {acc} at {self.address:#x}: "
                f"{REASONS.get(self.reason, self.reason)} (domain root {self.root:#x})")


class IommuFault(Exception):
    def __init__(self, record: IommuRecord):
        super().__init__(str(record))
        self.record = record


class Iommu:
    """Translation and fault log over guest RAM (any buffer indexed by guest-physical)."""

    def __init__(self, mem, ram_bytes: int, init_root: int, keep: int = 1000):
        self.view = memoryview(mem.view if hasattr(mem, "view") else mem)
        self.ram_bytes = ram_bytes
        self.init_root = init_root
        self.nframes = ram_bytes // PAGE + abi.DEV_PAGES
        self.faults: collections.deque[IommuRecord] = collections.deque(maxlen=keep)
        self.fault_count = 0
        self.translations = 0
        self.devices: list = []         # devices that DMA through us (for reports)
        self._ft = None                 # numpy view of the frame table
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- memory
    def _u64(self, pa: int) -> int:
        if pa < 0 or pa + 8 > self.ram_bytes:
            raise ValueError(pa)
        return _U64.unpack_from(self.view, pa)[0]

    def frame_type(self, pfn: int) -> int:
        if not 0 <= pfn < self.nframes:
            return -1
        return (self._u64(abi.FRAMES_PHYS + pfn * 8) >> abi.FT_TYPE_SHIFT) & 0xFF

    def leaf(self, root: int, va: int) -> tuple[int, int] | None:
        """(pa of va's 4 KiB frame, effective rights W|U) through root, or None."""
        if not 0 <= va < abi.USER_LIMIT:
            return None
        table = root & _LEAF_ADDR
        rights = abi.PTE_W | abi.PTE_U
        for shift in (39, 30, 21, 12):
            try:
                e = self._u64(table + ((va >> shift) & 511) * 8)
            except ValueError:
                return None
            if not e & abi.PTE_P:
                return None
            rights &= e
            if shift in (30, 21) and e & abi.PTE_PS:
                size = 1 << shift
                return ((e & _LEAF_ADDR & ~(size - 1)) | (va & (size - 1) & ~(PAGE - 1)),
                        rights & (abi.PTE_W | abi.PTE_U))
            table = e & _LEAF_ADDR
        return table, rights & (abi.PTE_W | abi.PTE_U)

    # ---------------------------------------------------------------- domains
    def roots(self) -> list[int]:
        """Every address space: init's root and, depth first, the roots named by the
        handle slots (PML4 entries 258..383: not present, PTE_SLOT, root in the address)."""
        out, todo, seen = [], [self.init_root], set()
        while todo:
            r = todo.pop()
            if r in seen or self.frame_type(r >> 12) != abi.FT_ROOT:
                continue
            seen.add(r)
            out.append(r)
            for h in range(2, abi.MAX_HANDLES):
                e = self._u64(r + (abi.PML4_HANDLE0 + h) * 8)
                if e & abi.PTE_SLOT and not e & abi.PTE_P:
                    todo.append(e & _LEAF_ADDR)
        return out

    def holds(self, root: int, va: int, frame_pa: int) -> bool:
        """Does root map frame_pa at va, user and writable (a live binding)?"""
        if self.frame_type(root >> 12) != abi.FT_ROOT:
            return False
        lf = self.leaf(root, va)
        return lf is not None and lf[0] == frame_pa and lf[1] == abi.PTE_W | abi.PTE_U

    def find_owner(self, frame_pa: int, probe) -> list[int]:
        """Roots for which probe(root) is true (the device's binding test), searched
        through the whole address-space tree.  The caller wants exactly one."""
        return [r for r in self.roots() if probe(r)]

    # ---------------------------------------------------------------- translation
    def check_page(self, root: int, va: int, access: int) -> int | int:
        """pa of the page at va (page aligned) or -reason."""
        if not 0 <= va < abi.USER_LIMIT:
            return -abi.IOMMU_KERNEL
        lf = self.leaf(root, va)
        if lf is None:
            return -abi.IOMMU_NOT_MAPPED
        pa, rights = lf
        # LAB 5 BEGIN
        if not rights & abi.PTE_U:
            return -abi.IOMMU_KERNEL
        if access & abi.IOMMU_W and not rights & abi.PTE_W:
            return -abi.IOMMU_READ_ONLY
        # LAB 5 END
        if pa + PAGE > self.ram_bytes or self.frame_type(pa >> 12) != abi.FT_DATA:
            return -abi.IOMMU_NOT_RAM
        return pa

    def _upper(self, root: int, va: int, access: int) -> int | None:
        """Physical address of the PT covering va if every upper level allows the
        access (P, U, and W for a device write; no large page), else None."""
        need = abi.PTE_P | abi.PTE_U | (abi.PTE_W if access & abi.IOMMU_W else 0)
        table = root & _LEAF_ADDR
        for shift in (39, 30, 21):
            try:
                e = self._u64(table + ((va >> shift) & 511) * 8)
            except ValueError:
                return None
            if e & need != need or e & abi.PTE_PS:
                return None
            table = e & _LEAF_ADDR
        return table if table + PAGE <= self.ram_bytes else None

    def _translate_run(self, root: int, va: int, n: int, access: int):
        """The common case in one compare: [va, va+n) inside one page table, mapped to
        physically contiguous frames with identical rights (A/D bits aside), all FT_DATA.
        Returns [(pa, n)] or None (then the general paths decide)."""
        end = va + n
        if va < 0 or end > abi.USER_LIMIT or (va >> 21) != ((end - 1) >> 21):
            return None
        pt = self._upper(root, va, access)
        if pt is None:
            return None
        need = abi.PTE_P | abi.PTE_U | (abi.PTE_W if access & abi.IOMMU_W else 0)
        i0 = (va >> 12) & 511
        k = ((end - 1) >> 12) - (va >> 12) + 1
        raw = self.view[pt + i0 * 8:pt + (i0 + k) * 8]
        e0 = _U64.unpack_from(raw, 0)[0] & ~_AD
        if e0 & need != need or e0 & abi.PTE_PS:
            return None
        r, step, mask = _run_consts(k)
        if int.from_bytes(raw, "little") & mask != e0 * r + step:
            return None
        pa0 = e0 & _LEAF_ADDR
        if pa0 + k * PAGE > self.ram_bytes:
            return None
        ft = self.view[abi.FRAMES_PHYS + (pa0 >> 12) * 8 + 4:
                       abi.FRAMES_PHYS + (pa0 >> 12) * 8 + k * 8:8]
        if ft.tobytes() != _DATA_TYPES[:k]:
            return None
        return [(pa0 + (va & (PAGE - 1)), n)]

    def _translate_np(self, root: int, va: int, n: int, access: int, endpoint: int):
        """The same rules as check_page, a page table (2 MiB) at a time with numpy.
        Returns runs, or None to let the page-at-a-time path find the fault."""
        need = abi.PTE_P | abi.PTE_U | (abi.PTE_W if access & abi.IOMMU_W else 0)
        if self._ft is None:
            self._ft = _np.frombuffer(self.view, dtype="<u8", count=self.nframes,
                                      offset=abi.FRAMES_PHYS)
        runs: list[tuple[int, int]] = []
        end = va + n
        if va < 0 or end > abi.USER_LIMIT:
            return None
        while va < end:
            stop = min(end, (va | ((1 << 21) - 1)) + 1)
            pt = self._upper(root, va, access)
            if pt is None:
                return None
            i0 = (va >> 12) & 511
            k = ((stop - 1) >> 12) - (va >> 12) + 1
            e = _np.frombuffer(self.view, dtype="<u8", count=k, offset=pt + i0 * 8)
            if ((e & need) != need).any():
                return None
            pas = e & _LEAF_ADDR
            if int(pas.max()) + PAGE > self.ram_bytes:
                return None
            if ((self._ft[pas >> 12] >> abi.FT_TYPE_SHIFT) & 0xFF != abi.FT_DATA).any():
                return None
            breaks = _np.nonzero(_np.diff(pas.astype(_np.int64)) != PAGE)[0]
            first = int(pas[0]) + (va & (PAGE - 1))
            starts = [0] + [int(b) + 1 for b in breaks]
            for j, s0 in enumerate(starts):
                s1 = starts[j + 1] if j + 1 < len(starts) else k
                lo = first if s0 == 0 else int(pas[s0])
                hi = int(pas[s1 - 1]) + PAGE
                if s1 == k:
                    hi = int(pas[k - 1]) + ((stop - 1) & (PAGE - 1)) + 1
                if runs and runs[-1][0] + runs[-1][1] == lo:
                    runs[-1] = (runs[-1][0], runs[-1][1] + hi - lo)
                else:
                    runs.append((lo, hi - lo))
            va = stop
        return runs

    def translate(self, root: int, va: int, n: int, access: int, endpoint: int,
                  cache: dict | None = None) -> list[tuple[int, int]]:
        """Physical runs covering [va, va+n) for a DMA with `access`, or IommuFault
        (nothing is transferred: the whole range is checked first)."""
        runs: list[tuple[int, int]] = []
        self.translations += 1
        if n > 2 * PAGE:
            fast = self._translate_run(root, va, n, access)
            if fast is not None:
                return fast
        if _np is not None and n > 4 * PAGE:
            fast = self._translate_np(root, va, n, access, endpoint)
            if fast is not None:
                return fast
        end = va + n
        while va < end:
            page = va & ~(PAGE - 1)
            key = (page, access)
            pa = cache.get(key) if cache is not None else None
            if pa is None:
                pa = self.check_page(root, page, access)
                if pa < 0:
                    raise IommuFault(self.record(endpoint, va, access, -pa, root))
                if cache is not None:
                    cache[key] = pa
            k = min(end, page + PAGE) - va
            p = pa + (va - page)
            if runs and runs[-1][0] + runs[-1][1] == p:
                runs[-1] = (runs[-1][0], runs[-1][1] + k)
            else:
                runs.append((p, k))
            va += k
        return runs

    def record(self, endpoint: int, address: int, access: int, reason: int,
               root: int) -> IommuRecord:
        with self._lock:
            self.fault_count += 1
            rec = IommuRecord(endpoint, address, access, reason, root, self.fault_count,
                              time.time())
            self.faults.append(rec)
        return rec

    def report(self) -> str:
        """Text for the console's `iommu` command."""
        lines = [f"iommu: shared virtual addressing, {self.translations} translations, "
                 f"{self.fault_count} faults"]
        lines += [f"  {r}" for r in list(self.faults)[-20:]]
        return "\n".join(lines)


    def inspect(self) -> dict:
        """For the inspection console's `iommu` command (vmm/inspect.py)."""
        return {"iommu": "shared virtual addressing", "translations": self.translations,
                "faults": self.fault_count,
                "records": [{"seq": r.seq, "endpoint": r.endpoint, "address": r.address,
                             "access": r.access, "reason": REASONS.get(r.reason, r.reason),
                             "root": r.root} for r in list(self.faults)[-50:]],
                "message": self.report() + "".join(
                    "\n" + d.report() for d in self.devices)}


def iommu_for(machine) -> Iommu:
    """The machine's IOMMU (one per machine, created by the first device that DMAs)."""
    io = getattr(machine, "iommu", None)
    if io is None:
        io = Iommu(machine.mem, machine.ram_bytes, machine.boot.bootinfo.root_phys)
        machine.iommu = io
    return io
