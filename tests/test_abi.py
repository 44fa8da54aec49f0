"""vmm/abi.py and its generated files: complete, compilable, self-consistent, up to date."""
import re
import shutil
import struct
import subprocess

import pytest

from vmm import abi, build, paths

MiB = 1 << 20


def names_in(text: str, prefix: str, sep: str) -> set[str]:
    return set(re.findall(rf"{re.escape(prefix)}([A-Z0-9_]+){sep}", text))


def test_header_has_everything():
    h = abi.c_header()
    defined = names_in(h, "#define XOMB_", " ")
    for k in abi.SYSCALLS:
        assert f"SYS_{k}" in defined
    for k in abi.ERRORS:
        assert k in defined
    for k in abi.UPCALLS:
        assert f"UP_{k}" in defined
    for f in abi.FRAME_FIELDS:
        assert f"FRAME_{f.upper()}" in defined
        assert f"uint64_t {f};" in h
    for f in abi.BOOTINFO_FIELDS:
        assert f"BI_{f.upper()}" in defined
    for k in ("KBASE", "PAGE", "WINDOW_VA", "INITRD_MAGIC", "FT_DATA", "PTE_NX", "NSYSCALLS",
              "FRAME_SIZE", "KT_GATE", "BOOTINFO_CMDLINE"):
        assert k in defined


def test_asm_include_has_everything():
    inc = abi.asm_include()
    equ = names_in(inc, ".equ ", ",")
    for k in abi.SYSCALLS:
        assert f"SYS_{k}" in equ
    for k in abi.ERRORS:
        assert k in equ
    for k in abi.UPCALLS:
        assert f"UP_{k}" in equ
    for f in abi.FRAME_FIELDS:
        assert f"FRAME_{f.upper()}" in equ
    for f in abi.BOOTINFO_FIELDS:
        assert f"BI_{f.upper()}" in equ
    # every value parses back to what abi.py says
    values = dict(re.findall(r"^\.equ ([A-Z0-9_]+), (0x[0-9a-f]+)$", inc, re.M))
    assert int(values["KBASE"], 16) == abi.KBASE
    assert int(values["SYS_RELEASE"], 16) == abi.SYSCALLS["RELEASE"]
    assert int(values["PTE_NX"], 16) == abi.PTE_NX
    assert len(values) == len(inc.strip().splitlines()) - 1


def test_no_duplicate_names():
    names = [k for k, _ in abi._items()]
    dup = {k for k in names if names.count(k) > 1}
    assert not dup


@pytest.fixture
def gcc():
    g = shutil.which("gcc")
    if g is None:
        pytest.skip("gcc not installed")
    return g


