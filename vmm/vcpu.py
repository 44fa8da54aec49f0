"""Boot vCPU set-up (long mode, paging on, straight into the kernel) and kicks.

Segments (KVM_SET_SREGS): CS = abi.GDT_KCS 64-bit code (L=1, DPL 0, type 0xb,
present, G); SS/DS/ES/FS/GS = abi.GDT_KDS data (type 3); TR = abi.GDT_TSS0 busy
64-bit TSS (type 0xb) with base/limit from CpuState; GDT/IDT, CR0/CR3/CR4/EFER
from CpuState.  CPUID = KVM_GET_SUPPORTED_CPUID.
"""
from __future__ import annotations

import signal
import threading

from vmm import abi
from vmm.dump import CpuSnapshot
from vmm.kvm import Kvm, Vcpu

KICK_SIGNAL = signal.SIGUSR1
_kick_handler_installed = False


def install_kick_handler() -> bool:
    """A no-op handler for the kick signal (SIG_DFL would kill, SIG_IGN would not
    interrupt KVM_RUN).  Only possible from the main thread."""
    global _kick_handler_installed
    if _kick_handler_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, lambda *a: None)
    _kick_handler_installed = True
    return True


def kick(vcpu: Vcpu) -> None:
    """Make the vCPU leave KVM_RUN soon: immediate_exit (seen at the next entry)
    plus a signal to its thread (interrupts a running KVM_RUN)."""
    vcpu.immediate_exit = 1
    ident = vcpu.thread_ident
    if ident is not None and _kick_handler_installed and ident != threading.get_ident():
        try:
            signal.pthread_kill(ident, KICK_SIGNAL)
        except (ProcessLookupError, OSError):
            pass


def _code64(seg, selector: int):
    seg.base, seg.limit, seg.selector = 0, 0xFFFF_FFFF, selector
    seg.type, seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl = 0xB, 1, 0, 0, 1, 1, 1, 0
    seg.unusable = 0


def _data(seg, selector: int):
    seg.base, seg.limit, seg.selector = 0, 0xFFFF_FFFF, selector
    seg.type, seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl = 0x3, 1, 0, 1, 1, 0, 1, 0
    seg.unusable = 0


def setup_boot_vcpu(kvm: Kvm, vcpu: Vcpu, cpu) -> None:
    """Load a bootimage.CpuState into the vCPU."""
    vcpu.set_cpuid(kvm.supported_cpuid())
    s = vcpu.get_sregs()
    _code64(s.cs, abi.GDT_KCS)
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        _data(seg, abi.GDT_KDS)
    tr = s.tr
    index = getattr(cpu, "index", 0)
    tr.base, tr.limit, tr.selector = cpu.tss_base, cpu.tss_limit, abi.GDT_TSS0 + 16 * index
    tr.type, tr.present, tr.dpl, tr.db, tr.s, tr.l, tr.g, tr.avl, tr.unusable = 0xB, 1, 0, 0, 0, 0, 0, 0, 0
    s.ldt.selector, s.ldt.base, s.ldt.limit, s.ldt.type, s.ldt.present, s.ldt.unusable = 0, 0, 0xFFFF, 2, 1, 0
    s.gdt.base, s.gdt.limit = cpu.gdt_base, cpu.gdt_limit
    s.idt.base, s.idt.limit = cpu.idt_base, cpu.idt_limit
    s.cr0, s.cr3, s.cr4, s.efer = cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer
    vcpu.set_sregs(s)
    regs = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rip, regs.rsp, regs.rflags = cpu.rip, cpu.rsp, 0x2
    regs.rdi = index                    # kernel_start64: rdi = this CPU's index
    vcpu.set_regs(regs)


def snapshot(vcpu: Vcpu) -> CpuSnapshot:
    return CpuSnapshot.from_kvm(vcpu.get_regs(), vcpu.get_sregs())
