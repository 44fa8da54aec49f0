"""Shared fixtures: KVM availability, and tiny hand-made long-mode guests.

`requires_kvm` skips a test (with the reason) when /dev/kvm cannot run a VM.
`make_tiny_boot(code_asm)` builds a BootState-compatible object: identity-mapped
first 1 GiB (2 MiB pages), GDT in the Linux layout, a busy TSS, an IDT (or none),
console rings, and the code assembled by keystone at its load address.
"""
from __future__ import annotations

import functools
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vmm import abi  # noqa: E402


@functools.lru_cache(maxsize=None)
def kvm_status() -> tuple[bool, str]:
    """(usable, reason): can this host create a VM and a vCPU?"""
    try:
        from vmm.kvm import Kvm
    except Exception as exc:          # cffi module cannot be built
        return False, f"KVM binding unavailable: {exc}"
    try:
        with Kvm() as kvm:
            vm = kvm.create_vm()
            try:
                vm.create_vcpu(0)
            finally:
                vm.close()
    except Exception as exc:
        return False, str(exc)
    return True, ""


def kvm_usable() -> bool:
    return kvm_status()[0]


requires_kvm = pytest.mark.skipif(not kvm_usable(),
                                  reason=f"needs a usable /dev/kvm: {kvm_status()[1]}")


# --------------------------------------------------------------------------
# Tiny guests
# --------------------------------------------------------------------------
TINY_RAM = abi.MIN_RAM                  # 16 MiB: device pages at 0x1000000
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
GDT, TSS, IDT = 0x4000, 0x5000, 0x6000
OUT_RING, IN_RING = 0x7000, 0x8000
CODE = 0x10000
STACK_TOP = 0x20000
DOORBELL = TINY_RAM + abi.DEV_CONSOLE_DOORBELL * abi.PAGE
PLATFORM = TINY_RAM + abi.DEV_PLATFORM * abi.PAGE

CR0 = 0x8005_0033                       # PE MP ET NE WP AM PG
CR4 = 0x620                             # PAE OSFXSR OSXMMEXCPT
EFER = 0x501 | 0x400                    # SCE LME LMA NXE... (LMA set by KVM too)


@dataclass
class TinyCpu:
    rip: int
    rsp: int
    cr3: int = PML4
    cr0: int = CR0
    cr4: int = CR4
    efer: int = 0xD01                   # SCE | LME | LMA | NXE
    gdt_base: int = GDT
    gdt_limit: int = abi.GDT_ENTRIES * 8 - 1
    idt_base: int = IDT
    idt_limit: int = 0
    tss_base: int = TSS
    tss_limit: int = 0x67


@dataclass
class TinyBoot:
    ram_bytes: int
    writes: list
    cpu: TinyCpu
    symbols: dict = field(default_factory=dict)
    bootinfo: object = None


def _seg_desc(access: int, flags: int) -> int:
    # limit 0xfffff, base 0
    return 0xFFFF | (access << 40) | (0xF << 48) | (flags << 52)