def test_header_compiles_with_matching_offsets(gcc, tmp_path):
    (tmp_path / "xomb_abi.h").write_text(abi.c_header())
    lines = ['#include <stddef.h>', '#include "xomb_abi.h"']
    for i, f in enumerate(abi.FRAME_FIELDS):
        lines.append(f"_Static_assert(offsetof(struct xomb_frame, {f}) == "
                     f"XOMB_FRAME_{f.upper()}, \"{f}\");")
    lines.append("_Static_assert(sizeof(struct xomb_frame) == XOMB_FRAME_SIZE, \"size\");")
    for f in abi.BOOTINFO_FIELDS:
        lines.append(f"_Static_assert(offsetof(struct xomb_bootinfo, {f}) == "
                     f"XOMB_BI_{f.upper()}, \"{f}\");")
    lines.append("_Static_assert(sizeof(struct xomb_bootinfo) <= XOMB_BOOTINFO_CMDLINE, "
                 "\"cmdline\");")
    lines.append("_Static_assert(XOMB_KBASE == 0xFFFFFFFF80000000ULL, \"kbase\");")
    lines.append("_Static_assert(XOMB_PTE_NX == (1ULL << 63), \"nx\");")
    lines.append("unsigned long long sys_map = XOMB_SYS_MAP, eperm = XOMB_EPERM;")
    (tmp_path / "t.c").write_text("\n".join(lines) + "\n")
    r = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-fsyntax-only",
                        "-ffreestanding", str(tmp_path / "t.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the header is also usable from assembly (#ifndef __ASSEMBLER__ guard)
    (tmp_path / "t.S").write_text('#include "xomb_abi.h"\nmov $XOMB_SYS_MAP, %eax\n')
    r = subprocess.run([gcc, "-c", "-o", str(tmp_path / "t.o"), str(tmp_path / "t.S")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_asm_include_assembles(tmp_path):
    if shutil.which("as") is None:
        pytest.skip("GNU as not installed")
    (tmp_path / "abi.inc").write_text(abi.asm_include())
    (tmp_path / "t.s").write_text('.intel_syntax noprefix\n.include "abi.inc"\n'
                                  "mov eax, SYS_MAP\nmovabs rax, KBASE\n")
    r = subprocess.run(["as", "--64", "-I", str(tmp_path), "-o", str(tmp_path / "t.o"),
                        str(tmp_path / "t.s")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_asm_include_keystone():
    ks_mod = pytest.importorskip("keystone")
    ks = ks_mod.Ks(ks_mod.KS_ARCH_X86, ks_mod.KS_MODE_64)
    enc, _ = ks.asm(abi.asm_include() + "mov eax, SYS_YIELD\nmov rax, KBASE\n", 0)
    code = bytes(enc)
    assert struct.pack("<I", abi.SYSCALLS["YIELD"]) in code
    assert struct.pack("<Q", abi.KBASE) in code or struct.pack("<i", -0x80000000) in code


# --------------------------------------------------------------------------
# offsets and layout consistency
# --------------------------------------------------------------------------
def test_bootinfo_pack_offsets():
    bi = abi.BootInfo(host=1, ram_bytes=2, nframes=3, dev_pfn=4, root_phys=5, lstar=6,
                      iomap_base=7, initrd_size=8, console_out_pfn=9, console_in_pfn=10,
                      tsc_khz=11, run_mode=12, first_free_pfn=13, cmdline="run hello")
    page = bi.pack()
    assert len(page) == abi.PAGE
    items = dict(abi._items())
    for f in abi.BOOTINFO_FIELDS:
        off = items[f"BI_{f.upper()}"]
        v = struct.unpack_from("<Q", page, off)[0]
        expect = {"magic": abi.BOOTINFO_MAGIC, "version": abi.ABI_VERSION,
                  "reserved": 0}.get(f, getattr(bi, f, None))
        assert v == expect, f
        assert items[f"BI_{f.upper()}_KVA"] == abi.KBASE + abi.BOOTINFO_PHYS + off
    assert len(abi.BOOTINFO_FIELDS) * 8 <= abi.BOOTINFO_CMDLINE
    assert abi.BOOTINFO_CMDLINE + abi.CMDLINE_MAX <= abi.PAGE
    assert page[abi.BOOTINFO_CMDLINE:abi.BOOTINFO_CMDLINE + 10] == b"run hello\0"


def test_frame_offsets():
    items = dict(abi._items())
    for i, f in enumerate(abi.FRAME_FIELDS):
        assert items[f"FRAME_{f.upper()}"] == 8 * i
    assert items["FRAME_SIZE"] == 8 * len(abi.FRAME_FIELDS) <= abi.PAGE
    assert abi.FRAME_FIELDS[0] == "in_upcall"


def test_frame_entry_encoding():
    v = abi.frame_entry(abi.FT_ROOT, 12345)
    assert v >> abi.FT_TYPE_SHIFT == abi.FT_ROOT and v & abi.FT_COUNT_MASK == 12345
    assert abi.frame_entry(abi.FT_KERNEL, 0) == 0
    assert len({abi.FT_KERNEL, abi.FT_DATA, abi.FT_TABLE, abi.FT_ROOT, abi.FT_DEVICE}) == 5


def test_physical_layout():
    assert abi.KERNEL_PHYS + abi.KERNEL_MAX <= abi.BOOTINFO_PHYS
    assert abi.BOOTINFO_PHYS + abi.PAGE <= abi.KTABLES_PHYS
    kt = [abi.KT_PDPT, abi.KT_PD0, abi.KT_PD1, abi.KT_UW_PDPT, abi.KT_UW_PD, abi.KT_GATE_PT,
          abi.KT_GATE, abi.KT_BOOT_PML4, abi.KT_BOOT_PDPT, abi.KT_GATE_PDPT, abi.KT_GATE_PD,
          abi.KT_KPT, abi.KT_FT_PT]
    assert len(set(kt)) == len(kt) and all(a % abi.PAGE == 0 for a in kt)
    assert max(kt) == abi.KT_FT_PT
    ft_pages = ((abi.MAX_RAM // abi.PAGE + abi.DEV_PAGES) * 8 + abi.PAGE - 1) // abi.PAGE
    assert abi.KT_FT_PT + ((ft_pages + 511) // 512) * abi.PAGE <= abi.FRAMES_PHYS
    assert (ft_pages + 511) // 512 < 512                 # KT_UW_PD entries 1..
    assert abi.MIN_RAM > abi.FRAMES_PHYS + ft_pages * abi.PAGE
    assert abi.MAX_RAM <= 2 << 30 and abi.MIN_RAM % abi.PAGE == abi.MAX_RAM % abi.PAGE == 0
    assert abi.DEV_CONSOLE_DOORBELL < abi.DEV_PAGES and abi.DEV_PLATFORM < abi.DEV_PAGES


def test_virtual_layout():
    assert abi.KERNEL_VIRT == abi.KBASE + abi.KERNEL_PHYS
    assert abi.USERWIN_VA == 0xFFFF_0000_0000_0000 | (abi.PML4_USERWIN << 39)
    assert abi.KBASE >> 39 & 511 == abi.PML4_KERNEL
    assert abi.FRAMES_VA == abi.USERWIN_VA + (2 << 20)
    assert abi.GATE_VA % abi.PAGE == 0
    assert abi.GATE_VA >> 39 == abi.PML4_GATE and abi.USER_LIMIT == abi.PML4_GATE << 39
    assert abi.GATE_VA < abi.USER_TOP               # PVM: LSTAR must be a user address
    s = abi.PML4_SELF
    base = 0xFFFF_0000_0000_0000 | (s << 39)
    assert abi.SELF_PT == base
    assert abi.SELF_PD == base | (s << 30)
    assert abi.SELF_PDPT == base | (s << 30) | (s << 21)
    assert abi.SELF_PML4 == base | (s << 30) | (s << 21) | (s << 12)
    assert abi.self_map_pte(0x1000) == abi.SELF_PT + 8
    fixed = [abi.UPCALL_VA, abi.ARGS_VA, abi.BOOTINFO_VA, abi.CONSOLE_OUT_VA,
             abi.CONSOLE_IN_VA, abi.CONSOLE_BELL_VA, abi.PLATFORM_VA]
    assert len(set(fixed)) == len(fixed) and all(0 < v < abi.PROGRAM_VA for v in fixed)
    order = [abi.PROGRAM_VA, abi.INITRD_VA, abi.HEAP_VA, abi.STACK_TOP - abi.STACK_PAGES *
             abi.PAGE, abi.STACK_TOP, abi.SCRATCH_VA, abi.POOL_VA, abi.WINDOW_VA]
    assert order == sorted(order)
    assert abi.WINDOW_VA % (1 << 39) == 0 and (abi.WINDOW_VA >> 39) < abi.PML4_GATE
    assert (abi.MAX_RAM // abi.PAGE + abi.DEV_PAGES) * abi.PAGE <= 1 << 39
    assert abi.PML4_INFO < abi.PML4_HANDLE0 + abi.MAX_HANDLES <= abi.PML4_USERWIN


def test_bits():
    bits = [abi.PTE_P, abi.PTE_W, abi.PTE_U, abi.PTE_PWT, abi.PTE_PCD, abi.PTE_A, abi.PTE_D,
            abi.PTE_PS, abi.PTE_G, abi.PTE_SLOT, abi.PTE_NX]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert not any(b & abi.PTE_ADDR for b in bits)
    assert abi.MAP_W == abi.PTE_W
    assert abi.MAP_FLAGS == abi.MAP_W | abi.MAP_X | abi.MAP_MOVE
    assert sorted(abi.SYSCALLS.values()) == list(range(abi.NSYSCALLS))
    assert len(set(abi.ERRORS.values())) == len(abi.ERRORS)
    assert all(v < abi.UP_USER_MIN for k, v in abi.UPCALLS.items()
               if k in ("FAULT", "SYSCALL", "CHILD_ERROR"))
    assert abi.INITRD_MAGIC.to_bytes(8, "little") == b"XOMBINRD"
    assert abi.RING_DATA + abi.RING_SIZE <= abi.PAGE


# --------------------------------------------------------------------------
# the generated files
# --------------------------------------------------------------------------
def test_generate_only_rewrites_on_change(tmp_path):
    changed = build.generate_abi(tmp_path)
    assert sorted(p.name for p in changed) == ["abi.inc", "xomb_abi.h"]
    assert (tmp_path / "xomb_abi.h").read_text() == abi.c_header()
    assert (tmp_path / "abi.inc").read_text() == abi.asm_include()
    mtime = (tmp_path / "abi.inc").stat().st_mtime_ns
    assert build.generate_abi(tmp_path) == []
    assert (tmp_path / "abi.inc").stat().st_mtime_ns == mtime
    (tmp_path / "abi.inc").write_text("stale")
    assert [p.name for p in build.generate_abi(tmp_path)] == ["abi.inc"]


def test_build_gen_matches_abi():
    """build/gen (what the kernel and libOS builds read) equals vmm.abi's output."""
    build.generate_abi(paths.GEN)
    assert (paths.GEN / "xomb_abi.h").read_text() == abi.c_header()
    assert (paths.GEN / "abi.inc").read_text() == abi.asm_include()


def test_python_m_vmm_abi_matches(tmp_path):
    import sys
    subprocess.run([sys.executable, "-m", "vmm.abi", str(tmp_path)], check=True,
                   cwd=paths.ROOT)
    assert (tmp_path / "xomb_abi.h").read_text() == abi.c_header()
    assert (tmp_path / "abi.inc").read_text() == abi.asm_include()
