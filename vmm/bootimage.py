"""Everything the host does before the guest's first instruction.

:func:`build_boot_state` turns a kernel image and the program ELFs into a :class:`BootState`:
the ``(phys, bytes)`` writes to copy into zeroed guest RAM (kernel image, kernel page tables,
frame table, boot-information page, init's whole address space including its window over
every free frame, the initrd) and the boot vCPU's registers (long mode, paging on, at
``kernel_start64``).  The result satisfies every invariant of docs/SYSCALLS.md, so the
kernel starts with only per-CPU register setup left to do.  For the QEMU path,
:meth:`BootState.blob` is the multiboot module the 32-bit stub copies to ``BOOTINFO_PHYS``.

Physical layout built here (all from abi.py)::

    KERNEL_PHYS     kernel image (flat, bss included)                     FT_KERNEL
    BOOTINFO_PHYS   boot info page (also init's BOOTINFO_VA, read-only)   FT_DATA 1
    KTABLES_PHYS    KT_* kernel tables, gate page + its tables,           FT_KERNEL
                    frame-table PTs, QEMU boot PML4
    FRAMES_PHYS     frame table: nframes RAM + DEV_PAGES device entries   FT_KERNEL
    then            init: PML4 (FT_ROOT), its tables (FT_TABLE 1), its data pages
                    (FT_DATA 1), then the window's tables               -- first_free_pfn
    first_free ..   free frames, each mapped once in init's window (RWX)  FT_DATA 1
    ram_bytes ..    DEV_PAGES device pages                                FT_DEVICE 1
"""
from __future__ import annotations

import io
import struct
from array import array
from dataclasses import dataclass, field
from typing import Mapping

from . import abi, initrd
from .pagetable import FrameAllocator, MappingError, PageTables, PhysMem, indices

PAGE = abi.PAGE

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (1 << 0, 1 << 1, 1 << 4, 1 << 5,
                                                          1 << 16, 1 << 18, 1 << 31)
CR4_PAE, CR4_PGE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 7, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

BOOT_CR0 = CR0_PG | CR0_AM | CR0_WP | CR0_NE | CR0_ET | CR0_MP | CR0_PE      # 0x80050033
BOOT_CR4 = CR4_PAE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT
BOOT_EFER = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE
assert BOOT_CR0 == 0x80050033

IOMAP_QEMU = 104        # TSS I/O bitmap right after the 104-byte TSS: ring 3 may use ports
IOMAP_NONE = 0xFFFF     # beyond the TSS limit: no I/O bitmap, ring 3 gets #GP on in/out

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192

P, W, U, NX, PCD = abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_NX, abi.PTE_PCD
USER_RO = U | NX                 # leaf rights (P is added by the builder)
USER_RW = U | W | NX
USER_DEV = U | W | NX | PCD
# Rights of a free frame in the root's window: every right (R, W, X), exactly what the
# kernel's frame_home writes when a frame comes home (pagetable.s: P|W|U).  MAP never
# amplifies rights, so the root must hold free memory executable for anyone to map code;
# it narrows the rights when it hands pages out.  Device pages: uncached, never executable.
WINDOW_RIGHTS = U | W
WINDOW_DEV_RIGHTS = USER_DEV


class ImageError(ValueError):
    """The inputs cannot make a bootable image (the message says which and why)."""


# --------------------------------------------------------------------------
# The kernel half of every PML4.
# --------------------------------------------------------------------------
def _pml4e(name: str, default: int) -> int:
    """A PML4 entry value the kernel's assembly uses (abi's generated list), so AS_CREATE
    and this module agree by construction."""
    return dict(abi._items()).get(name, default)