def tiny_tables() -> list[tuple[int, bytes]]:
    pd = b"".join(struct.pack("<Q", (i << 21) | abi.PTE_P | abi.PTE_W | abi.PTE_PS) for i in range(512))
    pdpt = struct.pack("<Q", PD | abi.PTE_P | abi.PTE_W).ljust(4096, b"\0")
    pml4 = struct.pack("<Q", PDPT | abi.PTE_P | abi.PTE_W).ljust(4096, b"\0")
    gdt = [0] * abi.GDT_ENTRIES
    gdt[abi.GDT_KCS // 8] = _seg_desc(0x9A, 0xA)       # P DPL0 code, L G
    gdt[abi.GDT_KDS // 8] = _seg_desc(0x92, 0xC)       # P DPL0 data, DB G
    gdt[abi.GDT_UDS // 8] = _seg_desc(0xF2, 0xC)
    gdt[abi.GDT_UCS // 8] = _seg_desc(0xFA, 0xA)
    lim = 0x67
    gdt[abi.GDT_TSS0 // 8] = (lim & 0xFFFF) | ((TSS & 0xFFFFFF) << 16) | (0x8B << 40) \
        | (((TSS >> 24) & 0xFF) << 56)
    gdt[abi.GDT_TSS0 // 8 + 1] = TSS >> 32
    tss = bytearray(0x68)
    struct.pack_into("<Q", tss, 4, STACK_TOP)                 # rsp0
    struct.pack_into("<H", tss, 0x66, 0x68)                   # no I/O bitmap
    return [(PML4, pml4), (PDPT, pdpt), (PD, pd),
            (GDT, struct.pack(f"<{len(gdt)}Q", *gdt)), (TSS, bytes(tss))]


def assemble(asm: str, addr: int) -> bytes:
    import keystone
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    enc, _ = ks.asm(asm, addr)
    return bytes(enc)


def make_tiny_boot(asm: str, symbols: dict | None = None, ram: int = TINY_RAM) -> TinyBoot:
    code = assemble(asm, CODE)
    bi = abi.BootInfo(host=abi.HOST_PVM, ram_bytes=ram, nframes=ram // abi.PAGE,
                      dev_pfn=ram // abi.PAGE, root_phys=PML4, lstar=0, iomap_base=0,
                      initrd_size=0, console_out_pfn=OUT_RING // abi.PAGE,
                      console_in_pfn=IN_RING // abi.PAGE, tsc_khz=0, run_mode=0,
                      first_free_pfn=0)
    syms = {"guest_start": CODE}
    syms.update(symbols or {})
    return TinyBoot(ram, tiny_tables() + [(CODE, code)], TinyCpu(rip=CODE, rsp=STACK_TOP),
                    syms, bi)


# "hello\n" into the out ring, ring the doorbell if the host waits (or always),
# then power off with status 7.
HELLO_ASM = f"""
    mov rbx, {OUT_RING}
    lea rsi, [rip + msg]
    mov ecx, 6
    mov edx, dword ptr [rbx + {abi.RING_TAIL}]
copy:
    mov eax, edx
    and eax, {abi.RING_SIZE - 1}
    mov r8b, byte ptr [rsi]
    mov byte ptr [rbx + rax + {abi.RING_DATA}], r8b
    inc rsi
    inc edx
    dec ecx
    jnz copy
    mov dword ptr [rbx + {abi.RING_TAIL}], edx
    mfence
    mov eax, dword ptr [rbx + {abi.RING_WAITING}]
    or eax, r15d
    test eax, eax
    jz skip
    mov rdi, {DOORBELL}
    mov dword ptr [rdi], 1
skip:
    mov rdi, {PLATFORM}
    mov dword ptr [rdi + {abi.PLAT_BOOT_TIMER}], 1
    mov dword ptr [rdi + {abi.PLAT_EXIT}], 7
    hlt
msg:
    .ascii "hello\\n"
"""


@pytest.fixture
def tiny_boot():
    return make_tiny_boot


# --------------------------------------------------------------------------
# The summary says how many tests needed /dev/kvm, and how many of them ran.
# --------------------------------------------------------------------------
_KVM_REASON = "needs a usable /dev/kvm"


def _needs_kvm(item) -> bool:
    if item.get_closest_marker("kvm"):
        return True
    return any(str(m.kwargs.get("reason", "")).startswith(_KVM_REASON)
               for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    config._xomb_kvm_tests = {item.nodeid for item in items if _needs_kvm(item)}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ids = getattr(config, "_xomb_kvm_tests", set())
    ran = skipped = 0
    for key in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(key, []):
            if rep.nodeid in ids and rep.when == "call":
                ran += 1
    for rep in terminalreporter.stats.get("skipped", []):
        if rep.nodeid in ids:
            skipped += 1
    usable, why = kvm_status()
    terminalreporter.write_line(
        f"/dev/kvm: {'usable' if usable else 'NOT usable (' + why + ')'}; "
        f"{len(ids)} tests need it: {ran} ran, {skipped} skipped")
