"""vmm/bootimage.py: the initial state satisfies every invariant of docs/SYSCALLS.md.

Builds a boot state with a stub kernel and tiny gcc-built ELFs, materialises guest RAM from
its writes, and checks it with the page-table walker: the frame table, init's address space,
the kernel tables, the boot info, and that bad inputs fail with clear ImageErrors.
"""
import shutil
import struct
import subprocess
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

import pytest

from vmm import abi, initrd
from vmm.bootimage import (BOOT_CR0, BOOT_CR4, BOOT_EFER, WINDOW_DEV_RIGHTS, WINDOW_RIGHTS,
                           ImageError, build_boot_state, kernel_half, root_count)
from vmm.pagetable import PhysMem, iter_mappings, walk

P, W, U, NX, PS, PCD, G = (abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_NX, abi.PTE_PS,
                           abi.PTE_PCD, abi.PTE_G)
PAGE = 4096
MiB = 1 << 20
KB = abi.KBASE


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------
@dataclass
class StubKernel:
    """Same attributes as kernel_build.KernelImage."""
    image: bytes
    symbols: dict = field(default_factory=dict)
    entry64: int = KB + 0x101000
    mb_entry: int = 0x100020
    stack_tops: list = field(default_factory=lambda: [KB + 0x1F0000])
    gdt: int = KB + 0x102000
    gdt_limit: int = abi.GDT_ENTRIES * 8 - 1
    idt: int = KB + 0x103000
    idt_limit: int = 256 * 16 - 1
    tss: list = field(default_factory=lambda: [KB + 0x104000])
    tss_limit: int = 104 + 8192


def multiboot_image(size=0x30000, at=0, checksum_ok=True) -> bytes:
    img = bytearray(size)
    flags = 0x00010003
    csum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    if not checksum_ok:
        csum ^= 1
    struct.pack_into("<III", img, at, 0x1BADB002, flags, csum)
    return bytes(img)


def stub_kernel(**kw) -> StubKernel:
    kw.setdefault("image", multiboot_image())
    kw.setdefault("symbols", {"syscall_entry": KB + 0x101800, "kernel_start64": KB + 0x101000})
    return StubKernel(**kw)


INIT_C = r"""
const char rodata_msg[] = "xomb init rodata";
long data_word = 0x1122334455667788;
char bss_area[3 * 4096 + 100];
void _start(void) {
    for (;;) { bss_area[data_word & 4095] = rodata_msg[0]; __asm__ volatile("pause"); }
}
"""
HELLO_C = r"""
int hello_counter = 7;
void _start(void) { for (;;) hello_counter++; }
"""