def kernel_half(root_phys: int, entry: int, parent_root: int | None = None) -> dict[int, int]:
    """The kernel-owned PML4 entries of a new address space (index PML4_GATE and 256..511),
    as ``{index: value}``; every other index from PML4_GATE up is 0.  The kernel's
    ``AS_CREATE`` writes exactly the same:

    ==========  ===================================  ====================================
    index       value                                meaning
    ==========  ===================================  ====================================
    255         ``GATE_PML4E`` = KT_GATE_PDPT|P|U    the PVM gate page at GATE_VA (last
                                                     user page; read-only, executable)
    256         ``entry << 1``                       not present: the AS's entry point
                                                     (bit 0 clear; other bits, even
                                                     PTE_SLOT, are just the address)
    257         ``parent_root | PTE_SLOT``           handle 1 = parent (not present);
                                                     absent for the root (init)
    258..383    0                                    child handle slots (kernel-written)
    384         ``USERWIN_PML4E`` = KT_UW_PDPT|P|U   user window: frame table, read-only
    385..509    0
    510         ``root_phys | P | U | NX``           recursive self-map, read-only
    511         ``KERNEL_PML4E`` (KT_PDPT|P|W|U)     kernel: phys 0..2 GiB at KBASE;
                                                     supervisor at the leaves
    ==========  ===================================  ====================================
    """
    if not 0 <= entry < abi.USER_LIMIT:
        raise ValueError(f"entry point {entry:#x} is not a user address below USER_LIMIT")
    if root_phys & (PAGE - 1):
        raise ValueError(f"root {root_phys:#x} is not page aligned")
    half = {
        abi.PML4_GATE: _pml4e("GATE_PML4E", abi.KT_GATE_PDPT | P | U),
        abi.PML4_INFO: entry << 1,
        abi.PML4_USERWIN: _pml4e("USERWIN_PML4E", abi.KT_UW_PDPT | P | U),
        # LAB 2 BEGIN
        abi.PML4_SELF: root_phys | P | U | NX,
        # LAB 2 END
        abi.PML4_KERNEL: _pml4e("KERNEL_PML4E", abi.KT_PDPT | P | W),
    }
    if parent_root is not None:
        half[abi.PML4_HANDLE0 + abi.AS_PARENT] = parent_root | abi.PTE_SLOT
    return half


def root_count(leaves: int, tables: int) -> int:
    """Frame-table count of a ROOT frame: the pages the address space holds, counted as the
    kernel does -- 1 for the PML4 itself (AS_CREATE types it FT_ROOT count 1), +1 per table
    page (CREATE), +1 per user leaf mapping (MAP; RELEASE and frames coming home adjust it).
    Table pages themselves are FT_TABLE count 1."""
    return 1 + tables + leaves