@pytest.fixture(scope="session")
def elfs(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build test ELFs")
    d = tmp_path_factory.mktemp("elfs")
    out = {}
    for name, src in (("init", INIT_C), ("hello", HELLO_C)):
        (d / f"{name}.c").write_text(src)
        subprocess.run(["gcc", "-O1", "-nostdlib", "-static", "-no-pie", "-fno-pic",
                        "-ffreestanding", "-fno-asynchronous-unwind-tables",
                        "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096",
                        "-Wl,-z,separate-code", "-Wl,-z,noexecstack",
                        f"-Wl,-Ttext-segment={abi.PROGRAM_VA:#x}",
                        "-o", str(d / name), str(d / f"{name}.c")], check=True)
        out[name] = (d / name).read_bytes()
    return out


def load_segments(elf: bytes):
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segs = []
    for i in range(phnum):
        off = phoff + i * phentsize
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = \
            struct.unpack_from("<IIQQQQQQ", elf, off)
        if p_type == 1:
            segs.append(dict(hdr=off, flags=p_flags, offset=p_offset, vaddr=p_vaddr,
                             filesz=p_filesz, memsz=p_memsz))
    return segs


def patched(elf: bytes, off: int, fmt: str, value) -> bytes:
    b = bytearray(elf)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


@pytest.fixture(scope="session")
def state128(elfs):
    return build_boot_state(stub_kernel(), elfs, 128 * MiB, abi.HOST_VMX,
                            cmdline="hello world", run_mode=1, tsc_khz=2_500_000)


@pytest.fixture(scope="session")
def ram128(state128):
    return state128.ram()


# --------------------------------------------------------------------------
# invariant checker
# --------------------------------------------------------------------------
def read_u64(mem, pa):
    return struct.unpack_from("<Q", mem, pa)[0]


def frame_table(mem, ram_bytes):
    n = ram_bytes // PAGE + abi.DEV_PAGES
    return array("Q", bytes(mem[abi.FRAMES_PHYS:abi.FRAMES_PHYS + 8 * n]))


def ftype(v):
    return v >> abi.FT_TYPE_SHIFT


def fcount(v):
    return v & abi.FT_COUNT_MASK


def user_tables(mem, root):
    """Every table page (levels 3..1) reachable from the user part of root (below
    USER_LIMIT: PML4[PML4_GATE] is the kernel's shared gate subtree)."""
    out = []
    for i in range(abi.PML4_GATE):
        e = read_u64(mem, root + 8 * i)
        if not e & P:
            continue
        pdpt = e & abi.PTE_ADDR
        out.append(pdpt)
        for j in range(512):
            e2 = read_u64(mem, pdpt + 8 * j)
            if not e2 & P:
                continue
            assert not e2 & PS, "no large pages in the user half"
            pd = e2 & abi.PTE_ADDR
            out.append(pd)
            for k in range(512):
                e3 = read_u64(mem, pd + 8 * k)
                if e3 & P:
                    assert not e3 & PS
                    out.append(e3 & abi.PTE_ADDR)
    return out


def user_window_kernel_frames(ram_bytes):
    """Kernel frames a user may read (never write): the user window, the gate and the tables
    that lead to them, seen through the self-map."""
    ft_pages = (ram_bytes // PAGE + abi.DEV_PAGES) * 8 // PAGE + 1
    s = {abi.KT_UW_PDPT, abi.KT_UW_PD, abi.KT_GATE_PDPT, abi.KT_GATE_PD, abi.KT_GATE_PT,
         abi.KT_GATE, abi.KT_PDPT}
    s |= {abi.KT_FT_PT + j * PAGE for j in range((ft_pages + 511) // 512)}
    s |= {abi.FRAMES_PHYS + j * PAGE for j in range(ft_pages)}
    return s


def check_invariants(state, mem):
    ram_bytes = state.ram_bytes
    nframes = ram_bytes // PAGE
    dev = nframes
    bi = state.bootinfo
    root = state.cpu.cr3
    ft = frame_table(mem, ram_bytes)
    first_free = bi.first_free_pfn

    # --- user leaves: each points to DATA/DEVICE whose count = number of leaves -------
    leaves = list(iter_mappings(mem, root, 0, abi.USER_LIMIT, fold=False))
    refs = Counter(m.pa >> 12 for m in leaves)
    for m in leaves:
        assert m.rights & U, f"user-half leaf {m} without U"
        t = ftype(ft[m.pa >> 12])
        assert t in (abi.FT_DATA, abi.FT_DEVICE), f"{m}: frame type {t}"
        if t == abi.FT_DEVICE:
            assert m.rights & PCD, f"device page mapped cacheable: {m}"
    for pfn, n in refs.items():
        assert fcount(ft[pfn]) == n, f"pfn {pfn:#x}: count {fcount(ft[pfn])} != {n} leaves"
    for pfn, v in enumerate(ft):
        if ftype(v) in (abi.FT_DATA, abi.FT_DEVICE):
            assert refs.get(pfn, 0) == fcount(v), f"pfn {pfn:#x} typed {v:#x}, mapped " \
                f"{refs.get(pfn, 0)} times"

    # --- tables: FT_TABLE count 1, exactly the reachable ones; ROOT count ----------------
    tables = user_tables(mem, root)
    assert len(set(tables)) == len(tables), "a table page is used twice"
    typed = {pfn for pfn, v in enumerate(ft) if ftype(v) == abi.FT_TABLE}
    assert typed == {t >> 12 for t in tables}
    for t in tables:
        assert ft[t >> 12] == abi.frame_entry(abi.FT_TABLE, 1)
    assert ft[root >> 12] == abi.frame_entry(abi.FT_ROOT, root_count(len(leaves),
                                                                     len(tables)))
    assert root_count(len(leaves), len(tables)) == 1 + len(leaves) + len(tables)
    assert [pfn for pfn, v in enumerate(ft) if ftype(v) == abi.FT_ROOT] == [root >> 12]

    # --- nothing but DATA/DEVICE is user-writable, no kernel frame user-reachable -------
    allowed_ro = user_window_kernel_frames(ram_bytes)
    for m in iter_mappings(mem, root, fold=False):
        if not m.rights & U:
            continue
        pfn = m.pa >> 12
        t = ftype(ft[pfn]) if pfn < len(ft) else None
        if m.rights & W:
            assert t in (abi.FT_DATA, abi.FT_DEVICE), f"user-writable non-data frame: {m}"
        if t == abi.FT_KERNEL:
            assert not m.rights & W and m.pa & ~0xFFF in allowed_ro, \
                f"kernel frame reachable from user mode: {m}"
        if t in (abi.FT_TABLE, abi.FT_ROOT):
            assert not m.rights & W and m.va >= 0xFFFF_8000_0000_0000   # only the self-map
    # every table page is readable (only) through the self-map
    for t in tables:
        assert any(m.pa == t for m in iter_mappings(mem, root, 0xFFFF_FF00_0000_0000,
                                                    0xFFFF_FF80_0000_0000, fold=False))

    # --- frame types: below first_free everything else is KERNEL -------------------------
    for pfn in range(first_free):
        if pfn not in refs and pfn not in typed and pfn != root >> 12:
            assert ft[pfn] == 0, f"pfn {pfn:#x} below first_free is {ft[pfn]:#x}"
    for pfn in range(abi.KERNEL_PHYS >> 12, (abi.FRAMES_PHYS >> 12) + 1):
        if pfn != abi.BOOTINFO_PHYS >> 12:
            assert ft[pfn] == 0
    assert ft[abi.BOOTINFO_PHYS >> 12] == abi.frame_entry(abi.FT_DATA, 1)

    # --- the window: every free frame exactly once, at home ------------------------------
    d1 = abi.frame_entry(abi.FT_DATA, 1)
    assert all(v == d1 for v in ft[first_free:nframes])
    window = {m.pa >> 12: m for m in leaves if abi.WINDOW_VA <= m.va < abi.WINDOW_VA + (1 << 39)}
    for pfn in range(first_free, nframes):
        m = window.get(pfn)
        assert m is not None and m.va == abi.WINDOW_VA + pfn * PAGE, f"free pfn {pfn:#x}"
        assert m.rights == WINDOW_RIGHTS == U | W and refs[pfn] == 1   # RWX, as frame_home
    for i in range(abi.DEV_PAGES):
        assert ft[dev + i] == abi.frame_entry(abi.FT_DEVICE, 1)
        if i not in (abi.DEV_CONSOLE_DOORBELL, abi.DEV_PLATFORM):
            assert window[dev + i].rights == WINDOW_DEV_RIGHTS == U | W | NX | PCD
    assert set(window) == set(range(first_free, nframes)) | \
        {dev + i for i in range(abi.DEV_PAGES)} - {dev + abi.DEV_CONSOLE_DOORBELL,
                                                   dev + abi.DEV_PLATFORM}
    # frames below first_free are not in the window
    assert min(window) == first_free

    # --- self-map read-only; kernel half as AS_CREATE makes it ---------------------------
    w = walk(mem, root, abi.SELF_PML4)
    assert w.present and w.pa == root and w.user and not w.writable and not w.executable
    half = kernel_half(root, read_u64(mem, root + 8 * abi.PML4_INFO) >> 1)
    for i in range(abi.PML4_GATE, 512):
        assert read_u64(mem, root + 8 * i) == half.get(i, 0), f"PML4[{i}]"
    return leaves, tables


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
def test_invariants_128m(state128, ram128):
    leaves, tables = check_invariants(state128, ram128)
    assert state128.layout["init_leaves"] == len(leaves)
    assert state128.layout["init_tables"] == len(tables)


@pytest.mark.parametrize("ram", [abi.MIN_RAM, abi.MIN_RAM + 3 * PAGE, 64 * MiB - 2 * PAGE,
                                 66 * MiB + 510 * PAGE])
def test_invariants_odd_sizes(elfs, ram):
    for host in (abi.HOST_VMX, abi.HOST_QEMU):
        st = build_boot_state(stub_kernel(), elfs, ram, host)
        check_invariants(st, st.ram())


def test_window_tables_fixed_point(elfs):
    """No frame is lost between init's pages and the window: at most one spare frame."""
    for ram in range(32 * MiB, 32 * MiB + 600 * PAGE, 37 * PAGE):
        st = build_boot_state(stub_kernel(), elfs, ram, abi.HOST_VMX)
        assert st.layout["spare_frames"] <= 1


def test_kernel_half_function():
    h = kernel_half(0x5000, 0x401000)
    items = dict(abi._items())
    assert h == {abi.PML4_GATE: abi.KT_GATE_PDPT | P | U,
                 256: 0x401000 << 1,
                 384: abi.KT_UW_PDPT | P | U,
                 510: 0x5000 | P | U | NX,
                 511: items["KERNEL_PML4E"]}
    assert items["KERNEL_PML4E"] & ~U == abi.KT_PDPT | P | W
    assert h[abi.PML4_GATE] == items["GATE_PML4E"] and h[384] == items["USERWIN_PML4E"]
    assert not h[256] & P
    h = kernel_half(0x5000, 0x401000, parent_root=0x9000)
    assert h[257] == 0x9000 | abi.PTE_SLOT and not h[257] & P
    with pytest.raises(ValueError):
        kernel_half(0x5000, abi.USER_LIMIT)


def test_init_image(state128, ram128, elfs):
    root = state128.cpu.cr3
    segs = load_segments(elfs["init"])
    assert segs
    for s in segs:
        x, wr = bool(s["flags"] & 1), bool(s["flags"] & 2)
        for va in range(s["vaddr"] & ~0xFFF, s["vaddr"] + s["memsz"], PAGE):
            w = walk(ram128, root, va)
            assert w.present and w.user and w.writable == wr and w.executable == x, hex(va)
        # contents: file bytes then zeros (bss)
        data = elfs["init"][s["offset"]:s["offset"] + s["filesz"]]
        buf = bytearray()
        va = s["vaddr"]
        end = s["vaddr"] + s["memsz"]
        while va < end:
            pa = walk(ram128, root, va).pa
            n = min(end - va, PAGE - (va & 0xFFF))
            buf += ram128[pa:pa + n]
            va += n
        assert bytes(buf[:len(data)]) == data
        assert not any(buf[len(data):])
    entry = struct.unpack_from("<Q", elfs["init"], 0x18)[0]
    assert read_u64(ram128, root + 8 * abi.PML4_INFO) == entry << 1


def test_fixed_user_pages(state128, ram128):
    root, bi = state128.cpu.cr3, state128.bootinfo
    dev = bi.dev_pfn
    expect = {
        abi.UPCALL_VA: (True, False, None),
        abi.BOOTINFO_VA: (False, False, abi.BOOTINFO_PHYS),
        abi.CONSOLE_OUT_VA: (True, False, bi.console_out_pfn * PAGE),
        abi.CONSOLE_IN_VA: (True, False, bi.console_in_pfn * PAGE),
        abi.CONSOLE_BELL_VA: (True, True, (dev + abi.DEV_CONSOLE_DOORBELL) * PAGE),
        abi.PLATFORM_VA: (True, True, (dev + abi.DEV_PLATFORM) * PAGE),
    }
    for va, (wr, uc, pa) in expect.items():
        w = walk(ram128, root, va)
        assert w.present and w.user and not w.executable and w.writable == wr, hex(va)
        assert bool(w.rights & PCD) == uc
        if pa is not None:
            assert w.pa == pa
    for va in range(abi.STACK_TOP - abi.STACK_PAGES * PAGE, abi.STACK_TOP, PAGE):
        w = walk(ram128, root, va)
        assert w.present and w.writable and not w.executable
    assert not walk(ram128, root, abi.STACK_TOP - (abi.STACK_PAGES + 1) * PAGE).present
    assert not walk(ram128, root, abi.STACK_TOP).present
    assert not walk(ram128, root, 0).present              # null page
    assert not walk(ram128, root, abi.ARGS_VA).present    # init has no argv page
    # console rings and the activation page start zeroed
    for va in (abi.UPCALL_VA, abi.CONSOLE_OUT_VA, abi.CONSOLE_IN_VA):
        pa = walk(ram128, root, va).pa
        assert not any(ram128[pa:pa + PAGE])


def test_initrd_mapped(state128, ram128, elfs):
    root = state128.cpu.cr3
    size = state128.bootinfo.initrd_size
    buf = bytearray()
    for va in range(abi.INITRD_VA, abi.INITRD_VA + size, PAGE):
        w = walk(ram128, root, va)
        assert w.present and w.user and not w.writable and not w.executable
        buf += ram128[w.pa:w.pa + PAGE]
    assert initrd.parse(bytes(buf[:size])) == elfs
    assert not walk(ram128, root, abi.INITRD_VA + ((size + PAGE - 1) & ~0xFFF)).present


def test_boot_info(state128, ram128):
    bi = state128.bootinfo
    page = bytes(ram128[abi.BOOTINFO_PHYS:abi.BOOTINFO_PHYS + PAGE])
    assert page == bi.pack()
    vals = dict(zip(abi.BOOTINFO_FIELDS, struct.unpack_from(f"<{len(abi.BOOTINFO_FIELDS)}Q",
                                                            page)))
    assert vals["magic"] == abi.BOOTINFO_MAGIC and vals["version"] == abi.ABI_VERSION
    assert vals["host"] == abi.HOST_VMX and vals["ram_bytes"] == 128 * MiB
    assert vals["nframes"] == 128 * MiB // PAGE and vals["dev_pfn"] == vals["nframes"]
    assert vals["root_phys"] == state128.cpu.cr3
    assert vals["lstar"] == KB + 0x101800            # syscall_entry on VMX
    assert vals["iomap_base"] == 0xFFFF
    assert vals["tsc_khz"] == 2_500_000 and vals["run_mode"] == 1
    assert vals["first_free_pfn"] == bi.first_free_pfn
    cmd = page[abi.BOOTINFO_CMDLINE:abi.BOOTINFO_CMDLINE + 12]
    assert cmd == b"hello world\0"
    # also at BOOTINFO_VA in init, read-only
    w = walk(ram128, state128.cpu.cr3, abi.BOOTINFO_VA)
    assert w.pa == abi.BOOTINFO_PHYS and not w.writable


@pytest.mark.parametrize("host,lstar,iomap", [
    (abi.HOST_VMX, KB + 0x101800, 0xFFFF),
    (abi.HOST_PVM, abi.GATE_VA, 0xFFFF),
    (abi.HOST_QEMU, KB + 0x101800, 104),
])
def test_host_specific_fields(elfs, host, lstar, iomap):
    st = build_boot_state(stub_kernel(), elfs, 32 * MiB, host)
    assert st.bootinfo.host == host
    assert st.bootinfo.lstar == lstar and st.bootinfo.iomap_base == iomap


def test_cpu_state(state128):
    k = stub_kernel()
    c = state128.cpu
    assert (c.rip, c.rsp) == (k.entry64, k.stack_tops[0])
    assert c.cr0 == 0x80050033 == BOOT_CR0
    assert c.cr4 == BOOT_CR4 == (1 << 5) | (1 << 7) | (1 << 9) | (1 << 10)
    assert c.efer == BOOT_EFER == 1 | (1 << 8) | (1 << 10) | (1 << 11)
    assert (c.gdt_base, c.gdt_limit, c.idt_base, c.idt_limit) == \
        (k.gdt, k.gdt_limit, k.idt, k.idt_limit)
    assert (c.tss_base, c.tss_limit) == (k.tss[0], k.tss_limit)
    assert c.cr3 == state128.bootinfo.root_phys


def test_kernel_tables(state128, ram128):
    root = state128.cpu.cr3
    # KBASE + phys -> phys, supervisor, global, W^X: 2 MiB pages writable, no-execute ...
    for phys in (2 * MiB + 7, 1 << 30, (2 << 30) - 4 * MiB + 5):
        w = walk(ram128, root, KB + phys)
        assert w.present and w.pa == phys and w.size == 2 * MiB
        assert w.writable and not w.user and not w.executable and w.rights & G
    # ... but the first 2 MiB in 4 KiB pages: the kernel's code read-only and executable
    # (the multiboot stub included), its data and everything else writable, no-execute
    for phys, code in ((0x1234, False), (abi.KERNEL_PHYS + 0x10, True),
                       (abi.BOOTINFO_PHYS - PAGE, False)):
        w = walk(ram128, root, KB + phys)
        assert w.present and w.pa == phys and w.size == PAGE and not w.user
        assert (w.executable, w.writable) == ((True, False) if code else (False, True)), hex(phys)
    # the gate: user, read-only, executable, int3s; nothing else in PML4[PML4_GATE]
    w = walk(ram128, root, abi.GATE_VA)
    assert w.present and w.pa == abi.KT_GATE and w.user and w.executable
    assert not w.writable
    assert ram128[abi.KT_GATE:abi.KT_GATE + PAGE] == b"\xCC" * PAGE
    assert [tuple(m) for m in iter_mappings(ram128, root, abi.USER_LIMIT, abi.USER_TOP)] == \
        [(abi.GATE_VA, abi.KT_GATE, PAGE, U)]
    assert not walk(ram128, root, abi.USERWIN_VA).present
    # frame table at FRAMES_VA: pfn's entry, read-only, user, NX
    ft = frame_table(ram128, state128.ram_bytes)
    for pfn in (0, root >> 12, state128.bootinfo.first_free_pfn, len(ft) - 1):
        w = walk(ram128, root, abi.FRAMES_VA + pfn * 8)
        assert w.present and w.user and not w.writable and not w.executable
        assert w.pa == abi.FRAMES_PHYS + pfn * 8 and read_u64(ram128, w.pa) == ft[pfn]
    # QEMU boot PML4: identity first GiB + the kernel half
    for va, pa in ((0x100000, 0x100000), (abi.BOOTINFO_PHYS, abi.BOOTINFO_PHYS),
                   (KB + 0x1234, 0x1234)):
        w = walk(ram128, abi.KT_BOOT_PML4, va)
        assert w.present and w.pa == pa and not w.user


def test_symbols(state128):
    s = state128.symbols
    assert s["syscall_entry"] == KB + 0x101800
    assert "init:_start" in s and "hello:_start" in s
    assert s["init:data_word"] >= abi.PROGRAM_VA and "init:bss_area" in s


def test_blob(state128, ram128):
    b = state128.blob()
    assert b[:8] == struct.pack("<Q", abi.BOOTINFO_MAGIC)
    end = max(pa + len(d) for pa, d in state128.writes)
    assert len(b) == end - abi.BOOTINFO_PHYS < 14 * MiB
    assert b == bytes(ram128[abi.BOOTINFO_PHYS:end])


def test_writes_are_sorted_and_disjoint(state128):
    prev = 0
    for pa, d in state128.writes:
        assert pa >= prev and pa % PAGE == 0
        prev = pa + len(d)
    assert prev <= state128.ram_bytes


# --------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------
def phdr_of(elf, want_flags):
    return next(s for s in load_segments(elf) if s["flags"] == want_flags)


def bad_programs(elfs):
    init = elfs["init"]
    text = phdr_of(init, 5)             # R+X
    data = phdr_of(init, 6)             # R+W
    ro = phdr_of(init, 4)
    return [
        ({"init": init[:200]}, "corrupt|truncated|runs past"),
        ({"init": b"MZ" + init[2:]}, "not an ELF"),
        ({"init": patched(init, 0x12, "<H", 40)}, "not x86-64"),        # EM_ARM
        ({"init": patched(init, 0x10, "<H", 3)}, "ET_EXEC"),             # ET_DYN
        ({"init": patched(init, 4, "B", 1)}, "ELF64|corrupt"),            # ELFCLASS32
        ({"init": patched(init, text["hdr"] + 4, "<I", 7)}, "writable and executable"),
        ({"init": patched(init, data["hdr"] + 16, "<Q", abi.USER_TOP - 0x1000)},
         "outside the user half"),
        ({"init": patched(init, data["hdr"] + 16, "<Q", abi.USER_LIMIT - 0x1000)},
         "outside the user half"),
        ({"init": patched(init, data["hdr"] + 16, "<Q", 0xFFFF_8000_0000_0000)},
         "outside the user half"),
        ({"init": patched(init, data["hdr"] + 16, "<Q", abi.UPCALL_VA)}, "cannot map"),
        ({"init": patched(init, data["hdr"] + 16, "<Q", abi.WINDOW_VA + 0x10000)}, "window"),
        ({"init": patched(init, ro["hdr"] + 16, "<Q", text["vaddr"] + 0x800)},
         "different rights"),
        ({"init": patched(init, 0x18, "<Q", data["vaddr"])}, "entry point"),
        ({"hello": elfs["hello"]}, "no 'init'"),
        ({"init": init, "bad name": elfs["hello"]}, "printable"),
        ({"init": init, "hello": elfs["hello"][:300]}, "'hello'"),
    ]


def test_bad_programs(elfs):
    for progs, msg in bad_programs(elfs):
        with pytest.raises(ImageError, match=msg):
            build_boot_state(stub_kernel(), progs, 32 * MiB, abi.HOST_VMX)


@pytest.mark.parametrize("ram,msg", [
    (abi.MIN_RAM - PAGE, "outside"), (abi.MAX_RAM + PAGE, "outside"),
    (32 * MiB + 1, "multiple of 4 KiB"), (0, "outside"),
])
def test_bad_ram(elfs, ram, msg):
    with pytest.raises(ImageError, match=msg):
        build_boot_state(stub_kernel(), elfs, ram, abi.HOST_VMX)


@pytest.mark.parametrize("kw,msg", [
    (dict(image=multiboot_image(abi.KERNEL_MAX + 1)), "larger than KERNEL_MAX"),
    (dict(image=bytes(0x3000)), "no multiboot magic"),
    (dict(image=multiboot_image(at=8192)), "no multiboot magic"),
    (dict(image=multiboot_image(checksum_ok=False)), "checksum"),
    (dict(symbols={}), "syscall_entry"),
    (dict(stack_tops=[]), "stack"),
])
def test_bad_kernel(elfs, kw, msg):
    with pytest.raises(ImageError, match=msg):
        build_boot_state(stub_kernel(**kw), elfs, 32 * MiB, abi.HOST_VMX)


def test_multiboot_header_late_in_first_8k_ok(elfs):
    build_boot_state(stub_kernel(image=multiboot_image(at=8192 - 12)), elfs, 32 * MiB,
                     abi.HOST_VMX)


def test_bad_host_and_cmdline(elfs):
    with pytest.raises(ImageError, match="unknown host"):
        build_boot_state(stub_kernel(), elfs, 32 * MiB, 7)
    with pytest.raises(ImageError, match="command line"):
        build_boot_state(stub_kernel(), elfs, 32 * MiB, abi.HOST_VMX,
                         cmdline="x" * abi.CMDLINE_MAX)


def test_pvm_needs_no_syscall_entry(elfs):
    st = build_boot_state(stub_kernel(symbols={}), elfs, 32 * MiB, abi.HOST_PVM)
    assert st.bootinfo.lstar == abi.GATE_VA


# --------------------------------------------------------------------------
# timing (printed, not asserted) and a spot check at the largest size
# --------------------------------------------------------------------------
def test_timing_and_max_ram(elfs, capsys):
    build_boot_state(stub_kernel(), elfs, 128 * MiB, abi.HOST_VMX)     # warm up imports
    times = {}
    for ram in (128 * MiB, abi.MAX_RAM):
        best = None
        for _ in range(3):
            t = time.perf_counter()
            st = build_boot_state(stub_kernel(), elfs, ram, abi.HOST_VMX)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        times[ram] = best
    with capsys.disabled():
        print("\nbuild_boot_state: " + ", ".join(
            f"{r >> 20} MiB {t * 1000:.1f} ms" for r, t in times.items()))
    # spot checks on the MAX_RAM state without materialising 2 GiB
    mem = PhysMem()
    for pa, d in st.writes:
        mem.write(pa, d)
    root = st.cpu.cr3
    nframes = abi.MAX_RAM // PAGE
    for pfn in (st.bootinfo.first_free_pfn, nframes // 2, nframes - 1):
        w = walk(mem, root, abi.WINDOW_VA + pfn * PAGE)
        assert w.present and w.pa == pfn * PAGE and w.writable and w.executable
    assert not walk(mem, root, abi.WINDOW_VA + (st.bootinfo.first_free_pfn - 1) * PAGE).present
    runs = list(iter_mappings(mem, root, abi.WINDOW_VA, abi.WINDOW_VA + (1 << 39)))
    assert [(r.va, r.size) for r in runs][0] == \
        (abi.WINDOW_VA + st.bootinfo.first_free_pfn * PAGE,
         (nframes - st.bootinfo.first_free_pfn) * PAGE)
    ft = array("Q", mem.read(abi.FRAMES_PHYS, 8 * (nframes + abi.DEV_PAGES)))
    held = ft[root >> 12] & abi.FT_COUNT_MASK
    assert held == st.layout["init_held"] == 1 + st.layout["init_leaves"] + \
        st.layout["init_tables"]
    assert sum(1 for v in ft if v >> 32 == abi.FT_TABLE) == st.layout["init_tables"]
    w = walk(mem, root, abi.FRAMES_VA + (nframes + abi.DEV_PAGES - 1) * 8)
    assert w.present and w.pa == abi.FRAMES_PHYS + (nframes + abi.DEV_PAGES - 1) * 8


# --------------------------------------------------------------------------
# the checker itself catches broken states (so the tests above are not vacuous)
# --------------------------------------------------------------------------
def _window_pte(state, mem, pfn):
    return walk(mem, state.cpu.cr3, abi.WINDOW_VA + pfn * PAGE).steps[-1]


@pytest.mark.parametrize("breakage", ["table_writable", "count", "double_map", "kernel_user",
                                      "selfmap_writable", "free_not_in_window"])
def test_checker_detects(elfs, breakage):
    st = build_boot_state(stub_kernel(), elfs, abi.MIN_RAM, abi.HOST_VMX)
    mem = st.ram()
    first = st.bootinfo.first_free_pfn
    step = _window_pte(st, mem, first)
    pte_at = step.table + 8 * step.index
    ft_at = abi.FRAMES_PHYS
    if breakage == "table_writable":        # window entry -> a page-table page
        struct.pack_into("<Q", mem, pte_at, step.table | P | W | U | NX)
    elif breakage == "count":
        struct.pack_into("<Q", mem, ft_at + 8 * first, abi.frame_entry(abi.FT_DATA, 2))
    elif breakage == "double_map":          # second window entry -> the same frame
        struct.pack_into("<Q", mem, pte_at + 8, first * PAGE | P | W | U | NX)
    elif breakage == "kernel_user":          # window entry -> the kernel image
        struct.pack_into("<Q", mem, pte_at, abi.KERNEL_PHYS | P | U | NX)
    elif breakage == "selfmap_writable":
        root = st.cpu.cr3
        struct.pack_into("<Q", mem, root + 8 * abi.PML4_SELF, root | P | W | U | NX)
    elif breakage == "free_not_in_window":
        struct.pack_into("<Q", mem, pte_at, 0)
    with pytest.raises(AssertionError):
        check_invariants(st, mem)


def test_every_frame_has_a_home_with_tables(state128, ram128):
    """frame_home (kernel) puts a freed frame back at WINDOW_VA + pfn*4096 without
    allocating: the window's tables must cover every frame, at home or not."""
    root = state128.cpu.cr3
    end = state128.ram_bytes // PAGE + abi.DEV_PAGES
    for pfn in range(0, end, 512):
        w = walk(ram128, root, abi.WINDOW_VA + pfn * PAGE)
        assert w.present or w.stopped_at == 1, f"pfn {pfn:#x}: no page table"