def frame_table_pages(ram_bytes: int) -> int:
    """Pages of the frame table for ram_bytes of RAM (plus the device pages)."""
    return ((ram_bytes // PAGE + abi.DEV_PAGES) * 8 + PAGE - 1) // PAGE


# --------------------------------------------------------------------------
# Boot state
# --------------------------------------------------------------------------
@dataclass
class CpuState:
    """A vCPU's first state: long mode, paging on, at kernel_start64 with
    rdi = its index, rsp = its own kernel stack, TR = its own TSS."""
    rip: int
    rsp: int
    cr3: int
    cr0: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    tss_base: int
    tss_limit: int
    index: int = 0


@dataclass
class BootState:
    ram_bytes: int
    writes: list[tuple[int, bytes]]   # (guest phys, bytes) to copy into zeroed RAM
    cpu: CpuState
    symbols: dict[str, int]           # kernel symbols + "prog:sym" of every program
    bootinfo: abi.BootInfo
    layout: dict[str, int] = field(default_factory=dict)   # named addresses, for dumps/tests
    cpus: list[CpuState] = field(default_factory=list)     # every vCPU, cpus[0] = cpu
    irqchip: bool = True              # the kernel wants a local APIC (ticks, IPIs, device IRQs)

    def blob(self) -> bytes:
        """Bytes from BOOTINFO_PHYS to the end of the last write (zero filled): the QEMU
        multiboot module that the stub copies to BOOTINFO_PHYS."""
        base = abi.BOOTINFO_PHYS
        end = max((pa + len(d) for pa, d in self.writes), default=base)
        out = bytearray(max(0, end - base))
        for pa, d in self.writes:
            if pa + len(d) <= base:
                continue
            skip = max(0, base - pa)
            out[pa + skip - base:pa + len(d) - base] = memoryview(d)[skip:]
        return bytes(out)

    def ram(self) -> bytearray:
        """Guest RAM as the VM sees it at the first instruction (tests, dumps)."""
        mem = bytearray(self.ram_bytes)
        for pa, d in self.writes:
            mem[pa:pa + len(d)] = d
        return mem


# --------------------------------------------------------------------------
# Programs
# --------------------------------------------------------------------------
PF_X, PF_W, PF_R = 1, 2, 4


@dataclass
class Segment:
    vaddr: int
    memsz: int
    data: bytes          # file part (filesz bytes); the rest up to memsz is zero
    flags: int           # PF_*


@dataclass
class Program:
    name: str
    entry: int
    segments: list[Segment]
    symbols: dict[str, int]


def load_elf(name: str, data: bytes) -> Program:
    """Parse and validate a static x86-64 ELF executable for the user half."""
    from elftools.elf.elffile import ELFFile

    what = f"program {name!r}"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{what}: expected the ELF file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:4] != b"\x7fELF":
        raise ImageError(f"{what}: not an ELF file (no \\x7fELF magic)")
    try:
        elf = ELFFile(io.BytesIO(data))
        cls, machine, etype = elf.elfclass, elf["e_machine"], elf["e_type"]
        little = elf.little_endian
        entry = elf["e_entry"]
        raw_segs = []
        for seg in elf.iter_segments():
            raw_segs.append({k: seg[k] for k in ("p_type", "p_offset", "p_vaddr",
                                                  "p_filesz", "p_memsz", "p_flags")})
        symbols: dict[str, int] = {}
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None and symtab["sh_type"] == "SHT_SYMTAB":
            strtab = elf.get_section(symtab["sh_link"])
            symbols = _symbols(name, data, symtab["sh_offset"], symtab["sh_size"],
                               strtab["sh_offset"], strtab["sh_size"])
    except ImageError:
        raise
    except Exception as e:          # pyelftools raises many kinds on corrupt input
        raise ImageError(f"{what}: corrupt ELF ({type(e).__name__}: {e})") from None
    if cls != 64 or not little:
        raise ImageError(f"{what}: not a little-endian ELF64 file")
    if machine != "EM_X86_64":
        raise ImageError(f"{what}: not x86-64 (e_machine {machine})")
    if etype != "ET_EXEC":
        raise ImageError(f"{what}: not a static executable (e_type {etype}, need ET_EXEC)")
    segs: list[Segment] = []
    for i, s in enumerate(raw_segs):
        if s["p_type"] in ("PT_INTERP", "PT_DYNAMIC"):
            raise ImageError(f"{what}: dynamically linked ({s['p_type']}); link it -static")
        if s["p_type"] != "PT_LOAD" or s["p_memsz"] == 0:
            continue
        va, memsz, filesz, off, fl = (s["p_vaddr"], s["p_memsz"], s["p_filesz"],
                                      s["p_offset"], s["p_flags"])
        if filesz > memsz:
            raise ImageError(f"{what}: segment {i} has p_filesz {filesz:#x} > p_memsz "
                             f"{memsz:#x}")
        if off + filesz > len(data):
            raise ImageError(f"{what}: segment {i} data {off:#x}+{filesz:#x} runs past the "
                             f"end of the file ({len(data):#x} bytes): truncated")
        if va < PAGE or va + memsz > abi.USER_LIMIT:
            raise ImageError(f"{what}: segment {i} at {va:#x}..{va + memsz:#x} is outside "
                             f"the user half [{PAGE:#x}, USER_LIMIT {abi.USER_LIMIT:#x})")
        if va < abi.WINDOW_VA + (1 << 39) and va + memsz > abi.WINDOW_VA:
            raise ImageError(f"{what}: segment {i} at {va:#x} overlaps the root's window "
                             f"(PML4 slot of WINDOW_VA {abi.WINDOW_VA:#x})")
        if fl & PF_W and fl & PF_X:
            raise ImageError(f"{what}: segment {i} at {va:#x} is writable and executable "
                             f"(W+X is refused)")
        segs.append(Segment(va, memsz, data[off:off + filesz], fl))
    if not segs:
        raise ImageError(f"{what}: no loadable segment")
    if not any(s.flags & PF_X and s.vaddr <= entry < s.vaddr + s.memsz for s in segs):
        raise ImageError(f"{what}: entry point {entry:#x} is not in an executable segment")
    return Program(name, entry, segs, symbols)


_SYM = struct.Struct("<IBBHQQ")          # Elf64_Sym
_STT_KEEP = {0, 1, 2}                   # NOTYPE, OBJECT, FUNC


def _symbols(prog: str, data: bytes, off: int, size: int, str_off: int,
             str_size: int) -> dict[str, int]:
    """``{"prog:name": value}`` of defined NOTYPE/OBJECT/FUNC symbols, read with struct
    (pyelftools' per-symbol parsing costs ~80% of a boot-state build)."""
    if off + size > len(data) or str_off + str_size > len(data):
        raise ImageError(f"program {prog!r}: corrupt ELF (symbol table outside the file)")
    strtab = data[str_off:str_off + str_size]
    out = {}
    for st_name, st_info, _, st_shndx, st_value, _ in _SYM.iter_unpack(
            data[off:off + size - size % _SYM.size]):
        if st_shndx == 0 or not st_value or (st_info & 0xF) not in _STT_KEEP or not st_name:
            continue
        end = strtab.find(b"\0", st_name)
        if end < 0:
            raise ImageError(f"program {prog!r}: corrupt ELF (symbol name outside strtab)")
        out[f"{prog}:{strtab[st_name:end].decode(errors='replace')}"] = st_value
    return out


def program_pages(prog: Program) -> dict[int, tuple[bytearray, int]]:
    """{page va: (contents, leaf rights)} of a program's image (bss zeroed).  Segments
    sharing a page must have the same rights."""
    pages: dict[int, tuple[bytearray, int]] = {}
    for seg in prog.segments:
        rights = U | (W if seg.flags & PF_W else 0) | (0 if seg.flags & PF_X else NX)
        first = seg.vaddr & ~(PAGE - 1)
        last = (seg.vaddr + seg.memsz + PAGE - 1) & ~(PAGE - 1)
        for pva in range(first, last, PAGE):
            if pva in pages:
                if pages[pva][1] != rights:
                    raise ImageError(f"program {prog.name!r}: page {pva:#x} is shared by "
                                     f"segments with different rights")
            else:
                pages[pva] = (bytearray(PAGE), rights)
        # copy the file part
        off = 0
        while off < len(seg.data):
            va = seg.vaddr + off
            o = va & (PAGE - 1)
            n = min(PAGE - o, len(seg.data) - off)
            pages[va - o][0][o:o + n] = seg.data[off:off + n]
            off += n
    return pages


# --------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------
def check_kernel(kernel) -> None:
    img = kernel.image
    if not isinstance(img, (bytes, bytearray)):
        raise ImageError(f"kernel image must be bytes, not {type(img).__name__}")
    if len(img) > abi.KERNEL_MAX:
        raise ImageError(f"kernel image is {len(img):#x} bytes (bss included), larger than "
                         f"KERNEL_MAX {abi.KERNEL_MAX:#x}")
    for off in range(0, min(len(img), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, csum = struct.unpack_from("<III", img, off)
        if magic == MULTIBOOT_MAGIC:
            if (magic + flags + csum) & 0xFFFFFFFF:
                raise ImageError(f"kernel image: multiboot header at {off:#x} has a bad "
                                 f"checksum (magic+flags+checksum != 0 mod 2**32)")
            break
    else:
        raise ImageError(f"kernel image: no multiboot magic {MULTIBOOT_MAGIC:#x} in its "
                         f"first {MULTIBOOT_SEARCH} bytes (4-byte aligned)")
    if not kernel.stack_tops:
        raise ImageError("kernel image: no kernel stack (stack_tops is empty)")
    if not kernel.tss:
        raise ImageError("kernel image: no TSS")


def kernel_code_end(kernel) -> int:
    """Physical end of the kernel's code: its data area starts at the GDT."""
    gdt = getattr(kernel, "symbols", {}).get("gdt")
    return gdt - abi.KBASE if gdt else abi.KERNEL_PHYS + len(kernel.image)


def build_kernel_tables(mem: PhysMem, ram_bytes: int, code_end: int = abi.KERNEL_PHYS + abi.KERNEL_MAX) -> None:
    """The kernel's page tables; [KERNEL_PHYS, code_end) is the kernel's code."""
    """The KT_* pages: kernel map, user window (gate + frame table), QEMU boot PML4."""
    kflags = P | W | abi.PTE_PS | abi.PTE_G
    two_m = 1 << 21
    # Kernel: PML4[511] -> KT_PDPT; 510 -> KT_PD0, 511 -> KT_PD1 (P|W): 2 MiB pages of phys
    # 0..2 GiB at KBASE, supervisor, global.
    mem.write_u64(abi.KT_PDPT + 510 * 8, abi.KT_PD0 | P | W)
    mem.write_u64(abi.KT_PDPT + 511 * 8, abi.KT_PD1 | P | W)
    # The kernel's view of RAM is W^X: every 2 MiB page is no-execute, except the
    # first, which is 4 KiB pages (KT_KPT): the kernel's code (and the multiboot
    # stub) read-only and executable, everything else writable, no-execute.
    nx = abi.PTE_NX
    mem.write(abi.KT_PD0, array("Q", [abi.KT_KPT | P | W] + list(
        range(kflags | nx, (kflags | nx) + 512 * two_m, two_m))[1:]))
    mem.write(abi.KT_PD1, array("Q", range((kflags | nx) + (1 << 30), (kflags | nx) + (2 << 30),
                                           two_m)))
    mem.write(abi.KT_KPT, array("Q", [
        (p | P | abi.PTE_G) if abi.KERNEL_PHYS <= p < code_end else (p | P | W | abi.PTE_G | nx)
        for p in range(0, two_m, PAGE)]))
    # The gate page (GATE_VA, the last user page): PML4[PML4_GATE] -> KT_GATE_PDPT ->
    # KT_GATE_PD -> KT_GATE_PT -> KT_GATE, all P|U (read-only; the gate is executable).
    g4, g3, g2, g1 = indices(abi.GATE_VA)
    if g4 != abi.PML4_GATE:
        raise ImageError("abi: GATE_VA must lie in PML4[PML4_GATE]")
    mem.write_u64(abi.KT_GATE_PDPT + g3 * 8, abi.KT_GATE_PD | P | U)
    mem.write_u64(abi.KT_GATE_PD + g2 * 8, abi.KT_GATE_PT | P | U)
    mem.write_u64(abi.KT_GATE_PT + g1 * 8, abi.KT_GATE | P | U)
    mem.write(abi.KT_GATE, b"\xCC" * PAGE)
    # User window: PML4[384] -> KT_UW_PDPT -> KT_UW_PD: entries 1.. -> frame-table PTs
    # (FRAMES_VA, read-only, NX).
    mem.write_u64(abi.KT_UW_PDPT, abi.KT_UW_PD | P | U)
    ft_pages = frame_table_pages(ram_bytes)
    nft_pts = (ft_pages + 511) // 512
    if abi.KT_FT_PT + nft_pts * PAGE > abi.FRAMES_PHYS:
        raise ImageError("frame-table page tables would overlap the frame table")
    if (abi.FRAMES_VA - abi.USERWIN_VA) >> 21 != 1:
        raise ImageError("abi: FRAMES_VA must be USERWIN_VA + 2 MiB (KT_UW_PD entry 1)")
    for j in range(nft_pts):
        mem.write_u64(abi.KT_UW_PD + (1 + j) * 8, (abi.KT_FT_PT + j * PAGE) | P | U)
        n = min(512, ft_pages - j * 512)
        first = abi.FRAMES_PHYS + j * 512 * PAGE + (P | U | NX)
        mem.write(abi.KT_FT_PT + j * PAGE, array("Q", range(first, first + n * PAGE, PAGE)))
    # QEMU boot: identity map of the first GiB + the kernel half
    mem.write_u64(abi.KT_BOOT_PML4, abi.KT_BOOT_PDPT | P | W)
    mem.write_u64(abi.KT_BOOT_PML4 + 511 * 8, abi.KT_PDPT | P | W)
    mem.write_u64(abi.KT_BOOT_PDPT, abi.KT_PD0 | P | W)


# --------------------------------------------------------------------------
# The boot state
# --------------------------------------------------------------------------
def _window_tables(first_free: int, end_ram: int, dev_lo: int, dev_hi: int) -> int:
    """Table pages (PDPT, PDs, PTs) of the window in a fresh PML4 slot.  They cover
    every frame, RAM and device, at home or not: the kernel's frame_home walks
    them to put a freed frame back, and never allocates."""
    total = 0
    for shift in (39, 30, 21):          # one table per block of this size
        total += ((abi.WINDOW_VA + dev_hi * PAGE - 1) >> shift) - (abi.WINDOW_VA >> shift) + 1
    return total


def build_boot_state(kernel, programs: Mapping[str, bytes], ram_bytes: int, host: int,
                     cmdline: str = "", run_mode: int = 0, tsc_khz: int = 0,
                     ncpus: int = 1, timer: bool = True) -> BootState:
    """Build guest RAM and the boot vCPU.  ``kernel`` is a ``kernel_build.KernelImage``
    (anything with its attributes); ``programs`` maps names to ELF bytes, "init" required."""
    # ---- validate ------------------------------------------------------------
    if not isinstance(ram_bytes, int) or ram_bytes % PAGE:
        raise ImageError(f"RAM size {ram_bytes!r} is not a multiple of 4 KiB")
    if not abi.MIN_RAM <= ram_bytes <= abi.MAX_RAM:
        raise ImageError(f"RAM size {ram_bytes >> 20} MiB ({ram_bytes:#x}) outside "
                         f"[{abi.MIN_RAM >> 20} MiB, {abi.MAX_RAM >> 20} MiB]")
    if host not in (abi.HOST_VMX, abi.HOST_PVM, abi.HOST_QEMU):
        raise ImageError(f"unknown host {host!r} (HOST_VMX, HOST_PVM or HOST_QEMU)")
    if not 1 <= ncpus <= abi.MAX_CPUS:
        raise ImageError(f"{ncpus} CPUs: between 1 and {abi.MAX_CPUS}")
    if host == abi.HOST_QEMU and ncpus != 1:
        raise ImageError("the QEMU multiboot path boots one CPU")
    check_kernel(kernel)
    if "init" not in programs:
        raise ImageError(f"no 'init' program (got {sorted(programs) or 'none'})")
    try:
        archive = initrd.pack(programs)
    except initrd.InitrdError as e:
        raise ImageError(str(e)) from None
    progs = {name: load_elf(name, data) for name, data in programs.items()}
    init = progs["init"]
    if host == abi.HOST_PVM:
        lstar = abi.GATE_VA
    else:
        lstar = kernel.symbols.get("syscall_entry")
        if lstar is None:
            raise ImageError("kernel image: no 'syscall_entry' symbol (needed for LSTAR)")

    nframes = ram_bytes // PAGE
    dev_pfn = nframes
    mem = PhysMem()

    # ---- kernel image and tables ------------------------------------------------
    mem.write(abi.KERNEL_PHYS, kernel.image)
    build_kernel_tables(mem, ram_bytes, kernel_code_end(kernel))
    ft_pages = frame_table_pages(ram_bytes)
    init_base = abi.FRAMES_PHYS + ft_pages * PAGE

    # ---- init's address space ----------------------------------------------------
    alloc = FrameAllocator(init_base, ram_bytes)
    data_frames: list[int] = []          # FT_DATA count 1 (besides boot info and window)

    def data(n: int = 1) -> int:
        pa = alloc.alloc(n)
        data_frames.extend(range(pa, pa + n * PAGE, PAGE))
        return pa

    try:
        pt = PageTables(mem, alloc)
        root = pt.root
        for idx, val in kernel_half(root, init.entry).items():
            mem.write_u64(root + idx * 8, val)
        leaves = 0

        def map_(va, pa, flags, n=1, what=""):
            nonlocal leaves
            try:
                pt.map(va, pa, flags, n)
            except MappingError as e:
                raise ImageError(f"init: cannot map {what} at {va:#x}: {e}") from None
            leaves += n

        for pva, (content, rights) in sorted(program_pages(init).items()):
            pa = data()
            if any(content):
                mem.write(pa, content)
            map_(pva, pa, rights, what="program page")
        map_(abi.UPCALL_VA, data(), USER_RW, what="activation frame")
        map_(abi.BOOTINFO_VA, abi.BOOTINFO_PHYS, USER_RO, what="boot info")
        con_out = data()
        con_in = data()
        map_(abi.CONSOLE_OUT_VA, con_out, USER_RW, what="console out ring")
        map_(abi.CONSOLE_IN_VA, con_in, USER_RW, what="console in ring")
        map_(abi.CONSOLE_BELL_VA, (dev_pfn + abi.DEV_CONSOLE_DOORBELL) * PAGE, USER_DEV,
             what="console doorbell")
        map_(abi.PLATFORM_VA, (dev_pfn + abi.DEV_PLATFORM) * PAGE, USER_DEV,
             what="platform page")
        stack = data(abi.STACK_PAGES)
        map_(abi.STACK_TOP - abi.STACK_PAGES * PAGE, stack, USER_RW, abi.STACK_PAGES,
             what="stack")
        rd_pages = (len(archive) + PAGE - 1) // PAGE
        rd = data(rd_pages)
        mem.write(rd, archive)
        map_(abi.INITRD_VA, rd, USER_RO, rd_pages, what="initrd")

        # ---- the window: tables first, then every frame above them -----------------
        win_idx = (abi.WINDOW_VA >> 39) & 511
        if mem.read_u64(root + win_idx * 8):
            raise ImageError("init: the window's PML4 slot is already in use")
        dev_lo = dev_pfn + max(abi.DEV_CONSOLE_DOORBELL, abi.DEV_PLATFORM) + 1
        dev_hi = dev_pfn + abi.DEV_PAGES
        if {abi.DEV_CONSOLE_DOORBELL, abi.DEV_PLATFORM} != {0, 1}:
            raise ImageError("abi: the window assumes device pages 0 and 1 are mapped apart")
        c = alloc.next // PAGE
        # smallest k with tables(c + k) <= k: k frames for tables, the window above them
        k = _window_tables(c, nframes, dev_lo, dev_hi)
        while k > 0 and _window_tables(c + k - 1, nframes, dev_lo, dev_hi) <= k - 1:
            k -= 1
        first_free = c + k
        if first_free >= nframes:
            raise ImageError(f"RAM too small: init and its tables end at {first_free * PAGE:#x}"
                             f", RAM is {ram_bytes:#x}")
        win_alloc = FrameAllocator(c * PAGE, first_free * PAGE)
        pt.alloc = win_alloc
        map_(abi.WINDOW_VA + first_free * PAGE, first_free * PAGE, WINDOW_RIGHTS,
             nframes - first_free, what="window")
        map_(abi.WINDOW_VA + dev_lo * PAGE, dev_lo * PAGE, WINDOW_DEV_RIGHTS,
             dev_hi - dev_lo, what="window (device pages)")
        for va in range(abi.WINDOW_VA, abi.WINDOW_VA + dev_hi * PAGE, 1 << 21):
            pt.table(va, 1, create=True)        # a home for frames not at home yet
        pt.alloc = alloc
        spare = first_free - win_alloc.next // PAGE   # frames reserved but unused (rare)
    except MappingError as e:
        raise ImageError(f"init does not fit: {e}") from None

    # ---- frame table --------------------------------------------------------------
    nft = nframes + abi.DEV_PAGES
    ft = array("Q", bytes(8 * nft))
    d1 = abi.frame_entry(abi.FT_DATA, 1)
    for pa in data_frames:
        ft[pa // PAGE] = d1
    ft[abi.BOOTINFO_PHYS // PAGE] = d1
    for t in pt.tables:
        ft[t // PAGE] = abi.frame_entry(abi.FT_TABLE, 1)
    held = root_count(leaves, len(pt.tables))
    ft[root // PAGE] = abi.frame_entry(abi.FT_ROOT, held)
    ft[first_free:nframes] = array("Q", [d1]) * (nframes - first_free)
    ft[dev_pfn:dev_pfn + abi.DEV_PAGES] = array("Q", [abi.frame_entry(abi.FT_DEVICE, 1)]) \
        * abi.DEV_PAGES
    mem.write(abi.FRAMES_PHYS, ft)

    # ---- boot info ----------------------------------------------------------------
    bi = abi.BootInfo(
        host=host, ram_bytes=ram_bytes, nframes=nframes, dev_pfn=dev_pfn, root_phys=root,
        lstar=lstar, iomap_base=IOMAP_QEMU if host == abi.HOST_QEMU else IOMAP_NONE,
        initrd_size=len(archive), console_out_pfn=con_out // PAGE,
        console_in_pfn=con_in // PAGE, tsc_khz=tsc_khz, run_mode=run_mode,
        first_free_pfn=first_free, cmdline=cmdline, ncpus=ncpus,
        # The per-CPU tick needs the VMM's in-kernel local APIC (1 count = 1 ns
        # with divide-by-1); the QEMU multiboot path has none.
        timer_count=abi.TICK_US * 1000 if timer and host != abi.HOST_QEMU else 0,
        apic=0 if host == abi.HOST_QEMU else 1)
    try:
        mem.write(abi.BOOTINFO_PHYS, bi.pack())
    except ValueError as e:
        raise ImageError(str(e)) from None

    # LAB 1 BEGIN STUB: cpus = [CpuState(rip=0, rsp=kernel.stack_tops[i], cr3=0, cr0=0, cr4=0, efer=0, gdt_base=kernel.gdt, gdt_limit=kernel.gdt_limit, idt_base=kernel.idt, idt_limit=kernel.idt_limit, tss_base=kernel.tss[i], tss_limit=kernel.tss_limit, index=i) for i in range(ncpus)]
    cpus = [CpuState(
        rip=kernel.entry64, rsp=kernel.stack_tops[i], cr3=root, cr0=BOOT_CR0, cr4=BOOT_CR4,
        efer=BOOT_EFER, gdt_base=kernel.gdt, gdt_limit=kernel.gdt_limit,
        idt_base=kernel.idt, idt_limit=kernel.idt_limit, tss_base=kernel.tss[i],
        tss_limit=kernel.tss_limit, index=i) for i in range(ncpus)]
    # LAB 1 END
    cpu = cpus[0]
    symbols = dict(kernel.symbols)
    for p in progs.values():
        symbols.update(p.symbols)
    layout = {
        "root": root, "init_base": init_base, "first_free_pfn": first_free,
        "frame_table_pages": ft_pages, "init_tables": len(pt.tables),
        "init_leaves": leaves, "init_held": held, "spare_frames": spare,
        "initrd_phys": rd, "initrd_size": len(archive), "stack_phys": stack,
    }
    return BootState(ram_bytes=ram_bytes, writes=mem.runs(), cpu=cpu, symbols=symbols,
                     bootinfo=bi, layout=layout, cpus=cpus)
